"""The control-room shift report: alerts by family, severity and place, time to
acknowledge and to clear, the ISA-18.2 alarm-system figures, operator actions, bollard
operations, device events and device availability.

Alerts come from the rules engine's store (rules.store.AlertStore, its query API) and the
ISA-18.2 figures from rules.health.alarm_health; bollard commands and who ordered and
approved them from the API's append-only audit log (api.store.ApiStore, folded into a
command's state by api.commands.fold); bollard movements, events and availability from
InfluxDB.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from facility import labels
from facility.influx import InfluxClient, quote_string
from facility.settings import Settings
from facility.site import SiteConfig
from reports.availability import availability
from reports.model import Column, Figure, Report, Section, Table
from reports.periods import Period

Step = Callable[[str], None]
NS = 1_000_000_000
F_ACK = ("确认用时 = 确认时间 − 报警时间；只计需确认的报警（category = alarm）；"
         "中位数与90%分位（最近秩）")
F_CLEAR = "消除用时 = 消除时间（条件恢复正常）− 报警时间"


def shift_period(day: str, shift_start: str, hours: float, tz: ZoneInfo) -> Period:
    try:
        first = date.fromisoformat(day)
    except ValueError:
        raise ValueError(f"--date {day!r}: expected YYYY-MM-DD") from None
    if not 0 < hours <= 48:
        raise ValueError("--hours must be between 0 and 48")
    hh, mm = (int(x) for x in shift_start.split(":"))
    start = datetime.combine(first, time(hh, mm), tz)
    end = start + timedelta(hours=hours)
    return Period(start, end, "shift", f"{day} {shift_start} 起 {hours:g} 小时")


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.9 * (len(ordered) - 1))))]


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 60


async def build(influx: InfluxClient, settings: Settings, site: SiteConfig, period: Period,
                step: Step, *, at: datetime | None = None) -> Report:
    """The report of one shift as of `at` (default now): a shift still under way is
    counted up to now (availability, unacknowledged at handover), not to its end."""
    tz = ZoneInfo(site.site.timezone)
    moment = (at or datetime.now(tz)).astimezone(tz)
    start, end = period.ns()
    subtitle = f"值班时段：{period.start:%Y-%m-%d %H:%M} 至 {period.end:%Y-%m-%d %H:%M}"
    if period.start <= moment < period.end:
        end = int(moment.timestamp() * NS)
        subtitle += f"（值班尚未结束，统计截至 {moment:%Y-%m-%d %H:%M:%S}）"
    elif moment < period.start:
        raise ValueError(f"值班时段 {period.label} 尚未开始")
    report = Report(kind="shift", title=f"{site.site.name}安防控制室值班报告",
                    subtitle=subtitle, generated_at=moment.strftime("%Y-%m-%d %H:%M"))
    names = _Names(site)
    report.sections += await _alert_sections(settings, site.site.id, start, end, names, tz, step)
    commands = await _commands(settings, site.site.id, start, end, names, tz)
    report.sections.append(await _bollards(influx, site.site.id, start, end, tz, commands,
                                           names))
    step("bollard operations read")
    report.sections.append(await _events(influx, site.site.id, start, end, names))
    step("device events read")
    report.sections.append(await _availability(influx, site, start, end, names))
    step("availability computed")
    report.method = [
        "报警来源：规则引擎的状态库（rules_alerts、rules_alert_history），"
        "经 rules.store.AlertStore 查询接口读取；"
        "ISA-18.2 指标由 rules.health.alarm_health 计算，口径见各表公式。",
        "升降柱动作、设备事件、设备在线率来源：InfluxDB"
        "（bollard、device_event、device_status）。",
        "升降柱指令、下达人与批准人来源：API 的只增不改审计日志（api_audit），"
        "按指令汇总为最终状态；升降柱的实际动作由 PLC 读数给出。",
        f"时间均为北京时间（{site.site.timezone}）；值班时段为 [开始, 结束)。",
    ]
    return report


class _Names:
    def __init__(self, site: SiteConfig) -> None:
        self.places = {p.id: p.name for p in site.places}
        self.devices = {d: (dev.name if d == dev.id else "") or d
                        for d, _, dev in site.all_device_ids()}
        for dev in site.devices:  # units behind a controller: their names from its format
            if dev.units is not None and dev.units.name:
                for n, unit_id in enumerate(dev.unit_ids(), start=1):
                    self.devices[unit_id] = dev.units.name.format(n=n)

    def place(self, place_id: str) -> str:
        return self.places.get(place_id, place_id or "—")

    def device(self, device_id: str) -> str:
        return self.devices.get(device_id, device_id)


async def _alert_sections(settings: Settings, site: str, start: int, end: int, names: _Names,
                          tz: ZoneInfo, step: Step) -> list[Section]:
    from rules.health import alarm_health
    from rules.store import AlertStore

    async with await AlertStore.open(settings.state_url) as store:
        alerts = await store.alerts(site, since=start, until=end, limit=100_000)
        history = await store.history(site=site, since=start, until=end)
        health = await alarm_health(store, site, start, end)
    step("alerts read")
    return [_alerts_overview(alerts, end, names, tz), _isa(health, names, tz),
            _operators(history)]


def _alerts_overview(alerts: list[Any], end: int, names: _Names, tz: ZoneInfo) -> Section:
    alarms = [a for a in alerts if a.category == "alarm"]
    acks = [(a.acked_at - a.raised_at) / NS for a in alarms if a.acked_at]
    clears = [(a.cleared_at - a.raised_at) / NS for a in alerts if a.cleared_at]
    unacked = [a for a in alarms if not a.acked_at or a.acked_at >= end]
    active = [a for a in alerts if a.active and not a.closed_at]
    figures = [
        Figure("报警总数", len(alerts), "条",
               "值班时段内产生（raised_at ∈ [开始, 结束)）的报警与提示条数", digits=0),
        Figure("需确认的报警", len(alarms), "条", "其中 category = alarm 的条数", digits=0),
        Figure("确认用时中位数", _minutes(statistics.median(acks)) if acks else None, "分钟",
               F_ACK + f"；已确认 {len(acks)} 条", digits=1),
        Figure("确认用时90%分位", _minutes(_p90(acks)), "分钟", F_ACK, digits=1),
        Figure("确认用时最长", _minutes(max(acks)) if acks else None, "分钟", F_ACK, digits=1),
        Figure("交班时未确认", len(unacked), "条", "需确认的报警中，到值班结束仍未确认的条数",
               digits=0),
        Figure("消除用时中位数", _minutes(statistics.median(clears)) if clears else None,
               "分钟", F_CLEAR + f"；已消除 {len(clears)} 条", digits=1),
        Figure("出报时仍未消除", len(active), "条", "报警条件在出报时仍然存在的条数", digits=0),
    ]
    tables = [
        _group_table("by_family", "按系统", "系统", alarms, alerts,
                     lambda a: labels.FAMILY.get(a.family, a.family)),
        _group_table("by_severity", "按级别", "级别", alarms, alerts,
                     lambda a: labels.SEVERITY.get(a.peak.value, a.peak.value),
                     order=[labels.SEVERITY[s] for s in labels.SEVERITY_ORDER]),
        _group_table("by_place", "按地点", "地点", alarms, alerts, lambda a: names.place(a.place)),
    ]
    listing = Table("alerts", "报警明细（按级别、时间）", [
        Column("报警时间", kind="text"), Column("级别", kind="text"), Column("系统", kind="text"),
        Column("地点", kind="text"), Column("内容", kind="text"), Column("确认人", kind="text"),
        Column("确认用时", "分钟", 1), Column("消除用时", "分钟", 1), Column("状态", kind="text")],
        formulas=[F_ACK, F_CLEAR])
    # An alert counts at its peak: a flood lowered to a warning as the water fell was critical.
    ordered = sorted(alerts, key=lambda a: (labels.SEVERITY_ORDER.index(a.peak.value)
                                            if a.peak.value in labels.SEVERITY_ORDER else 9,
                                            a.raised_at))
    for a in ordered[:200]:
        listing.rows.append([
            datetime.fromtimestamp(a.raised_at / NS, tz).strftime("%m-%d %H:%M:%S"),
            labels.SEVERITY.get(a.peak.value, a.peak.value),
            labels.FAMILY.get(a.family, a.family), names.place(a.place), a.title or a.text,
            a.acked_by or "—", (a.acked_at - a.raised_at) / NS / 60 if a.acked_at else None,
            (a.cleared_at - a.raised_at) / NS / 60 if a.cleared_at else None,
            "未消除" if a.active and not a.closed_at else "已消除"])
    if len(alerts) > 200:
        listing.notes.append(f"只列出前200条（共 {len(alerts)} 条），全部见状态库。")
    tables.append(listing)
    return Section("一、报警概况", figures=figures, tables=tables)


def _group_table(key: str, title: str, label: str, alarms: list[Any], alerts: list[Any],
                 group: Callable[[Any], str], order: list[str] | None = None) -> Table:
    table = Table(key, f"报警统计（{title}）", [
        Column(label, kind="text"), Column("报警数", digits=0), Column("需确认", digits=0),
        Column("已确认", digits=0), Column("确认用时中位数", "分钟", 1),
        Column("消除用时中位数", "分钟", 1)], formulas=[F_ACK, F_CLEAR])
    groups: dict[str, list[Any]] = defaultdict(list)
    for a in alerts:
        groups[group(a)].append(a)
    keys = [k for k in (order or []) if k in groups] + sorted(set(groups) - set(order or []))
    alarm_ids = {a.id for a in alarms}
    for name in keys:
        members = groups[name]
        acks = [(a.acked_at - a.raised_at) / NS for a in members
                if a.id in alarm_ids and a.acked_at]
        clears = [(a.cleared_at - a.raised_at) / NS for a in members if a.cleared_at]
        table.rows.append([name, len(members), sum(1 for a in members if a.id in alarm_ids),
                           len(acks), _minutes(statistics.median(acks)) if acks else None,
                           _minutes(statistics.median(clears)) if clears else None])
    return table


def _isa(health: Any, names: _Names, tz: ZoneInfo) -> Section:
    from rules.health import FLOOD

    def clock(ns: int) -> str:
        return datetime.fromtimestamp(ns / NS, tz).strftime("%H:%M")

    # The same rules as rules.health's own (English) formulas, in the report's language.
    f = {
        "annunciated": "值班时段内报警呈现给操作员的次数：每次报警（首次或再次报警）计一次，"
                       "记在它第一次处于报警中且未被抑制、搁置、停用（即操作员看得到）的时刻，"
                       "同一时刻（同一处理步）报出又被抑制的不计；严重程度升级需重新确认的再计一次；"
                       "只计需确认的报警",
        "not_annunciated": "值班时段内报出、但在报警期间始终处于抑制、搁置或停用状态、"
                           "从未呈现给操作员的报警次数（只记录，不要求确认）",
        "per_10_min_avg": "报警次数 ÷ 10分钟时段数（值班时长 ÷ 10分钟，向上取整）",
        "per_10_min_max": "任意连续10分钟内报警次数的最大值（滑动窗口：从每次报警时刻起的10分钟）",
        "flood_share": f"处于报警泛滥时段的时长 ÷ 值班时长 × 100%；泛滥时段为报警超过 {FLOOD} "
                       "条的10分钟时段",
        "flood_periods": f"按时钟整10分钟（:00、:10、:20……）划分的时段中，报警超过 {FLOOD} "
                         "条的连续时段",
        "top10_share": "报警次数最多的10个报警点（规则 + 报警源）的报警次数之和 ÷ 报警次数 × 100%",
        "chattering": "60秒内报警（含未提示的）3次及以上的报警点",
        "stale": "出报时仍在报警、且报警时间早于值班结束前24小时的报警",
        "priority_share": "各优先级报警次数 ÷ 报警次数；优先级1–2为高，3为中，4–5为低",
    }
    figures = [
        Figure("报警（已提示操作员）", health.annunciated, "条", f["annunciated"], digits=0),
        Figure("报警（未提示操作员）", health.not_annunciated, "条", f["not_annunciated"],
               digits=0),
        Figure("平均每10分钟报警数", health.per_10_min_avg, "条/10分钟",
               f["per_10_min_avg"] + "；ISA-18.2 目标约 1，最多 2", digits=2),
        Figure("单个10分钟最多报警数", health.per_10_min_max, "条", f["per_10_min_max"], digits=0),
        Figure("报警泛滥时段占比", f"{health.flood_share:.1f}%", "", f["flood_share"]
               + "；ISA-18.2 目标 < 1%"),
        Figure("前十报警源占比", f"{health.top10_share:.1f}%", "", f["top10_share"]
               + "；ISA-18.2 目标 < 1–5%"),
        Figure("频繁报警（抖动）点数", len(health.chattering), "个", f["chattering"]
               + "；ISA-18.2 目标 0", digits=0),
        Figure("陈旧报警数", len(health.stale), "条", f["stale"] + "；ISA-18.2 目标 < 5",
               digits=0),
        Figure("高/中/低优先级占比", " / ".join(f"{health.priority_share[b]:.0f}%"
                                         for b in ("high", "medium", "low")), "",
               f["priority_share"] + "；ISA-18.2 建议约 5% / 15% / 80%"),
    ]
    floods = Table("floods", "报警泛滥时段（10分钟内超过10条）", [
        Column("开始", kind="text"), Column("结束", kind="text"), Column("报警数", digits=0)],
        formulas=[f["flood_periods"]])
    for period in health.flood_periods:
        floods.rows.append([clock(period["start"]), clock(period["end"]), period["alarms"]])
    top = Table("top10", "报警最多的前十个报警点", [
        Column("规则", kind="text"), Column("报警源", kind="text"), Column("次数", digits=0),
        Column("占比", kind="percent")], formulas=[f["top10_share"]])
    for item in health.top:
        top.rows.append([item["rule"], names.device(item["source"]), item["count"],
                         item["share"] / 100])
    chatter = Table("chattering", "频繁报警（抖动）", [
        Column("规则", kind="text"), Column("报警源", kind="text"),
        Column("窗口内最多报警次数", digits=0), Column("窗口", "秒", 0)],
        formulas=[f["chattering"]])
    for item in health.chattering:
        chatter.rows.append([item["rule"], names.device(item["source"]), item["raises"],
                             item["within_s"]])
    stale = Table("stale", "陈旧报警（持续超过24小时）", [
        Column("报警", kind="text"), Column("规则", kind="text"), Column("报警源", kind="text"),
        Column("已持续", "小时", 1)], formulas=[f["stale"]])
    for item in health.stale:
        stale.rows.append([item["alert"], item["rule"], names.device(item["source"]),
                           item["active_h"]])
    return Section("二、报警系统性能（ISA-18.2）", figures=figures,
                   tables=[floods, top, chatter, stale])


def _operators(history: list[dict[str, Any]]) -> Section:
    table = Table("operators", "操作员处置记录", [
        Column("操作员", kind="text"),
        *[Column(n, digits=0) for n in labels.HISTORY_ACTION.values()]],
        formulas=["各操作员在值班时段内对报警的操作次数（rules_alert_history 中 by 非空的记录）"])
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for h in history:
        if h.get("by") and h["action"] in labels.HISTORY_ACTION:
            counts[h["by"]][h["action"]] += 1
    for who in sorted(counts):
        table.rows.append([who, *[counts[who][a] for a in labels.HISTORY_ACTION]])
    return Section("三、操作员处置", tables=[table])


async def _commands(settings: Settings, site: str, start: int, end: int, names: _Names,
                    tz: ZoneInfo) -> Table:
    """Bollard commands requested (or refused) in the shift, with their outcome so far."""
    from audit.commands import fold
    from audit.log import AuditLog

    table = Table("commands", "升降柱指令及下达人", [
        Column("时间", kind="text"), Column("指令", kind="text"), Column("对象", kind="text"),
        Column("下达人", kind="text"), Column("批准（驳回）人", kind="text"),
        Column("原因", kind="text"),
        Column("结果", kind="text"), Column("说明", kind="text")],
        formulas=["值班时段内请求（含被拒绝）的每条指令一行；结果为出报时审计日志汇总出的状态"])
    async with await AuditLog.open(settings.state_url) as store:
        opened = await store.rows(site, since=start, until=end, events=("requested", "refused"),
                                  limit=100_000)
        ids = sorted({r.command for r in opened})
        rows = await store.rows(site, commands=ids, limit=1_000_000) if ids else []
    by_command: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_command[row.command].append(row)
    views = [v for v in (fold(c, rs) for c, rs in by_command.items()) if v is not None]
    for view in sorted(views, key=lambda v: v.requested_at):
        targets = view.targets if len(view.targets) <= 3 else \
            [*view.targets[:3], f"等 {len(view.targets)} 个"]
        table.rows.append([
            datetime.fromtimestamp(view.requested_at / NS, tz).strftime("%m-%d %H:%M:%S"),
            labels.COMMAND_ACTION.get(view.action, view.action),
            "、".join(names.device(t) for t in targets), view.requested_by,
            view.approval.decided_by
            or labels.APPROVAL["pending" if view.approval.required else "not_required"],
            view.reason, labels.COMMAND_STATUS.get(view.status, view.status), view.detail or "—"])
    if not table.rows:
        table.notes.append("值班时段内没有升降柱指令。")
    return table


async def _bollards(influx: InfluxClient, site: str, start: int, end: int,
                    tz: ZoneInfo, commands: Table, names: _Names) -> Section:
    where = f"site = {quote_string(site)} AND time >= {start} AND time < {end}"
    # Every reading of the PLC's group registers (the gateway reads them every second), so
    # that each change shows, however short: a 7-second emergency rise falls between two
    # minute samples. The reading before the shift gives the state it began with.
    fields = '"bollards_up", "bollards_down", "bollards_fault", "mode", "emergency_rise"'
    group = "AND \"controller\" = '' GROUP BY \"device\""
    before = await influx.query(
        f"SELECT {fields} FROM \"bollard\" WHERE site = {quote_string(site)} "
        f"AND time < {start} {group} ORDER BY time DESC LIMIT 1")
    readings = await influx.query(f'SELECT {fields} FROM "bollard" WHERE {where} {group}')
    ops = Table("bollard_operations", "升降柱动作（PLC 状态变化）", [
        Column("时间", kind="text"), Column("控制柜", kind="text"), Column("升起", digits=0),
        Column("降下", digits=0), Column("故障", digits=0), Column("模式", kind="text"),
        Column("紧急升起", kind="text")],
        formulas=["逐条读取 PLC 的升起/降下/故障数量、模式、紧急升起状态（网关每秒读一次），"
                  "列出与前一次读数不同的时刻（值班开始时的状态为第一行）"])
    initial = {s.tags.get("device", ""): tuple(s.values[0][1:])
               for s in (before[0] if before else []) if s.values}
    for series in readings[0] if readings else []:
        device = series.tags.get("device", "")
        last: tuple[Any, ...] | None = initial.get(device)
        if last is not None:
            ops.rows.append([datetime.fromtimestamp(start / NS, tz).strftime("%H:%M:%S"),
                             names.device(device), *_plc_state(last)])
        for t, *values in series.values:
            state = tuple(values)
            if all(v is None for v in state):
                continue  # no answer from the PLC: not a change of its state
            if state != last:
                ops.rows.append([datetime.fromtimestamp(int(t) / NS, tz).strftime("%H:%M:%S"),
                                 names.device(device), *_plc_state(state)])
            last = state
    units = await influx.query(
        'SELECT spread("cycle_count") AS cycles, last("state") AS state, '
        'last("fault_code") AS fault_code FROM "bollard" '
        f"WHERE {where} AND \"controller\" != '' GROUP BY \"device\"")
    per_unit = Table("bollard_units", "各升降柱动作次数与状态", [
        Column("升降柱", kind="text"), Column("动作次数", digits=0),
        Column("交班时状态", kind="text"), Column("故障代码", kind="text")],
        formulas=["动作次数 = 值班时段内该升降柱动作计数器（cycle_count）的最大值 − 最小值"])
    for series in sorted(units[0] if units else [], key=lambda s: s.tags.get("device", "")):
        for _, cycles, state, fault_code in series.values:
            per_unit.rows.append([names.device(series.tags.get("device", "")), cycles,
                                  labels.label(labels.BOLLARD, state) if state else "—",
                                  labels.label(labels.BOLLARD_FAULT, fault_code)
                                  if fault_code else "—"])
    if not ops.rows:
        ops.notes.append("值班时段内没有升降柱 PLC 数据。")
    return Section("四、升降柱", tables=[commands, ops, per_unit])


def _plc_state(state: tuple[Any, ...]) -> list[Any]:
    up, down, fault, mode, emergency = state
    return [up, down, fault, labels.label(labels.BOLLARD_MODE, mode) if mode else "—",
            labels.label(labels.EMERGENCY_RISE, emergency) if emergency else "—"]


async def _events(influx: InfluxClient, site: str, start: int, end: int,
                  names: _Names) -> Section:
    result = await influx.query(
        'SELECT count("id") FROM "device_event" WHERE '
        f"site = {quote_string(site)} AND time >= {start} AND time < {end} "
        'GROUP BY "family", "name", "device"')
    table = Table("device_events", "设备事件", [
        Column("系统", kind="text"), Column("事件", kind="text"), Column("设备", kind="text"),
        Column("次数", digits=0)], formulas=["值班时段内设备上报的事件条数（device_event）"])
    rows = []
    for series in result[0] if result else []:
        count = series.values[0][1] if series.values else 0
        rows.append([labels.FAMILY.get(series.tags.get("family", ""), series.tags.get("family")),
                     series.tags.get("name", ""), names.device(series.tags.get("device", "")),
                     count])
    table.rows = sorted(rows, key=lambda r: (-r[3], r[0], r[1]))
    return Section("五、设备事件", tables=[table])


async def _availability(influx: InfluxClient, site: SiteConfig, start: int, end: int,
                        names: _Names) -> Section:
    found = await availability(influx, site.site.id, start, end)
    summary = Table("availability", "设备在线率（按系统）", [
        Column("系统", kind="text"), Column("设备数", digits=0), Column("全时在线", digits=0),
        Column("平均在线率", kind="percent"), Column("离线次数", digits=0),
        Column("状态覆盖率", kind="coverage")],
        formulas=["在线率 = 在线时长 ÷ 有状态数据的时长；状态由 device_status 的最近一次状态"
                  "和值班时段内的变化推出",
                  "状态覆盖率 = 有状态数据的时长 ÷（设备数 × 值班时长）"])
    by_family: dict[str, list[Any]] = defaultdict(list)
    for item in found.values():
        by_family[item.family].append(item)
    duration = end - start
    for family in sorted(by_family):
        items = by_family[family]
        shares = [i.share for i in items if i.share is not None]
        summary.rows.append([
            labels.FAMILY.get(family, family), len(items),
            sum(1 for s in shares if s >= 1.0), statistics.fmean(shares) if shares else None,
            sum(i.offline_spells for i in items),
            sum(i.known_ns for i in items) / (len(items) * duration) if items else None])
    details = Table("unavailable", "不在线或曾离线的设备", [
        Column("设备", kind="text"), Column("系统", kind="text"), Column("在线率", kind="percent"),
        Column("离线次数", digits=0), Column("交班时状态", kind="text"),
        Column("原因", kind="text")], formulas=["在线率 < 100% 的设备"])
    for item in sorted(found.values(), key=lambda i: (i.share or 0.0, i.device)):
        if item.share is not None and item.share < 1.0:
            last = "online" if item.last_state == "online" else "offline"
            details.rows.append([names.device(item.device),
                                 labels.FAMILY.get(item.family, item.family), item.share,
                                 item.offline_spells, labels.AVAILABILITY[last],
                                 "；".join(item.reasons) or "—"])
    silent = [d.id for d in site.devices if d.id not in found]
    if silent:
        details.notes.append("没有任何状态数据的设备："
                             + "、".join(names.device(d) for d in silent))
    return Section("六、设备在线率", tables=[summary, details])
