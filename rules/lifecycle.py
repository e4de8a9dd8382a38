"""Stage 2, the ISA-18.2 lifecycle: signals deduplicated into alerts (one per rule and
source while it lasts), raise, re-raise, level changes, clear and close, chattering, and
the operator's actions on an alert (acknowledge, comment, shelve, out of service)."""

from __future__ import annotations

from typing import Any

from facility import labels
from facility.messages import SEVERITY_RANK, AlertState, Severity
from rules.alerts import Alert, Incident, OperationError, short_id
from rules.clock import NS
from rules.config import render
from rules.kinds.base import Signal
from rules.ledger import Ledger


def apply(book: Ledger, signals: list[Signal], now: int) -> None:
    for sig in signals:
        compiled = book.rules.rules.get(sig.rule)
        if compiled is None:
            continue
        key = (sig.rule, sig.source)
        alert = book.open.get(key)
        if sig.active:
            if alert is None:
                alert = _new(book, sig, compiled, now)
                book.open[key] = alert
                _chatter(book, alert, sig.ts)
                book.record(alert, "raised", AlertState.NORMAL, now, detail=sig.detail)
                continue
            before = alert.state
            severity = sig.severity or alert.severity
            if sig.detail.get("refresh") and alert.active and severity == alert.severity:
                # The reading moved on: screens show the new value; the alert keeps
                # the text it was raised with, and no history row is made.
                alert.value = sig.value
                book.changed.setdefault(alert.id, (alert, "value", "", ""))
                continue
            if not alert.active:
                alert.active, alert.cleared_at = True, 0
                alert.raise_count += 1
                fill(book, alert, sig, compiled, severity)
                _chatter(book, alert, sig.ts)
                book.record(alert, "re_raised", before, now, detail=sig.detail)
            elif severity != alert.severity:
                worse = SEVERITY_RANK[severity] > SEVERITY_RANK[alert.severity]
                fill(book, alert, sig, compiled, severity)
                if worse:
                    alert.acknowledged = False  # a worse condition needs a new look
                book.record(alert, "severity_raised" if worse else "severity_lowered",
                             before, now, detail={"severity": severity.value})
            else:
                fill(book, alert, sig, compiled, severity)
                book.record(alert, "updated", before, now, detail=sig.detail)
        elif alert is not None and alert.active:
            before = alert.state
            alert.active, alert.cleared_at = False, sig.ts
            if sig.value is not None:
                alert.value = sig.value
            book.record(alert, "cleared", before, now, comment=sig.text)
            close_if_done(book, alert, now)


def _new(book: Ledger, sig: Signal, compiled: Any, now: int) -> Alert:
    rule = compiled.rule
    severity = sig.severity or rule.severity
    src = book.topology.sources.get(sig.source)
    place = src.place if src else str(sig.detail.get("place", ""))
    if not place and sig.source in book.topology.places:
        place = sig.source
    zone = src.zone if src else book.topology.zone_of_place(place)
    alert = Alert(id=f"al-{short_id(book.site, rule.id, sig.source, sig.ts, now)}",
                  site=book.site, rule=rule.id, source=sig.source, severity=severity,
                  priority=rule.effective_priority(severity), category=rule.category,
                  raised_at=sig.ts, family=src.family if src else _family(book, compiled),
                  place=place,
                  zone=zone, rule_revision=compiled.revision,
                  late_s=int(sig.detail.get("late_s", 0)))
    # A drill's (演练) alert: its input said so, or a drill under way covers it.
    alert.drill = str(sig.detail.get("drill", "")) or book.drill_for(sig.source, place, now)
    fill(book, alert, sig, compiled, severity)
    point = book.points.get((rule.id, sig.source))
    whole = book.points.get(("*", sig.source))
    for p in (point, whole):
        if p is not None and p.out_of_service_by:
            alert.out_of_service_by = p.out_of_service_by
        if p is not None and p.shelved_by:
            alert.shelved_by, alert.shelved_until = p.shelved_by, p.shelved_until
    return alert


def _family(book: Ledger, compiled: Any) -> str:
    """The system of an alert about a place (a correlation): its rule's sources' family,
    when they share one (two fire detectors in one shed are a fire alarm)."""
    families = {s.family for s in map(book.topology.sources.get, compiled.sources) if s}
    return families.pop() if len(families) == 1 else ""


def fill(book: Ledger, alert: Alert, sig: Signal, compiled: Any, severity: Severity) -> None:
    rule = compiled.rule
    alert.severity = severity
    alert.priority = rule.effective_priority(severity)
    if sig.value is not None:
        alert.value = sig.value
    if sig.unit:
        alert.unit = sig.unit
    alert.title = rule.name
    peak = alert.peak_severity
    if peak is not None and SEVERITY_RANK[severity] < SEVERITY_RANK[peak]:
        return  # below its peak: the alert keeps the text of its peak; the value follows
    alert.peak_severity, alert.peak_priority = severity, alert.priority
    alert.text = render(rule.text, fields(book, alert)) if rule.text else \
        (sig.text or rule.name)
    if sig.text and rule.text:
        alert.text = f"{alert.text}（{sig.text}）"


def fields(book: Ledger, alert: Alert, incident: Incident | None = None) -> dict[str, Any]:
    """The values a message template may use."""
    src = book.topology.sources.get(alert.source)
    place = incident.place if incident and incident.place else alert.place
    zone = incident.zone if incident and incident.zone else alert.zone
    compiled = book.rules.rules.get(alert.rule)
    value = alert.value
    return {
        "site_name": book.topology.site.site.name,
        "place": book.topology.place_name(place) if place else (src.name if src else ""),
        "zone": book.topology.zone_name(zone) if zone else "",
        "building": src.building if src else "",
        "device": alert.source,
        "device_name": src.name if src else book.topology.place_name(alert.source),
        "value": value if value is not None else "",
        "unit": alert.unit,
        "rule_name": compiled.rule.name if compiled else alert.rule,
        "severity": labels.SEVERITY[alert.severity],
        "time": "",
        "count": len(incident.members) if incident else 1,
    }


def _chatter(book: Ledger, alert: Alert, ts: int) -> None:
    point = book.point(alert.rule, alert.source)
    window = book.chatter.window * NS
    point.raises = [t for t in point.raises if ts - t <= window] + [ts]
    book.point_touched(point)
    if len(point.raises) >= book.chatter.count and not alert.chattering:
        alert.chattering = True


def close_if_done(book: Ledger, alert: Alert, now: int) -> None:
    if alert.active:
        return
    if alert.acknowledged or not alert.needs_ack or not alert.annunciated:
        before = alert.state
        alert.closed_at = now
        book.open.pop((alert.rule, alert.source), None)
        if alert.incident in book.incidents:
            book.held.setdefault(alert.incident, []).append(alert)
        if any(alert.rule in inh.source for inh in book.rules.inhibit):
            book.recent[alert.id] = alert
        book.record(alert, "closed", before, now)


def acknowledge(book: Ledger, alert: Alert, by: str, now: int, comment: str = "") -> None:
    before = alert.state
    if alert.acknowledged:
        raise OperationError(f"alert {alert.id} is already acknowledged")
    alert.acknowledged, alert.acked_at, alert.acked_by = True, now, by
    book.record(alert, "acknowledged", before, now, by, comment)
    close_if_done(book, alert, now)


def comment(book: Ledger, alert: Alert, by: str, now: int, comment: str) -> None:
    if not comment.strip():
        raise OperationError("a comment needs text")
    book.record(alert, "comment", alert.state, now, by, comment)


def shelve(book: Ledger, alert: Alert, by: str, until: int, now: int, comment: str = "") -> None:
    if until <= now:
        raise OperationError("shelving needs an expiry in the future")
    point = book.point(alert.rule, alert.source)
    point.shelved_by, point.shelved_until, point.reason = by, until, comment
    book.point_touched(point)
    before = alert.state
    alert.shelved_by, alert.shelved_until = by, until
    book.record(alert, "shelved", before, now, by, comment, {"until": until})


def unshelve(book: Ledger, alert: Alert, by: str, now: int, comment: str = "",
             action: str = "unshelved") -> None:
    point = book.point(alert.rule, alert.source)
    if not point.shelved_by and not alert.shelved_by:
        raise OperationError(f"alert {alert.id} is not shelved")
    point.shelved_by, point.shelved_until = "", 0
    book.point_touched(point)
    before = alert.state
    alert.shelved_by, alert.shelved_until = "", 0
    book.record(alert, action, before, now, by, comment)
    close_if_done(book, alert, now)


def out_of_service(book: Ledger, alert: Alert, by: str, now: int, comment: str = "") -> None:
    point = book.point(alert.rule, alert.source)
    point.out_of_service_by, point.reason = by, comment
    book.point_touched(point)
    before = alert.state
    alert.out_of_service_by = by
    book.record(alert, "out_of_service", before, now, by, comment)


def return_to_service(book: Ledger, alert: Alert, by: str, now: int, comment: str = "") -> None:
    point = book.point(alert.rule, alert.source)
    if not point.out_of_service_by and not alert.out_of_service_by:
        raise OperationError(f"alert {alert.id} is not out of service")
    point.out_of_service_by = ""
    book.point_touched(point)
    before = alert.state
    alert.out_of_service_by = ""
    book.record(alert, "returned_to_service", before, now, by, comment)
    close_if_done(book, alert, now)
