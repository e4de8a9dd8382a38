"""The alert book's state, shared by its stages: open alerts by (rule, source), points,
open incidents, and what changed since the last take() (to store, then publish)."""

from __future__ import annotations

from typing import Any

from facility.messages import AlertState, Drill
from facility.topology import Topology
from rules.alerts import Alert, ChatterPolicy, Incident, Point, Transition
from rules.clock import NS
from rules.config import RuleSet


class Ledger:
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
        self.longest_grace = round(max(suppression_grace, 2 * max(periods)) * NS)
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
        self.drills: dict[str, Drill] = {}  # drills under way (演练), by id

    def drill_for(self, source: str, place: str, now: int) -> str:
        """The drill under way whose scope holds this source or place, if any."""
        for drill in self.drills.values():
            if drill.ts <= now < drill.ends_at and (source in drill.sources
                                                     or (place and place in drill.places)):
                return drill.id
        return ""

    def by_id(self, alert_id: str) -> Alert | None:
        return next((a for a in self.open.values() if a.id == alert_id), None)

    def record(self, alert: Alert, action: str, before: AlertState, now: int, by: str = "",
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

    def point_touched(self, point: Point) -> None:
        self.points_changed[(point.rule, point.source)] = point

    def take(self) -> tuple[list[tuple[Alert, str, str, str]], list[Transition],
                            list[Incident], list[Point]]:
        out = (list(self.changed.values()), self.transitions,
               list(self.incidents_changed.values()), list(self.points_changed.values()))
        self.changed, self.transitions = {}, []
        self.incidents_changed, self.points_changed = {}, {}
        return out
