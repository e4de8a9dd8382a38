"""The alert book of one site: its state (rules/ledger.py) and the stages that change it,
in pipeline order (rules/engine.py runs them): lifecycle (dedupe, operator actions),
suppress (maintenance, shelving expiry, inhibition), incidents (grouping), escalation."""

from __future__ import annotations

from typing import Any

from rules import escalation, incidents, lifecycle, suppress
from rules.alerts import Alert, Incident
from rules.kinds.base import Signal
from rules.ledger import Ledger


class AlertBook(Ledger):
    def apply(self, signals: list[Signal], now: int) -> None:
        lifecycle.apply(self, signals, now)

    def fields(self, alert: Alert, incident: Incident | None = None) -> dict[str, Any]:
        return lifecycle.fields(self, alert, incident)

    def acknowledge(self, alert: Alert, by: str, now: int, comment: str = "") -> None:
        lifecycle.acknowledge(self, alert, by, now, comment)

    def comment(self, alert: Alert, by: str, now: int, comment: str) -> None:
        lifecycle.comment(self, alert, by, now, comment)

    def shelve(self, alert: Alert, by: str, until: int, now: int, comment: str = "") -> None:
        lifecycle.shelve(self, alert, by, until, now, comment)

    def unshelve(self, alert: Alert, by: str, now: int, comment: str = "") -> None:
        lifecycle.unshelve(self, alert, by, now, comment)

    def out_of_service(self, alert: Alert, by: str, now: int, comment: str = "") -> None:
        lifecycle.out_of_service(self, alert, by, now, comment)

    def return_to_service(self, alert: Alert, by: str, now: int, comment: str = "") -> None:
        lifecycle.return_to_service(self, alert, by, now, comment)

    def maintenance(self, source: str, by: str, until: int, now: int, comment: str) -> None:
        suppress.maintenance(self, source, by, until, now, comment)

    def end_maintenance(self, source: str, now: int) -> None:
        suppress.end_maintenance(self, source, now)

    def expire(self, now: int) -> None:
        suppress.expire(self, now)

    def suppress(self, now: int) -> None:
        suppress.suppress(self, now)

    def group(self, now: int) -> None:
        incidents.group(self, now)

    def members(self) -> dict[str, list[Alert]]:
        return incidents.by_incident(self)

    def showing(self, incident: Incident, now: int) -> bool:
        return incidents.showing(self, incident, now)

    def escalate(self, now: int) -> None:
        escalation.escalate(self, now)
