"""Stages 2-4: dedupe signals into alerts, suppress and shelve, group into incidents.

An alert is one occurrence of one rule's condition for one source: raised, perhaps
acknowledged, returned to normal, closed (ISA-18.2's lifecycle). While it lasts, further
signals for the same rule and source update it instead of making another (dedupe).
Shelving, out-of-service and maintenance belong to the *point* (rule and source, or the
whole source), so they outlast single occurrences, as in ISA-18.2. Suppression by design
comes from topology (inhibit rules: a panel's fire alarm over its detectors, an offline
gateway or controller over its devices) and from maintenance. Related alerts form one
incident: same category and place (or zone), or linked through their panel/controller.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec

from facility import labels
from facility.messages import SEVERITY_RANK, AlertMessage, AlertState, Scalar, Severity
from facility.topology import Topology
from rules.clock import NS
from rules.config import RuleSet, render
from rules.evaluate import Signal


@dataclass
class Alert:
    id: str
    site: str
    rule: str
    source: str
    severity: Severity
    priority: int
    category: str  # alarm or report
    raised_at: int
    family: str = ""
    place: str = ""
    zone: str = ""
    title: str = ""
    text: str = ""
    value: Scalar | None = None
    unit: str = ""
    active: bool = True
    acknowledged: bool = False
    cleared_at: int = 0
    acked_at: int = 0
    acked_by: str = ""
    closed_at: int = 0
    shelved_until: int = 0  # from the point, copied here for the record
    shelved_by: str = ""
    out_of_service_by: str = ""
    suppressed_by: str = ""  # an alert id, or 'maintenance'
    incident: str = ""
    escalation: int = 0
    escalated_to: str = ""
    unack_since: int = 0  # since when the operator has had it in front of them unacknowledged
    raise_count: int = 1
    chattering: bool = False
    updated_at: int = 0
    late_s: int = 0  # raised by an input this many seconds old (a backlog after an outage)
    rule_revision: str = ""

    @property
    def needs_ack(self) -> bool:
        return self.category == "alarm"

    @property
    def state(self) -> AlertState:
        if self.closed_at:
            return AlertState.NORMAL
        if self.out_of_service_by:
            return AlertState.OUT_OF_SERVICE
        if self.shelved_by:
            return AlertState.SHELVED
        if self.suppressed_by:
            return AlertState.SUPPRESSED
        if self.active:
            return AlertState.ACTIVE_ACK if self.acknowledged else AlertState.ACTIVE_UNACK
        return AlertState.NORMAL if self.acknowledged else AlertState.RTN_UNACK

    @property
    def annunciated(self) -> bool:
        """Shown to the operator (not shelved, suppressed or out of service)."""
        return not (self.out_of_service_by or self.shelved_by or self.suppressed_by)

    def message(self, transition: str, now: int, by: str = "", comment: str = "") -> AlertMessage:
        return AlertMessage(
            id=self.id, site=self.site, rule=self.rule, source=self.source, ts=now,
            state=self.state, active=self.active, acknowledged=self.acknowledged,
            severity=self.severity, priority=self.priority, transition=transition,
            family=self.family, place=self.place, zone=self.zone, incident=self.incident,
            title=self.title, text=self.text, value=self.value, raised_at=self.raised_at,
            by=by, comment=comment, shelved_until=self.shelved_until,
            suppressed_by=self.suppressed_by, escalation=self.escalation,
            escalated_to=self.escalated_to, chattering=self.chattering,
            category=self.category, late_s=self.late_s)

    def to_json(self) -> dict[str, Any]:
        built: dict[str, Any] = msgspec.to_builtins(self)
        return built

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        data = dict(data)
        data["severity"] = Severity(data["severity"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Point:
    """Operator state of a point: a (rule, source) pair, or a whole source (rule '*')."""

    rule: str
    source: str
    shelved_until: int = 0
    shelved_by: str = ""
    out_of_service_by: str = ""
    maintenance_until: int = 0  # 0 with maintenance_by set: until ended by hand
    maintenance_by: str = ""
    reason: str = ""
    raises: list[int] = field(default_factory=list)  # recent raise times, for chattering

    def empty(self) -> bool:
        return not (self.shelved_by or self.out_of_service_by or self.maintenance_by
                    or self.raises)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Incident:
    id: str
    site: str
    category: str
    key: str
    opened_at: int
    place: str = ""
    zone: str = ""
    zones: list[str] = field(default_factory=list)
    title: str = ""
    severity: Severity = Severity.INFO
    priority: int = 5
    members: list[str] = field(default_factory=list)
    active: bool = True
    cleared_at: int = 0  # when its last member's condition cleared
    closed_at: int = 0
    place_from_parent: bool = False
    cap_sequence: int = 0
    cap_refs: list[str] = field(default_factory=list)
    cap_state: str = ""  # what the last CAP document said: severity and active/over
    cap_xml: str = ""
    updated_at: int = 0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        data.pop("cap_xml")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], cap_xml: str = "") -> Incident:
        data = dict(data)
        data["severity"] = Severity(data["severity"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__},
                   cap_xml=cap_xml)


@dataclass
class Transition:
    """One line of an alert's history: the audit trail of who did what and when."""

    alert: str
    site: str
    ts: int
    action: str
    from_state: str
    to_state: str
    by: str = ""
    comment: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def short_id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


@dataclass
class ChatterPolicy:
    count: int = 3  # ISA-18.2 practice: 3 or more raises
    window: float = 60.0  # within 60 s


class AlertBook:
    """The open alerts, points and incidents of one site, and the stages that change them."""

    def __init__(self, site: str, topology: Topology, rules: RuleSet,
                 chatter: ChatterPolicy | None = None, incident_hold: float = 30.0,
                 suppression_grace: float = 5.0) -> None:
        self.site = site
        self.topology = topology
        self.rules = rules
        self.chatter = chatter or ChatterPolicy()
        self.incident_hold = incident_hold
        self.suppression_grace = suppression_grace
        periods = [src.report_period for src in topology.sources.values()] or [0.0]
        self._longest_grace = round(max(suppression_grace, 2 * max(periods)) * NS)
        # Suppressing alerts that cleared, kept while a child's suppression may still hold.
        self.recent: dict[str, Alert] = {}
        self.open: dict[tuple[str, str], Alert] = {}  # (rule, source) -> open occurrence
        self.points: dict[tuple[str, str], Point] = {}
        self.incidents: dict[str, Incident] = {}  # open incidents
        # Alerts closed (acknowledged and clear) while their incident is in its anti-flap
        # hold: the incident's outputs stay up with them until the hold is over.
        self.held: dict[str, list[Alert]] = {}
        # What changed since the last take(): alerts to store and publish, history.
        self.changed: dict[str, tuple[Alert, str, str, str]] = {}
        self.transitions: list[Transition] = []
        self.incidents_changed: dict[str, Incident] = {}
        self.points_changed: dict[tuple[str, str], Point] = {}
        self.escalations: list[tuple[Alert, str]] = []

    # --- bookkeeping ----------------------------------------------------------------

    def by_id(self, alert_id: str) -> Alert | None:
        return next((a for a in self.open.values() if a.id == alert_id), None)

    def _record(self, alert: Alert, action: str, before: AlertState, now: int, by: str = "",
                comment: str = "", detail: dict[str, Any] | None = None) -> None:
        alert.updated_at = now
        if alert.state is AlertState.ACTIVE_UNACK and before is not AlertState.ACTIVE_UNACK:
            alert.unack_since = now  # escalation counts from when the operator could see it
        self.transitions.append(Transition(alert.id, self.site, now, action, before.value,
                                           alert.state.value, by, comment, detail or {}))
        self.changed[alert.id] = (alert, action, by, comment)

    def point(self, rule: str, source: str) -> Point:
        key = (rule, source)
        if key not in self.points:
            self.points[key] = Point(rule, source)
        return self.points[key]

    def _point_touched(self, point: Point) -> None:
        self.points_changed[(point.rule, point.source)] = point

    def take(self) -> tuple[list[tuple[Alert, str, str, str]], list[Transition],
                            list[Incident], list[Point]]:
        out = (list(self.changed.values()), self.transitions,
               list(self.incidents_changed.values()), list(self.points_changed.values()))
        self.changed, self.transitions = {}, []
        self.incidents_changed, self.points_changed = {}, {}
        return out

    # --- stage 2: dedupe ------------------------------------------------------------

    def apply(self, signals: list[Signal], now: int) -> None:
        for sig in signals:
            compiled = self.rules.rules.get(sig.rule)
            if compiled is None:
                continue
            key = (sig.rule, sig.source)
            alert = self.open.get(key)
            if sig.active:
                if alert is None:
                    alert = self._new(sig, compiled, now)
                    self.open[key] = alert
                    self._chatter(alert, sig.ts)
                    self._record(alert, "raised", AlertState.NORMAL, now, detail=sig.detail)
                    continue
                before = alert.state
                severity = sig.severity or alert.severity
                if sig.detail.get("refresh") and alert.active and severity == alert.severity:
                    # The reading moved on: screens show the new value; the alert keeps
                    # the text it was raised with, and no history row is made.
                    alert.value = sig.value
                    self.changed.setdefault(alert.id, (alert, "value", "", ""))
                    continue
                if not alert.active:
                    alert.active, alert.cleared_at = True, 0
                    alert.raise_count += 1
                    self._fill(alert, sig, compiled, severity)
                    self._chatter(alert, sig.ts)
                    self._record(alert, "re_raised", before, now, detail=sig.detail)
                elif severity != alert.severity:
                    worse = SEVERITY_RANK[severity] > SEVERITY_RANK[alert.severity]
                    self._fill(alert, sig, compiled, severity)
                    if worse:
                        alert.acknowledged = False  # a worse condition needs a new look
                    self._record(alert, "severity_raised" if worse else "severity_lowered",
                                 before, now, detail={"severity": severity.value})
                else:
                    self._fill(alert, sig, compiled, severity)
                    self._record(alert, "updated", before, now, detail=sig.detail)
            elif alert is not None and alert.active:
                before = alert.state
                alert.active, alert.cleared_at = False, sig.ts
                if sig.value is not None:
                    alert.value = sig.value
                self._record(alert, "cleared", before, now, comment=sig.text)
                self._maybe_close(alert, now)

    def _new(self, sig: Signal, compiled: Any, now: int) -> Alert:
        rule = compiled.rule
        severity = sig.severity or rule.severity
        src = self.topology.sources.get(sig.source)
        place = src.place if src else str(sig.detail.get("place", ""))
        if not place and sig.source in self.topology.places:
            place = sig.source
        zone = src.zone if src else self.topology.zone_of_place(place)
        alert = Alert(id=f"al-{short_id(self.site, rule.id, sig.source, sig.ts, now)}",
                      site=self.site, rule=rule.id, source=sig.source, severity=severity,
                      priority=rule.effective_priority(severity), category=rule.category,
                      raised_at=sig.ts, family=src.family if src else "", place=place,
                      zone=zone, rule_revision=compiled.revision,
                      late_s=int(sig.detail.get("late_s", 0)))
        self._fill(alert, sig, compiled, severity)
        point = self.points.get((rule.id, sig.source))
        whole = self.points.get(("*", sig.source))
        for p in (point, whole):
            if p is not None and p.out_of_service_by:
                alert.out_of_service_by = p.out_of_service_by
            if p is not None and p.shelved_by:
                alert.shelved_by, alert.shelved_until = p.shelved_by, p.shelved_until
        return alert

    def _fill(self, alert: Alert, sig: Signal, compiled: Any, severity: Severity) -> None:
        rule = compiled.rule
        alert.severity = severity
        alert.priority = rule.effective_priority(severity)
        if sig.value is not None:
            alert.value = sig.value
        if sig.unit:
            alert.unit = sig.unit
        alert.title = rule.name
        alert.text = render(rule.text, self.fields(alert)) if rule.text else \
            (sig.text or rule.name)
        if sig.text and rule.text:
            alert.text = f"{alert.text}（{sig.text}）"

    def fields(self, alert: Alert, incident: Incident | None = None) -> dict[str, Any]:
        """The values a message template may use."""
        src = self.topology.sources.get(alert.source)
        place = incident.place if incident and incident.place else alert.place
        zone = incident.zone if incident and incident.zone else alert.zone
        compiled = self.rules.rules.get(alert.rule)
        value = alert.value
        return {
            "site_name": self.topology.site.site.name,
            "place": self.topology.place_name(place) if place else (src.name if src else ""),
            "zone": self.topology.zone_name(zone) if zone else "",
            "building": src.building if src else "",
            "device": alert.source,
            "device_name": src.name if src else self.topology.place_name(alert.source),
            "value": value if value is not None else "",
            "unit": alert.unit,
            "rule_name": compiled.rule.name if compiled else alert.rule,
            "severity": labels.SEVERITY[alert.severity],
            "time": "",
            "count": len(incident.members) if incident else 1,
        }

    def _chatter(self, alert: Alert, ts: int) -> None:
        point = self.point(alert.rule, alert.source)
        window = self.chatter.window * NS
        point.raises = [t for t in point.raises if ts - t <= window] + [ts]
        self._point_touched(point)
        if len(point.raises) >= self.chatter.count and not alert.chattering:
            alert.chattering = True

    def _maybe_close(self, alert: Alert, now: int) -> None:
        if alert.active:
            return
        if alert.acknowledged or not alert.needs_ack or not alert.annunciated:
            before = alert.state
            alert.closed_at = now
            self.open.pop((alert.rule, alert.source), None)
            if alert.incident in self.incidents:
                self.held.setdefault(alert.incident, []).append(alert)
            if any(alert.rule in inh.source for inh in self.rules.inhibit):
                self.recent[alert.id] = alert
            self._record(alert, "closed", before, now)

    # --- operator actions -----------------------------------------------------------

    def acknowledge(self, alert: Alert, by: str, now: int, comment: str = "") -> None:
        before = alert.state
        if alert.acknowledged:
            raise OperationError(f"alert {alert.id} is already acknowledged")
        alert.acknowledged, alert.acked_at, alert.acked_by = True, now, by
        self._record(alert, "acknowledged", before, now, by, comment)
        self._maybe_close(alert, now)

    def comment(self, alert: Alert, by: str, now: int, comment: str) -> None:
        if not comment.strip():
            raise OperationError("a comment needs text")
        self._record(alert, "comment", alert.state, now, by, comment)

    def shelve(self, alert: Alert, by: str, until: int, now: int, comment: str = "") -> None:
        if until <= now:
            raise OperationError("shelving needs an expiry in the future")
        point = self.point(alert.rule, alert.source)
        point.shelved_by, point.shelved_until, point.reason = by, until, comment
        self._point_touched(point)
        before = alert.state
        alert.shelved_by, alert.shelved_until = by, until
        self._record(alert, "shelved", before, now, by, comment, {"until": until})

    def unshelve(self, alert: Alert, by: str, now: int, comment: str = "",
                 action: str = "unshelved") -> None:
        point = self.point(alert.rule, alert.source)
        if not point.shelved_by and not alert.shelved_by:
            raise OperationError(f"alert {alert.id} is not shelved")
        point.shelved_by, point.shelved_until = "", 0
        self._point_touched(point)
        before = alert.state
        alert.shelved_by, alert.shelved_until = "", 0
        self._record(alert, action, before, now, by, comment)
        self._maybe_close(alert, now)

    def out_of_service(self, alert: Alert, by: str, now: int, comment: str = "") -> None:
        point = self.point(alert.rule, alert.source)
        point.out_of_service_by, point.reason = by, comment
        self._point_touched(point)
        before = alert.state
        alert.out_of_service_by = by
        self._record(alert, "out_of_service", before, now, by, comment)

    def return_to_service(self, alert: Alert, by: str, now: int, comment: str = "") -> None:
        point = self.point(alert.rule, alert.source)
        if not point.out_of_service_by and not alert.out_of_service_by:
            raise OperationError(f"alert {alert.id} is not out of service")
        point.out_of_service_by = ""
        self._point_touched(point)
        before = alert.state
        alert.out_of_service_by = ""
        self._record(alert, "returned_to_service", before, now, by, comment)
        self._maybe_close(alert, now)

    def maintenance(self, source: str, by: str, until: int, now: int, comment: str) -> None:
        point = self.point("*", source)
        point.maintenance_by, point.maintenance_until, point.reason = by, until, comment
        self._point_touched(point)

    def end_maintenance(self, source: str, now: int) -> None:
        point = self.point("*", source)
        if not point.maintenance_by:
            raise OperationError(f"{source} is not in maintenance")
        point.maintenance_by, point.maintenance_until = "", 0
        self._point_touched(point)

    # --- stage 3: suppress and shelve -----------------------------------------------

    def expire(self, now: int) -> None:
        """Shelves and maintenance windows that ran out."""
        for point in list(self.points.values()):
            if point.shelved_by and point.shelved_until and now >= point.shelved_until:
                for alert in list(self.open.values()):
                    if (alert.rule, alert.source) == (point.rule, point.source) \
                            and alert.shelved_by:
                        self.unshelve(alert, "system", now, "shelve expired",
                                      action="shelve_expired")
                point.shelved_by, point.shelved_until = "", 0
                self._point_touched(point)
            if point.maintenance_by and point.maintenance_until \
                    and now >= point.maintenance_until:
                point.maintenance_by, point.maintenance_until = "", 0
                self._point_touched(point)
            window = self.chatter.window * NS
            if point.raises and now - point.raises[-1] > window:
                point.raises = []
                self._point_touched(point)

    def in_maintenance(self, source: str) -> bool:
        src = self.topology.sources.get(source)
        for sid in (source, src.parent if src else ""):
            point = self.points.get(("*", sid)) if sid else None
            if point is not None and point.maintenance_by:
                return True
        return False

    def suppress(self, now: int) -> None:
        """Recompute suppression by design for every open alert, in a stable order.

        Candidate sources are looked up by the key the relation joins on (the panel's
        id, the gateway's id, the place...), not by pairing every alert with every other:
        a gateway offline with a thousand devices behind it is a thousand alerts, and a
        million pairs on every tick."""
        wanted: dict[str, str] = {}
        alerts = sorted(self.open.values(), key=lambda a: (a.raised_at, a.id))
        longest = self._longest_grace
        holding = {a.suppressed_by for a in alerts}
        for alert_id in [i for i, a in self.recent.items()
                         if now - a.cleared_at >= longest and i not in holding]:
            del self.recent[alert_id]
        # A suppressing alert that cleared still suppresses for a grace: its RESTORE may
        # come a moment before its children's, and a child's no-data clears only with its
        # next report after its gateway or PLC is back.
        candidates = alerts + sorted(self.recent.values(), key=lambda a: (a.raised_at, a.id))
        for alert in alerts:
            if self.in_maintenance(alert.source):
                wanted[alert.id] = "maintenance"
        for inh in self.rules.inhibit:
            sources: dict[str, list[Alert]] = {}
            for source in candidates:
                if source.rule in inh.source and not source.out_of_service_by and \
                        (source.active or now - source.cleared_at < longest
                         or source.id in holding):
                    sources.setdefault(self._source_key(inh.relation, source), []).append(source)
            if not sources:
                continue
            for target in alerts:
                if target.rule not in inh.target or target.id in wanted:
                    continue
                for source in sources.get(self._target_key(inh.relation, target), ()):
                    if source is target or wanted.get(source.id) == target.id:
                        continue
                    if not source.active and (
                            target.suppressed_by != source.id
                            or (inh.relation != "incident"
                                and now - source.cleared_at >= self._grace(target))):
                        # Over: a child not hidden by it now is not hidden later. A
                        # consequential alarm stays so for the rest of its active life.
                        continue
                    if self._related(inh.relation, target, source):
                        wanted[target.id] = source.id
                        break
        for alert in alerts:
            want = wanted.get(alert.id, "")
            if alert.suppressed_by != want:
                before = alert.state
                alert.suppressed_by = want
                self._record(alert, "suppressed" if want else "unsuppressed", before, now,
                             detail={"by": want} if want else {})
                self._maybe_close(alert, now)

    def _grace(self, target: Alert) -> int:
        """How long a child stays suppressed after its parent cleared: a few seconds, or
        for a comms alert (no data, offline) until its next report could have come."""
        grace = self.suppression_grace
        compiled = self.rules.rules.get(target.rule)
        src = self.topology.sources.get(target.source)
        if compiled is not None and compiled.rule.type == "absence" and src is not None:
            grace = max(grace, 2 * src.report_period)
        return round(grace * NS)

    @staticmethod
    def _source_key(relation: str, source: Alert) -> str:
        if relation == "place":
            return source.place
        if relation == "zone":
            return source.zone
        if relation == "incident":
            return source.incident
        return source.source  # panel, controller, gateway, same_source: the source device

    def _target_key(self, relation: str, target: Alert) -> str:
        t = self.topology.sources.get(target.source)
        if relation in ("panel", "controller"):
            return t.tags.get(relation, "") if t is not None else ""
        if relation == "gateway":
            return t.gateway if t is not None else ""
        if relation == "same_source":
            return target.source
        if relation == "place":
            return target.place
        if relation == "zone":
            return target.zone
        if relation == "incident":
            return target.incident
        return ""

    def _related(self, relation: str, target: Alert, source: Alert) -> bool:
        t = self.topology.sources.get(target.source)
        if relation in ("panel", "controller"):
            if t is None or t.tags.get(relation) != source.source:
                return False
            # Only the alarms of the same incident: a panel that already reports a fire in
            # one shed must not hide a second fire in another shed under the same panel.
            theirs = self.incidents.get(source.incident)
            if theirs is None or target.incident == source.incident:
                return True
            return not target.incident and (theirs.place_from_parent or theirs.key == t.place)
        if relation == "gateway":
            return t is not None and t.gateway == source.source and t.id != source.source
        if relation == "same_source":  # the earlier of two alerts on one source stands
            return target.source == source.source and \
                (source.raised_at, source.id) < (target.raised_at, target.id)
        if relation == "place":
            return bool(target.place) and target.place == source.place
        if relation == "zone":
            return bool(target.zone) and target.zone == source.zone
        if relation == "incident":  # consequential: it joined an incident the source leads
            return bool(target.incident) and target.incident == source.incident
        return False

    # --- stage 4: incidents ---------------------------------------------------------

    def members(self) -> dict[str, list[Alert]]:
        """Open alerts by incident, in one pass (not one pass per incident), and those
        held with their incident."""
        out: dict[str, list[Alert]] = {}
        for alert in self.open.values():
            if alert.incident:
                out.setdefault(alert.incident, []).append(alert)
        for incident_id, held in self.held.items():
            out.setdefault(incident_id, []).extend(held)
        return out

    def group(self, now: int) -> None:
        loose = [a for a in self.open.values()
                 if not (a.incident and a.incident in self.incidents)]
        members = self.members() if loose else {}
        for alert in sorted(loose, key=lambda a: (a.raised_at, a.id)):
            compiled = self.rules.rules.get(alert.rule)
            if compiled is None:
                continue
            spec = compiled.rule.incident_spec()
            key = self.topology.group_key(alert.source, spec.group_by) \
                if alert.source in self.topology.sources else alert.source
            incident = self._find_incident(alert, spec.category, key, now, members)
            src = self.topology.sources.get(alert.source)
            is_parent = src is not None and (src.id in self.topology.parents
                                             or src.family == "gateway")
            if incident is None:
                incident = Incident(id=f"in-{short_id(self.site, spec.category, key, now)}",
                                    site=self.site, category=spec.category, key=key,
                                    opened_at=now, place=alert.place, zone=alert.zone,
                                    place_from_parent=is_parent)
                self.incidents[incident.id] = incident
            elif incident.place_from_parent and not is_parent and alert.place:
                incident.place, incident.zone = alert.place, alert.zone
                incident.place_from_parent = False
            alert.incident = incident.id
            members.setdefault(incident.id, []).append(alert)
            incident.members.append(alert.id)
            if alert.zone and alert.zone not in incident.zones:
                incident.zones.append(alert.zone)
            self.changed.setdefault(alert.id, (alert, "grouped", "", ""))
            self.incidents_changed[incident.id] = incident
        self._incident_states(now)

    def _find_incident(self, alert: Alert, category: str, key: str, now: int,
                       members: dict[str, list[Alert]]) -> Incident | None:
        src = self.topology.sources.get(alert.source)
        hold = self.incident_hold * NS
        for incident in self.incidents.values():
            if incident.category != category or incident.closed_at:
                continue
            if not incident.active and now - incident.cleared_at > hold:
                continue
            if incident.key == key:
                return incident
            for other in members.get(incident.id, ()):
                o = self.topology.sources.get(other.source)
                if src is not None and src.parent and src.parent == other.source \
                        and incident.place_from_parent:
                    return incident
                if o is not None and o.parent and o.parent == alert.source:
                    return incident
        return None

    def _incident_states(self, now: int) -> None:
        hold = self.incident_hold * NS
        for incident_id in list(self.held):
            incident = self.incidents.get(incident_id)
            if incident is None or (not incident.active and now - incident.cleared_at >= hold):
                del self.held[incident_id]
        by_incident = self.members()
        for incident in list(self.incidents.values()):
            members = by_incident.get(incident.id, [])
            live = [a for a in members if a.active and a.annunciated]
            # What it is about comes from what the operator sees; once it is over it keeps
            # that (a consequential alarm still in its window does not rename it).
            lead = max(live if live or incident.title else members,
                       key=lambda a: (SEVERITY_RANK[a.severity], -a.priority), default=None)
            changed = False
            if lead is not None and (lead.severity != incident.severity
                                     or lead.title != incident.title):
                incident.severity, incident.priority = lead.severity, lead.priority
                incident.title = lead.title
                changed = True
            if live and not incident.active:
                incident.active, incident.cleared_at = True, 0
                changed = True
            elif not live and incident.active:
                incident.active, incident.cleared_at = False, now
                changed = True
            if not members:
                incident.closed_at = now
                incident.active = False
                del self.incidents[incident.id]
                changed = True
            if changed:
                incident.updated_at = now
                self.incidents_changed[incident.id] = incident

    def showing(self, incident: Incident, now: int) -> bool:
        """Whether its outputs stay up: active, or cleared less than the hold time ago."""
        return incident.active or (not incident.closed_at
                                   and now - incident.cleared_at < self.incident_hold * NS)

    # --- escalation -----------------------------------------------------------------

    def escalate(self, now: int) -> None:
        for alert in self.open.values():
            if alert.state is not AlertState.ACTIVE_UNACK:
                continue
            compiled = self.rules.rules.get(alert.rule)
            if compiled is None:
                continue
            since = alert.unack_since or alert.raised_at
            due = [e for e in compiled.rule.escalate if now - since >= e.after * NS]
            for level in range(alert.escalation + 1, len(due) + 1):
                team = due[level - 1].to
                before = alert.state
                alert.escalation, alert.escalated_to = level, team
                self._record(alert, "escalated", before, now, "system",
                             f"not acknowledged in {due[level - 1].after:.0f}s",
                             {"level": level, "team": team})
                self.escalations.append((alert, team))


class OperationError(ValueError):
    """An operator action that does not apply (unknown alert, already acknowledged)."""
