"""Repair work orders (报修): opened by a fault that persists, by an operator, or for a
12345 hotline ticket; open → assigned → in progress → resolved → verified.

Pure and on an injected clock (seconds); the service stores what changes. The platform
sets "verified" when the device has been normal for `verify_after`; resolving a device
that is still faulty is refused with the reason. A repeat fault links to the device's open
order, or reopens the last one when it was verified less than `reopen_within` ago.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from duty.config import FaultRule, WorkOrderSpec
from facility import labels
from facility.errors import Refused
from facility.messages import AlertMessage, decode, encode

OPEN, ASSIGNED, IN_PROGRESS, RESOLVED, VERIFIED = (
    "open", "assigned", "in_progress", "resolved", "verified")
ACTIVE_STATES = (OPEN, ASSIGNED, IN_PROGRESS, RESOLVED)
NEXT = {OPEN: {ASSIGNED}, ASSIGNED: {ASSIGNED, IN_PROGRESS}, IN_PROGRESS: {RESOLVED},
        RESOLVED: {VERIFIED, IN_PROGRESS}}
REOPEN_WITHIN = 7 * 24 * 3600.0


class WorkOrderRefused(Refused):
    """A transition that is not allowed; the message is Chinese, for the person."""


@dataclass(slots=True)
class WorkOrder:
    id: str
    kind: str  # fault, request, hotline
    device: str
    place: str
    family: str
    fault: str
    priority: int  # 1 most urgent .. 4
    team: str
    opened_at: float
    due_at: float
    state: str = OPEN
    number: str = ""  # the 12345 hotline ticket number
    assignee: str = ""
    resolved_at: float = 0.0
    verified_at: float = 0.0
    sla_breached: bool = False
    alerts: list[str] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)  # the last alert text and value
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def log(self, ts: float, action: str, by: str = "", detail: str = "") -> None:
        self.timeline.append({"ts": ts, "action": action, "by": by, "detail": detail})


@dataclass(slots=True)
class _Fault:
    since: float
    alert: AlertMessage
    rule: FaultRule


class WorkOrderBook:
    def __init__(self, spec: WorkOrderSpec, clock: Callable[[], float],
                 new_id: Callable[[], str]) -> None:
        self.spec = spec
        self.clock = clock
        self.new_id = new_id
        self.orders: dict[str, WorkOrder] = {}
        self.faults: dict[str, _Fault] = {}  # device -> its persisting fault
        self.normal_since: dict[str, float] = {}  # device -> when its fault cleared
        self.changed: set[str] = set()  # order ids to store

    # --- faults from the rules engine ---------------------------------------------------

    def take(self, alert: AlertMessage) -> None:
        rule = self._rule(alert)
        if rule is None:
            return
        if alert.active:
            if alert.source not in self.faults:
                self.faults[alert.source] = _Fault(self.clock(), alert, rule)
            self.normal_since.pop(alert.source, None)
            order = self.open_for(alert.source)
            if order is not None and alert.id not in order.alerts:
                order.alerts.append(alert.id)
                order.log(self.clock(), "linked", detail=alert.id)
                self.changed.add(order.id)
        elif alert.source in self.faults:
            del self.faults[alert.source]
            self.normal_since[alert.source] = self.clock()

    def _rule(self, alert: AlertMessage) -> FaultRule | None:
        for rule in self.spec.faults:
            if (not rule.rules or alert.rule in rule.rules) and \
                    (not rule.families or alert.family in rule.families):
                return rule
        return None

    def tick(self) -> tuple[list[WorkOrder], list[WorkOrder]]:
        """Open or reopen orders for faults that persisted; verify repaired devices; return
        the orders opened or reopened now and those whose SLA has just been missed."""
        now = self.clock()
        opened = []
        for device, fault in self.faults.items():
            if fault.since + fault.rule.after > now or self.open_for(device) is not None:
                continue
            last = self._last_verified(device)
            if last is not None and now - last.verified_at < REOPEN_WITHIN:
                last.state = OPEN
                last.assignee = ""
                last.alerts.append(fault.alert.id)
                last.due_at = now + self.spec.sla[last.priority]
                last.sla_breached = False
                last.log(now, "reopened", detail=fault.alert.id)
                self.changed.add(last.id)
                opened.append(last)
            else:
                opened.append(self._open_fault(device, fault))
        missed = []
        for order in self.orders.values():
            # A ticket with no device (a hotline call) is verified after the same wait.
            if order.state == RESOLVED and order.device not in self.faults:
                since = self.normal_since.get(order.device, order.resolved_at)
                if now - max(since, order.resolved_at) >= self.spec.verify_after:
                    order.state, order.verified_at = VERIFIED, now
                    order.log(now, "verified", by="platform")
                    self.changed.add(order.id)
            if order.state in (OPEN, ASSIGNED, IN_PROGRESS) and not order.sla_breached \
                    and now >= order.due_at:
                order.sla_breached = True
                order.log(now, "sla_missed")
                self.changed.add(order.id)
                missed.append(order)
        return opened, missed

    def _open_fault(self, device: str, fault: _Fault) -> WorkOrder:
        a = fault.alert
        order = self.open(kind="fault", device=device, place=a.place, family=a.family,
                          fault=a.title or a.rule, priority=fault.rule.priority,
                          team=fault.rule.team, by="platform")
        order.alerts.append(a.id)
        order.last = {"text": a.text, "value": a.value, "rule": a.rule, "ts": a.ts}
        return order

    def faults_json(self) -> str:
        """The faults under watch and the devices back to normal, to survive a restart."""
        return json.dumps({
            "faults": {d: {"since": f.since, "rule": f.rule.name,
                           "alert": msgspec.json.decode(encode(f.alert))}
                       for d, f in self.faults.items()},
            "normal_since": self.normal_since}, sort_keys=True)

    def load_faults(self, text: str) -> None:
        if not text:
            return
        data = json.loads(text)
        rules = {r.name: r for r in self.spec.faults}
        for device, f in data["faults"].items():
            if f["rule"] in rules:
                alert = decode(json.dumps(f["alert"]), AlertMessage)
                self.faults[device] = _Fault(f["since"], alert, rules[f["rule"]])
        self.normal_since = {k: float(v) for k, v in data["normal_since"].items()}

    # --- people's actions ---------------------------------------------------------------

    def open(self, *, kind: str, device: str, place: str, family: str, fault: str,
             priority: int, team: str, by: str, number: str = "") -> WorkOrder:
        now = self.clock()
        if kind != "hotline" and device:
            existing = self.open_for(device)
            if existing is not None:  # a repeat: one order per device at a time
                existing.log(now, "linked", by=by, detail=fault)
                self.changed.add(existing.id)
                return existing
        order = WorkOrder(id=self.new_id(), kind=kind, device=device, place=place,
                          family=family, fault=fault, priority=priority, team=team,
                          opened_at=now, due_at=now + self.spec.sla[priority], number=number)
        order.log(now, "opened", by=by, detail=fault)
        self.orders[order.id] = order
        self.changed.add(order.id)
        return order

    def move(self, order_id: str, state: str, by: str, *, assignee: str = "",
             note: str = "") -> WorkOrder:
        order = self.orders.get(order_id)
        if order is None:
            raise WorkOrderRefused(f"工单{order_id}不存在")
        if state not in NEXT.get(order.state, set()):
            raise WorkOrderRefused(
                f"工单{order_id}当前为“{labels.label(labels.WORKORDER_STATE, order.state)}”，"
                f"不能改为“{labels.label(labels.WORKORDER_STATE, state)}”")
        now = self.clock()
        if state == RESOLVED and order.device in self.faults:
            fault = self.faults[order.device].alert
            raise WorkOrderRefused(labels.DUTY_TEXT["still_faulty"].format(
                fault=fault.title or fault.rule))
        if state == ASSIGNED:
            if not assignee:
                raise WorkOrderRefused("派单需指定维修人员")
            order.assignee = assignee
        if state == RESOLVED:
            order.resolved_at = now
        order.state = state
        order.log(now, state, by=by, detail=note or assignee)
        self.changed.add(order.id)
        return order

    def open_for(self, device: str) -> WorkOrder | None:
        for order in self.orders.values():
            if order.device == device and order.state in ACTIVE_STATES:
                return order
        return None

    def _last_verified(self, device: str) -> WorkOrder | None:
        done = [o for o in self.orders.values() if o.device == device and o.state == VERIFIED]
        return max(done, key=lambda o: o.verified_at) if done else None
