"""The alert book's data: alerts, points, incidents, history lines (what the store keeps
and the API reads). The stages that change them are modules of their own, each a function
of the book's state (rules/ledger.py): rules/lifecycle.py (dedupe and the ISA-18.2
operations), rules/suppress.py (maintenance, shelving expiry, inhibition), rules/incidents.py
(grouping) and rules/escalation.py; rules/book.py puts them together as AlertBook.

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

from facility.messages import AlertMessage, AlertState, Scalar, Severity


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
    # The highest level this occurrence reached: kept, with the text it was raised with,
    # until the alert closes (acknowledged and back to normal). `severity`, `priority` and
    # `value` are the level and value now, which the screens and the PA follow.
    peak_severity: Severity | None = None
    peak_priority: int = 0
    drill: str = ""  # raised by a drill (演练): the drill's id; its outputs say 演练

    @property
    def peak(self) -> Severity:
        return self.peak_severity or self.severity

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
            category=self.category, late_s=self.late_s, peak_severity=self.peak,
            peak_priority=self.peak_priority or self.priority, drill=self.drill)

    def to_json(self) -> dict[str, Any]:
        built: dict[str, Any] = msgspec.to_builtins(self)
        return built

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        data = dict(data)
        data["severity"] = Severity(data["severity"])
        if data.get("peak_severity"):
            data["peak_severity"] = Severity(data["peak_severity"])
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


class OperationError(ValueError):
    """An operator action that does not apply (unknown alert, already acknowledged)."""
