"""Charging sessions of the OCPP chargers (csms/) for the energy report: per charger and
day, the sessions and their energy from the central system's `transaction_stopped` events
(meter stop − meter start, counted once per transaction), the connectors that charged
nothing, the faults reported (`status_change` to faulted) and the time online from the
chargers' statuses (`device_status`)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

from facility.influx import InfluxClient, quote_string
from facility.site import SiteConfig
from reports.model import Column, Table
from reports.periods import Period

NS = 1_000_000_000


async def charging_sessions(influx: InfluxClient, site: SiteConfig,
                            period: Period) -> list[Table]:
    """Two tables for the report's EV section: sessions per charger and day; use, faults
    and time online per charger."""
    tz = ZoneInfo(site.site.timezone)
    start, end = period.ns()
    chargers = {d.id: d for d in site.devices if d.ocpp is not None}
    where = (f"\"site\" = {quote_string(site.site.id)} AND \"family\" = 'ev_charger' "
             f"AND time >= {start} AND time < {end}")
    stopped = await _events(influx, where, "transaction_stopped")
    changes = await _events(influx, where, "status_change")
    online = await _online(influx, site.site.id, list(chargers), start, end)

    by_day: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    used: dict[str, set[int]] = defaultdict(set)
    for device, ts, attrs in stopped:
        if device not in chargers:
            continue
        day = datetime.fromtimestamp(ts / NS, tz).date().isoformat()
        by_day[(device, day)].append(attrs)
        connector = attrs.get("connector")
        if isinstance(connector, int):
            used[device].add(connector)
    faults: dict[str, int] = defaultdict(int)
    for device, _, attrs in changes:
        if attrs.get("status") == "faulted" and attrs.get("previous") != "faulted":
            faults[device] += 1

    sessions = Table("charging_sessions", "充电会话（OCPP充电桩，按日）", [
        Column("充电桩", kind="text"), Column("日期", kind="text"), Column("会话数", digits=0),
        Column("充电量", "kWh", digits=3), Column("平均每次", "kWh", digits=3),
        Column("最长时长", "min", digits=0)],
        formulas=["每次会话电量 = 结束读数 − 开始读数（StopTransaction 的 meterStop − "
                  "StartTransaction 的 meterStart），每个交易号只计一次",
                  "充电量 = Σ 当日结束的会话电量；平均每次 = 充电量 ÷ 会话数"])
    for (device, day), rows in sorted(by_day.items()):
        energy = [_num(r.get("energy_wh")) / 1000 for r in rows]
        longest = max((_num(r.get("duration_s")) for r in rows), default=0.0) / 60
        sessions.rows.append([chargers[device].name or device, day, len(rows), sum(energy),
                              sum(energy) / len(rows), longest])
    if not sessions.rows:
        sessions.notes.append("期内没有结束的充电会话。")

    usage = Table("charger_usage", "充电桩使用、故障与在线", [
        Column("充电桩", kind="text"), Column("枪数", digits=0), Column("会话数", digits=0),
        Column("充电量", "kWh", digits=3), Column("未使用的枪", kind="text"),
        Column("故障次数", digits=0), Column("在线率", kind="percent")],
        formulas=["未使用的枪 = 期内没有结束任何会话的充电枪",
                  "故障次数 = 状态变为故障（Faulted）的次数",
                  "在线率 = 期内在线时长 ÷ 期长（按充电桩上报的在线/离线状态；"
                  "期初状态取期前最后一次）"])
    for device_id, charger in sorted(chargers.items()):
        assert charger.ocpp is not None
        rows = [r for (d, _), rs in by_day.items() if d == device_id for r in rs]
        idle = [f"{n}号枪" for n in range(1, charger.ocpp.connectors + 1)
                if n not in used[device_id]]
        usage.rows.append([charger.name or device_id, charger.ocpp.connectors, len(rows),
                           sum(_num(r.get("energy_wh")) for r in rows) / 1000,
                           "、".join(idle) or "—", faults[device_id], online.get(device_id)])
    return [sessions, usage]


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


async def _events(influx: InfluxClient, where: str,
                  name: str) -> list[tuple[str, int, dict[str, object]]]:
    result = await influx.query(f'SELECT "attrs" FROM "device_event" WHERE {where} '
                                f'AND "name" = {quote_string(name)} GROUP BY "device"')
    out = []
    for series in result[0] if result else []:
        device = series.tags.get("device", "")
        for ts, attrs in series.values:
            try:
                parsed = json.loads(attrs) if isinstance(attrs, str) else {}
            except ValueError:
                parsed = {}
            out.append((device, int(ts), parsed if isinstance(parsed, dict) else {}))
    return sorted(out, key=lambda e: e[1])


async def _online(influx: InfluxClient, site: str, devices: list[str], start: int,
                  end: int) -> dict[str, float]:
    """The share of [start, end) each device was online, from its status changes (the last
    one before the period says how it began); no status at all: not in the result."""
    if not devices:
        return {}
    which = " OR ".join(f'"device" = {quote_string(d)}' for d in devices)
    result = await influx.query(
        f'SELECT "online" FROM "device_status" WHERE "site" = {quote_string(site)} '
        f'AND time < {end} AND ({which}) GROUP BY "device"')
    out: dict[str, float] = {}
    for series in result[0] if result else []:
        state: bool | None = None
        since = start
        up = 0
        for ts, is_online in sorted((int(t), bool(v)) for t, v in series.values):
            if ts <= start:
                state = is_online
                continue
            if state:
                up += ts - since
            state, since = is_online, ts
        if state:
            up += end - since
        if state is not None or up:
            out[series.tags.get("device", "")] = up / (end - start)
    return out
