"""The duty figures for the reports, each with the formula it was computed by (the office's
report asks that every indicator say how it is computed): notifications sent and
delivered, incidents acknowledged and the time to acknowledge per person, work orders
opened and closed, MTTR and SLA kept per system."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import mean

from duty.roster import CHINA
from duty.store import DutyStore
from facility import labels

CONTROL_ROOM = "control_room"  # whose shifts the time to acknowledge is counted by


@dataclass
class DutyFigures:
    notices: int = 0
    delivered: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)
    acked: dict[str, list[float]] = field(default_factory=dict)  # person -> seconds
    by_shift: dict[str, list[float]] = field(default_factory=dict)  # control-room shift
    orders: dict[str, dict[str, float]] = field(default_factory=dict)  # system -> figures
    handovers: list[dict[str, object]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"通知：共{self.notices}条，已送达{self.delivered}条"
               f"（送达率 = 已送达 ÷ 通知 = {self.delivered / self.notices:.1%}）"
               if self.notices else "通知：0条"]
        for channel, n in sorted(self.by_channel.items()):
            out.append(f"  {labels.label(labels.CHANNEL, channel)}：{n}条")
        for person, seconds in sorted(self.acked.items()):
            out.append(f"确认人 {person}：{len(seconds)}起，平均确认用时 "
                       f"{mean(seconds):.0f}秒（= Σ(确认时刻 − 告警时刻) ÷ 起数），"
                       f"最长{max(seconds):.0f}秒")
        for shift, seconds in sorted(self.by_shift.items()):
            out.append(f"班次 {shift}：{len(seconds)}起，平均确认用时 {mean(seconds):.0f}秒")
        for system, f in sorted(self.orders.items()):
            closed = int(f["closed"])
            mttr = f"{f['repair_s'] / closed / 3600:.1f}小时" if closed else "-"
            kept = f"{f['kept'] / closed:.0%}" if closed else "-"
            out.append(f"工单 {labels.label(labels.FAMILY, system)}：新开{int(f['opened'])}，"
                       f"关闭{closed}，MTTR {mttr}（= Σ(修复时刻 − 开单时刻) ÷ 关闭数），"
                       f"SLA达标 {kept}（= 时限内修复数 ÷ 关闭数）")
        for h in self.handovers:
            state = f"已由{h['acked_by']}接班确认" if h["acked_by"] else "接班人未确认"
            items = h["items"] if isinstance(h["items"], dict) else {}
            out.append(f"交接班 {h['team']}：{h['outgoing']} → {h['incoming']}，"
                       f"未结事件{len(items.get('incidents', []))}起，"
                       f"未结工单{len(items.get('workorders', []))}张，{state}")
        return out


async def figures(store: DutyStore, since: float, until: float) -> DutyFigures:
    out = DutyFigures()
    for row in await store.notices(limit=100_000):
        if not since <= row["ts_ns"] / 1e9 < until:
            continue
        out.notices += 1
        if row["channel"]:
            out.delivered += 1
            out.by_channel[row["channel"]] = out.by_channel.get(row["channel"], 0) + 1
    acked: dict[str, list[float]] = defaultdict(list)
    by_shift: dict[str, list[float]] = defaultdict(list)
    roster = await store.roster()
    for row in await store.audit_rows(limit=100_000):
        if row["action"] == "incident_ack" and since <= row["ts_ns"] / 1e9 < until:
            seconds = float(row["detail"] or 0)
            acked[row["who"]].append(seconds)
            # The shift is the control room's rota shift the incident was raised in.
            raised = datetime.fromtimestamp(row["ts_ns"] / 1e9 - seconds, UTC)
            shift = roster.shift_at(CONTROL_ROOM, raised)
            if shift is not None:
                name = roster.people[shift.person].name if shift.person in roster.people \
                    else shift.person
                by_shift[f"{shift.start.astimezone(CHINA):%m-%d %H:%M} {name}"].append(seconds)
    out.acked = dict(acked)
    out.by_shift = dict(by_shift)
    orders: dict[str, dict[str, float]] = defaultdict(
        lambda: {"opened": 0, "closed": 0, "repair_s": 0.0, "kept": 0})
    for order in await store.orders():
        f = orders[order.family]
        if since <= order.opened_at < until:
            f["opened"] += 1
        done = order.resolved_at
        if order.state in ("resolved", "verified") and since <= done < until:
            f["closed"] += 1
            f["repair_s"] += done - order.opened_at
            f["kept"] += done <= order.due_at
    out.orders = dict(orders)
    out.handovers = [h for h in reversed(await store.handovers(limit=500))
                     if since <= h["ts_ns"] / 1e9 < until]
    return out
