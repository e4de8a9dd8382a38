"""Stage 3, suppression by design and shelving: maintenance windows, shelves that ran out,
and inhibition by topology (Alertmanager-style `inhibit:` rules: a panel's fire alarm over
its detectors, an offline gateway or controller over its devices, consequential alarms in
their cause's incident)."""

from __future__ import annotations

from rules import lifecycle
from rules.alerts import Alert, OperationError
from rules.clock import NS
from rules.ledger import Ledger


def maintenance(book: Ledger, source: str, by: str, until: int, now: int, comment: str) -> None:
    point = book.point("*", source)
    point.maintenance_by, point.maintenance_until, point.reason = by, until, comment
    book.point_touched(point)


def end_maintenance(book: Ledger, source: str, now: int) -> None:
    point = book.point("*", source)
    if not point.maintenance_by:
        raise OperationError(f"{source} is not in maintenance")
    point.maintenance_by, point.maintenance_until = "", 0
    book.point_touched(point)


def expire(book: Ledger, now: int) -> None:
    """Shelves and maintenance windows that ran out."""
    for point in list(book.points.values()):
        if point.shelved_by and point.shelved_until and now >= point.shelved_until:
            for alert in list(book.open.values()):
                if (alert.rule, alert.source) == (point.rule, point.source) \
                        and alert.shelved_by:
                    lifecycle.unshelve(book, alert, "system", now, "shelve expired",
                                  action="shelve_expired")
            point.shelved_by, point.shelved_until = "", 0
            book.point_touched(point)
        if point.maintenance_by and point.maintenance_until \
                and now >= point.maintenance_until:
            point.maintenance_by, point.maintenance_until = "", 0
            book.point_touched(point)
        window = book.chatter.window * NS
        if point.raises and now - point.raises[-1] > window:
            point.raises = []
            book.point_touched(point)


def in_maintenance(book: Ledger, source: str) -> bool:
    src = book.topology.sources.get(source)
    for sid in (source, src.parent if src else ""):
        point = book.points.get(("*", sid)) if sid else None
        if point is not None and point.maintenance_by:
            return True
    return False


def suppress(book: Ledger, now: int) -> None:
    """Recompute suppression by design for every open alert, in a stable order.

    Candidate sources are looked up by the key the relation joins on (the panel's
    id, the gateway's id, the place...), not by pairing every alert with every other:
    a gateway offline with a thousand devices behind it is a thousand alerts, and a
    million pairs on every tick."""
    wanted: dict[str, str] = {}
    alerts = sorted(book.open.values(), key=lambda a: (a.raised_at, a.id))
    longest = book.longest_grace
    holding = {a.suppressed_by for a in alerts}
    for alert_id in [i for i, a in book.recent.items()
                     if now - a.cleared_at >= longest and i not in holding]:
        del book.recent[alert_id]
    # A suppressing alert that cleared still suppresses for a grace: its RESTORE may
    # come a moment before its children's, and a child's no-data clears only with its
    # next report after its gateway or PLC is back.
    candidates = alerts + sorted(book.recent.values(), key=lambda a: (a.raised_at, a.id))
    for alert in alerts:
        if in_maintenance(book, alert.source):
            wanted[alert.id] = "maintenance"
    for inh in book.rules.inhibit:
        sources: dict[str, list[Alert]] = {}
        for source in candidates:
            if source.rule in inh.source and not source.out_of_service_by and \
                    (source.active or now - source.cleared_at < longest
                     or source.id in holding):
                sources.setdefault(_source_key(inh.relation, source), []).append(source)
        if not sources:
            continue
        for target in alerts:
            if target.rule not in inh.target or target.id in wanted:
                continue
            for source in sources.get(_target_key(book, inh.relation, target), ()):
                if source is target or wanted.get(source.id) == target.id:
                    continue
                if not source.active and (
                        target.suppressed_by != source.id
                        or (inh.relation != "incident"
                            and now - source.cleared_at >= _grace(book, target))):
                    # Over: a child not hidden by it now is not hidden later. A
                    # consequential alarm stays so for the rest of its active life.
                    continue
                if _related(book, inh.relation, target, source):
                    wanted[target.id] = source.id
                    break
    for alert in alerts:
        want = wanted.get(alert.id, "")
        if alert.suppressed_by != want:
            before = alert.state
            alert.suppressed_by = want
            book.record(alert, "suppressed" if want else "unsuppressed", before, now,
                         detail={"by": want} if want else {})
            lifecycle.close_if_done(book, alert, now)


def _grace(book: Ledger, target: Alert) -> int:
    """How long a child stays suppressed after its parent cleared: a few seconds, or
    for a comms alert (no data, offline) until its next report could have come."""
    grace = book.suppression_grace
    compiled = book.rules.rules.get(target.rule)
    src = book.topology.sources.get(target.source)
    if compiled is not None and compiled.rule.type == "absence" and src is not None:
        grace = max(grace, 2 * src.report_period)
    return round(grace * NS)


def _source_key(relation: str, source: Alert) -> str:
    if relation == "place":
        return source.place
    if relation == "zone":
        return source.zone
    if relation == "incident":
        return source.incident
    return source.source  # panel, controller, gateway, same_source: the source device


def _target_key(book: Ledger, relation: str, target: Alert) -> str:
    t = book.topology.sources.get(target.source)
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


def _related(book: Ledger, relation: str, target: Alert, source: Alert) -> bool:
    t = book.topology.sources.get(target.source)
    if relation in ("panel", "controller"):
        if t is None or t.tags.get(relation) != source.source:
            return False
        # Only the alarms of the same incident: a panel that already reports a fire in
        # one shed must not hide a second fire in another shed under the same panel.
        theirs = book.incidents.get(source.incident)
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
