"""The rules engine of one site: the pipeline evaluate -> dedupe -> suppress/shelve ->
group -> route -> notify, as plain synchronous code driven by inputs and a clock.

The service (rules/service.py) feeds it messages and ticks, stores what `take()` returns
in one transaction, and then publishes. Nothing here reads the clock or does I/O, so tests
and the service share the same code path and a restart restores it from the store.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec

from facility.endpoints import EndpointConfig
from facility.messages import (
    AckStatus,
    AlertAction,
    AlertOperation,
    AlertOperationResult,
    Command,
    CommandResult,
    DeviceStatus,
    DisplayAck,
    Drill,
    Event,
    Reading,
    Severity,
)
from facility.topology import Topology
from rules import cap
from rules.alerts import (
    Alert,
    ChatterPolicy,
    Incident,
    OperationError,
    Point,
    Transition,
)
from rules.book import AlertBook
from rules.clock import NS
from rules.config import CompiledRule, EventRule, IncidentSpec, RuleSet
from rules.evaluate import RESTART_HOLD, Evaluator, Instance, Signal
from rules.route import Delivery, EndpointState, Pending, Router

log = logging.getLogger(__name__)

ENDPOINT_SILENT = "endpoint-silent"


@dataclass
class Effects:
    """Everything one step changed: to store (first) and then to publish."""

    alerts: list[tuple[Alert, str, str, str]] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    acks: list[tuple[str, str, int, str]] = field(default_factory=list)
    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    escalations: list[tuple[Alert, str]] = field(default_factory=list)
    caps: list[tuple[str, str, int, str]] = field(default_factory=list)  # id, incident, sent, xml

    def __bool__(self) -> bool:
        return any((self.alerts, self.transitions, self.incidents, self.points, self.instances,
                    self.deliveries, self.acks, self.endpoints, self.escalations, self.caps))


@dataclass
class Snapshot:
    """What the store keeps of a running engine, to take it up again after a restart."""

    alerts: list[Alert] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)
    heartbeat: int = 0  # the last time the engine was known to run
    started: int = 0  # the first time the engine ran for the site
    last_seen: dict[str, int] = field(default_factory=dict)  # source -> last reading
    series: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # window samples


def with_builtin_rules(rules: RuleSet, endpoints: EndpointConfig) -> RuleSet:
    """The engine's own rules: an output endpoint that stays silent."""
    if ENDPOINT_SILENT in rules.rules:
        return rules
    rule = EventRule(
        id=ENDPOINT_SILENT, type="event", name="显示屏/广播终端无响应", severity=Severity.MAJOR,
        raise_on=["silent"], clear_on=["confirmed"],
        text="{device_name}未确认收到的显示或广播内容",
        incident=IncidentSpec(category="outputs", group_by="source", cap_category="Infra"))
    compiled = CompiledRule(rule=rule, file=rules.files[0] if rules.files else None,
                            index=-1, sources=[e.id for e in endpoints.endpoints],
                            revision=rule.revision())
    return dataclasses.replace(rules, rules={**rules.rules, ENDPOINT_SILENT: compiled})


def urgent_sources(rules: RuleSet) -> frozenset[str]:
    """Sources whose readings can put something on a screen or the PA: the service takes
    their readings before the others of a batch."""
    return frozenset(s for c in rules.rules.values() if c.rule.notify for s in c.sources)


class Engine:
    def __init__(self, topology: Topology, rules: RuleSet, endpoints: EndpointConfig, *,
                 now: int, chatter: ChatterPolicy | None = None, incident_hold: float = 30.0,
                 suppression_grace: float = 5.0, cap_sender: str = "",
                 cap_status: str = "Actual") -> None:
        self.site = topology.site_id
        self.topology = topology
        self.endpoints = endpoints
        self.rules = with_builtin_rules(rules, endpoints)
        self.evaluator = Evaluator(self.rules, topology, now)
        self.book = AlertBook(self.site, topology, self.rules, chatter, incident_hold,
                              suppression_grace)
        self.router = Router(self.site, endpoints, self.rules)
        self.urgent_sources = urgent_sources(self.rules)
        self.cap_sender = cap_sender or f"facility-rules@{self.site}"
        self.cap_status = cap_status
        self.caps: list[tuple[str, str, int, str]] = []
        self.processed = 0
        self.last_tick = 0

    # --- restart --------------------------------------------------------------------

    def restore(self, snapshot: Snapshot, now: int) -> None:
        gap = max(0, now - snapshot.heartbeat) if snapshot.heartbeat else 0
        evaluator = self.evaluator
        for inst in snapshot.instances:
            if inst.rule not in self.rules.rules:
                continue
            timing = inst.timing or inst.deadline is not None
            if timing and gap:
                inst.restored_gap = gap  # the timer goes on from its start; the gap is noted
            evaluator.restore_instance(inst)
        if snapshot.started:
            evaluator.started_at = min(evaluator.started_at, snapshot.started)
        # Last-seen times and windows go on from before the restart. Until the service has
        # taken in what the broker kept meanwhile, no-data and offline rules would judge
        # devices by readings still queued: they wait (at most RESTART_HOLD).
        evaluator.restore_seen(snapshot.last_seen, snapshot.series)
        if snapshot.heartbeat:
            evaluator.absence_from = now + round(RESTART_HOLD * NS)
        for alert in snapshot.alerts:
            self.book.open[(alert.rule, alert.source)] = alert
        for incident in snapshot.incidents:
            self.book.incidents[incident.id] = incident
        for point in snapshot.points:
            self.book.points[(point.rule, point.source)] = point
        for endpoint_id, state in snapshot.endpoints.items():
            if endpoint_id in self.router.state:
                self.router.state[endpoint_id] = state
        for item in snapshot.pending:
            pending = Pending(**item)
            self.router.pending[pending.message_id] = pending
        if snapshot.alerts or snapshot.instances or snapshot.last_seen:
            log.info("rules %s: restored %d open alerts, %d rule states, last-seen of %d "
                     "sources (down for %.1fs)", self.site, len(snapshot.alerts),
                     len(snapshot.instances), len(snapshot.last_seen), gap / NS)
        self._pipeline([], now)  # every screen gets what it must show now
        for alert in snapshot.alerts:
            self.book.transitions.append(Transition(
                alert.id, self.site, now, "service_restarted", alert.state.value,
                alert.state.value, "system", "", {"down_s": round(gap / NS, 1)}))

    def set_rules(self, rules: RuleSet) -> None:
        """Reload: new rule definitions; state of rules that still exist is kept."""
        self.rules = with_builtin_rules(rules, self.endpoints)
        self.evaluator.set_rules(self.rules)
        self.book.rules = self.rules
        self.router.rules = self.rules
        self.urgent_sources = urgent_sources(self.rules)

    # --- inputs ---------------------------------------------------------------------

    # The stages after evaluation run only when a condition changed: a reading that
    # changes no rule's state costs its evaluation and nothing more (time-driven changes,
    # such as the end of an incident's hold, come with the next tick).

    def reading(self, reading: Reading, now: int) -> None:
        signals = self.evaluator.on_reading(reading, now)
        if signals:
            self._pipeline(signals, now)

    def event(self, event: Event, now: int) -> None:
        signals = self.evaluator.on_event(event, now)
        if signals:
            self._pipeline(signals, now)

    def status(self, status: DeviceStatus, now: int) -> None:
        signals = self.evaluator.on_status(status, now)
        if signals:
            self._pipeline(signals, now)

    def link(self, bridge: str, up: bool, now: int) -> None:
        """The site's link to the centre (facility/bridge.py) went up or down."""
        signals = self.evaluator.on_link(bridge, up, now)
        if signals:
            self._pipeline(signals, now)

    def command(self, command: Command, now: int) -> None:
        signals = self.evaluator.on_command(command, now)
        if signals:
            self._pipeline(signals, now)

    def command_result(self, result: CommandResult, now: int) -> None:
        signals = self.evaluator.on_command_result(result, now)
        if signals:
            self._pipeline(signals, now)

    def display_ack(self, ack: DisplayAck, now: int) -> None:
        if ack.status is AckStatus.REJECTED:
            log.warning("rules %s: %s rejected %s: %s", self.site, ack.endpoint, ack.message,
                        ack.detail)
        self.router.ack(ack.endpoint, ack.message, ack.status.value, now)
        if self.router.silence_changes:  # an endpoint back from silence clears its alert
            self._pipeline([], now)

    def drill(self, drill: Drill, now: int) -> None:
        """A drill (演练) under way: the alerts of its sources and places raised until it
        ends are its own, and their screens and PA say 演练."""
        drills = self.book.drills
        for old in [k for k, d in drills.items() if d.ends_at <= now]:
            del drills[old]
        if drill.ends_at > now and drill.id not in drills:
            drills[drill.id] = drill
            log.warning("rules %s: drill %s (%s at %s) by %s until %d", self.site, drill.id,
                        drill.scenario.value, drill.place, drill.by, drill.ends_at)

    def caught_up(self, now: int) -> None:
        """The service has taken in what the broker kept while it was away."""
        self.evaluator.caught_up(now)

    def tick(self, now: int) -> None:
        self.last_tick = now
        signals = self.evaluator.tick(now)
        self.book.expire(now)
        self.router.retry(now)
        self._pipeline(signals, now, escalate=True)

    def _pipeline(self, signals: list[Signal], now: int, escalate: bool = False) -> None:
        self.processed += 1
        book, router = self.book, self.router
        book.apply(signals, now)  # dedupe into alerts
        book.suppress(now)  # suppression by design; shelving is applied in apply()/ops
        book.group(now)  # incidents
        book.suppress(now)  # again: inhibition by a parent holds within its incident
        if escalate:
            book.escalate(now)
        router.route(book, now)  # outputs per endpoint
        silence = router.silence_changes
        router.silence_changes = []
        if silence:  # an endpoint that stays silent raises its own alert
            extra = [Signal(rule=ENDPOINT_SILENT, source=endpoint, active=silent, ts=now,
                            severity=Severity.MAJOR if silent else None,
                            text=router.silence_alert_text(endpoint) if silent else "",
                            detail={"place": router.endpoints[endpoint].place or ""})
                     for endpoint, silent in silence]
            book.apply(extra, now)
            book.suppress(now)
            book.group(now)
        self._cap(now)

    # --- CAP ------------------------------------------------------------------------

    def _emergency(self, incident: Incident) -> bool:
        for alert in self.book.open.values():
            if alert.incident == incident.id:
                compiled = self.rules.rules.get(alert.rule)
                if compiled is not None and compiled.rule.notify:
                    return True
        return bool(incident.cap_refs)

    def _cap(self, now: int) -> None:
        for incident in list(self.book.incidents_changed.values()):
            if not self._emergency(incident):
                continue
            over = not incident.active
            state = f"{incident.severity.value}:{'over' if over else 'active'}:{incident.title}"
            if state == incident.cap_state or (over and not incident.cap_refs):
                continue
            lead = max((a for a in self.book.open.values() if a.incident == incident.id),
                       key=lambda a: (a.active, -a.priority), default=None)
            compiled = self.rules.rules.get(lead.rule) if lead else None
            spec = compiled.rule.incident_spec() if compiled else IncidentSpec(category="other")
            incident.cap_sequence += 1
            identifier = f"{self.site}.{incident.id}.{incident.cap_sequence}"
            place = self.topology.place_name(incident.place) if incident.place else ""
            description = "；".join(a.text for a in self.book.open.values()
                                   if a.incident == incident.id and a.text)[:2000]
            document = cap.build(
                identifier=identifier, sender=self.cap_sender, sent=now,
                timezone=self.topology.timezone,
                msg_type="Alert" if not incident.cap_refs else "Update",
                references=list(incident.cap_refs), incident=incident.id,
                category=spec.cap_category, response=spec.cap_response,
                event=incident.title or spec.category, severity=incident.severity,
                headline=f"{place}{incident.title}" + ("（已解除）" if over else ""),
                description=description or incident.title, instruction=spec.instruction,
                sender_name=self.topology.site.site.name,
                area_desc=place or self.topology.site.site.name, zones=incident.zones,
                over=over, status="Exercise" if lead is not None and lead.drill
                else self.cap_status)  # CAP 1.2: a drill's documents are an Exercise
            incident.cap_refs.append(cap.reference(self.cap_sender, identifier, now,
                                                   self.topology.timezone))
            incident.cap_state = state
            incident.cap_xml = document
            self.caps.append((identifier, incident.id, now, document))

    # --- operator actions -----------------------------------------------------------

    def operate(self, op: AlertOperation, now: int) -> AlertOperationResult:
        """Apply an operator's action; the result says whether it applied and why not."""
        try:
            state = self._operate(op, now)
        except OperationError as exc:
            return AlertOperationResult(id=op.id, site=self.site, target=op.target, ts=now,
                                        ok=False, detail=str(exc))
        self._pipeline([], now)
        return AlertOperationResult(id=op.id, site=self.site, target=op.target, ts=now,
                                    ok=True, state=state)

    def _alert(self, alert_id: str) -> Alert:
        alert = self.book.by_id(alert_id)
        if alert is None:
            raise OperationError(f"no open alert {alert_id!r}")
        return alert

    def _operate(self, op: AlertOperation, now: int) -> str:
        action, book = op.action, self.book
        if action is AlertAction.ACKNOWLEDGE:
            alert = self._alert(op.target)
            book.acknowledge(alert, op.by, now, op.comment)
            return alert.state.value
        if action is AlertAction.COMMENT:
            alert = self._alert(op.target)
            book.comment(alert, op.by, now, op.comment)
            return alert.state.value
        if action is AlertAction.SHELVE:
            alert = self._alert(op.target)
            book.shelve(alert, op.by, op.until, now, op.comment)
            return alert.state.value
        if action is AlertAction.UNSHELVE:
            alert = self._alert(op.target)
            book.unshelve(alert, op.by, now, op.comment)
            return alert.state.value
        if action is AlertAction.OUT_OF_SERVICE:
            alert = self._alert(op.target)
            book.out_of_service(alert, op.by, now, op.comment)
            return alert.state.value
        if action is AlertAction.RETURN_TO_SERVICE:
            alert = self._alert(op.target)
            book.return_to_service(alert, op.by, now, op.comment)
            return alert.state.value
        if action is AlertAction.MAINTENANCE:
            if op.target not in self.topology.sources:
                raise OperationError(f"no device or gateway {op.target!r}")
            if op.until and op.until <= now:
                raise OperationError("maintenance needs an end in the future (or none)")
            book.maintenance(op.target, op.by, op.until, now, op.comment)
            return "maintenance"
        if action is AlertAction.END_MAINTENANCE:
            book.end_maintenance(op.target, now)
            return "in_service"
        try:
            if action is AlertAction.SET_CONTENT:
                self.router.set_content(op.target, op.text, now)
                return "content_set"
            if action is AlertAction.SHOW_MESSAGE:
                self.router.show_manual(op.target, op.text, op.priority, now)
                return "message_shown"
            if action is AlertAction.WITHDRAW_MESSAGE:
                self.router.withdraw_manual(op.target, now)
                return "message_withdrawn"
        except ValueError as exc:
            raise OperationError(str(exc)) from None
        raise OperationError(f"{action} is handled by the service, not the engine")

    # --- output ---------------------------------------------------------------------

    def take(self) -> Effects:
        alerts, transitions, incidents, points = self.book.take()
        deliveries, acks, dirty = self.router.take()
        dirty_keys = self.evaluator.dirty
        self.evaluator.dirty = set()
        instances = [self.evaluator.instances[k] for k in dirty_keys
                     if k in self.evaluator.instances]
        escalations, self.book.escalations = self.book.escalations, []
        caps, self.caps = self.caps, []
        return Effects(alerts=alerts, transitions=transitions, incidents=incidents,
                       points=points, instances=instances, deliveries=deliveries, acks=acks,
                       endpoints={e: self.router.state[e] for e in dirty},
                       escalations=escalations, caps=caps)

    def urgent(self) -> bool:
        """Whether the last input changed what the world must be told (alert messages,
        display messages, broadcasts): then the service stores and publishes at once
        instead of at the end of its batch."""
        return bool(self.book.changed or self.book.transitions or self.router.deliveries
                    or self.caps or self.book.escalations)

    def pending_payloads(self) -> list[dict[str, Any]]:
        return [msgspec.to_builtins(p) for p in self.router.pending.values()]

    def annunciated(self) -> list[Alert]:
        return [a for a in self.book.open.values() if a.annunciated]
