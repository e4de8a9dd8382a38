"""Stage 4, grouping into incidents: alerts of one incident category and group (place by
default) form one incident; an alert on a panel or controller joins the open incident of
its detectors or units, and the other way round. An incident's title and severity come
from what the operator sees; its outputs stay up for `incident_hold` after it clears."""

from __future__ import annotations

from facility.messages import SEVERITY_RANK
from rules.alerts import Alert, Incident, short_id
from rules.clock import NS
from rules.ledger import Ledger


def by_incident(book: Ledger) -> dict[str, list[Alert]]:
    """Open alerts by incident, in one pass (not one pass per incident), and those
    held with their incident."""
    out: dict[str, list[Alert]] = {}
    for alert in book.open.values():
        if alert.incident:
            out.setdefault(alert.incident, []).append(alert)
    for incident_id, held in book.held.items():
        out.setdefault(incident_id, []).extend(held)
    return out


def group(book: Ledger, now: int) -> None:
    loose = [a for a in book.open.values()
             if not (a.incident and a.incident in book.incidents)]
    members = by_incident(book) if loose else {}
    for alert in sorted(loose, key=lambda a: (a.raised_at, a.id)):
        compiled = book.rules.rules.get(alert.rule)
        if compiled is None:
            continue
        spec = compiled.rule.incident_spec()
        key = book.topology.group_key(alert.source, spec.group_by) \
            if alert.source in book.topology.sources else alert.source
        incident = _find_incident(book, alert, spec.category, key, now, members)
        src = book.topology.sources.get(alert.source)
        is_parent = src is not None and (src.id in book.topology.parents
                                         or src.family == "gateway")
        if incident is None:
            incident = Incident(id=f"in-{short_id(book.site, spec.category, key, now)}",
                                site=book.site, category=spec.category, key=key,
                                opened_at=now, place=alert.place, zone=alert.zone,
                                place_from_parent=is_parent)
            book.incidents[incident.id] = incident
        elif incident.place_from_parent and not is_parent and alert.place:
            incident.place, incident.zone = alert.place, alert.zone
            incident.place_from_parent = False
        alert.incident = incident.id
        members.setdefault(incident.id, []).append(alert)
        incident.members.append(alert.id)
        if alert.zone and alert.zone not in incident.zones:
            incident.zones.append(alert.zone)
        book.changed.setdefault(alert.id, (alert, "grouped", "", ""))
        book.incidents_changed[incident.id] = incident
    _incident_states(book, now)


def _find_incident(book: Ledger, alert: Alert, category: str, key: str, now: int,
                   members: dict[str, list[Alert]]) -> Incident | None:
    src = book.topology.sources.get(alert.source)
    hold = book.incident_hold * NS
    for incident in book.incidents.values():
        if incident.category != category or incident.closed_at:
            continue
        if not incident.active and now - incident.cleared_at > hold:
            continue
        if incident.key == key:
            return incident
        for other in members.get(incident.id, ()):
            o = book.topology.sources.get(other.source)
            if src is not None and src.parent and src.parent == other.source \
                    and incident.place_from_parent:
                return incident
            if o is not None and o.parent and o.parent == alert.source:
                return incident
    return None


def _incident_states(book: Ledger, now: int) -> None:
    hold = book.incident_hold * NS
    for incident_id in list(book.held):
        incident = book.incidents.get(incident_id)
        if incident is None or (not incident.active and now - incident.cleared_at >= hold):
            del book.held[incident_id]
    grouped = by_incident(book)
    for incident in list(book.incidents.values()):
        members = grouped.get(incident.id, [])
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
            del book.incidents[incident.id]
            changed = True
        if changed:
            incident.updated_at = now
            book.incidents_changed[incident.id] = incident


def showing(book: Ledger, incident: Incident, now: int) -> bool:
    """Whether its outputs stay up: active, or cleared less than the hold time ago."""
    return incident.active or (not incident.closed_at
                               and now - incident.cleared_at < book.incident_hold * NS)
