"""The district overview: every site one API process serves, with its open incidents, its
open alerts by severity and its connection to the centre.

An API process serves one site or several (a sites folder, facility/catalog.py); each site
has its own Context (api/context.py: its MQTT subscriptions, devices, alert reads), and a
request picks one with `?site=` (api/deps.py). This module reads those contexts; it keeps
nothing of its own. Alerts and incidents come from the rules engines' store, which holds
every site's state keyed by site (rules/store.py), so the figures are the engines' own.

Connectivity: a site whose broker bridge to the centre is down (the retained "0" Mosquitto
leaves on facility/v1/{site}/link/{bridge}) is unreachable, whatever its gateways last
said: their retained statuses at the centre are stale then. Otherwise the gateways'
statuses decide: all online, some offline (partial), all offline, or none heard (unknown).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping

from api.context import Context
from api.models import (
    Connectivity,
    DistrictView,
    GatewayCount,
    IncidentView,
    SiteBrief,
    SiteLinkView,
    SiteOverview,
)
from api.routes.alerts import incident_view
from facility import messages as m
from facility.labels import CONNECTIVITY
from facility.messages import SEVERITY_RANK, Severity

INCIDENTS_LISTED = 20
# Worst first in the overview: by the worst open alert, then a site the centre cannot
# hear, then one with gateways away.
CONNECTIVITY_RANK: dict[str, int] = {"unreachable": 0, "offline": 1, "partial": 2,
                                     "unknown": 3, "online": 4}
assert set(CONNECTIVITY_RANK) == set(CONNECTIVITY)


def brief(ctx: Context, home: bool) -> SiteBrief:
    site = ctx.site.site
    body = site.public_body
    return SiteBrief(id=ctx.site_id, name=site.name, timezone=site.timezone,
                     kind=body.kind.value if body else None, home=home)


def gateway_count(ctx: Context) -> GatewayCount:
    online = offline = unknown = 0
    for gateway in ctx.site.gateways:
        status = ctx.devices.status.get(gateway.id)
        if status is None:
            unknown += 1
        elif status.state == m.Availability.ONLINE.value:
            online += 1
        else:
            offline += 1
    return GatewayCount(total=len(ctx.site.gateways), online=online, offline=offline,
                        unknown=unknown)


def connectivity(gateways: GatewayCount, links: Mapping[str, bool]) -> Connectivity:
    if any(not up for up in links.values()):
        return "unreachable"
    if gateways.total == 0 or gateways.unknown == gateways.total:
        return "unknown"
    if gateways.offline == 0 and gateways.unknown == 0:
        return "online"
    if gateways.online == 0:
        return "offline"
    return "partial"


async def overview(ctx: Context, home: bool) -> SiteOverview:
    alerts = [a for a in await ctx.open_alerts() if a.annunciated]
    incidents = await ctx.alerts.incidents(ctx.site_id, open_only=True, limit=1000)
    by_severity = Counter(a.severity.value for a in alerts)
    worst = max(alerts, key=lambda a: SEVERITY_RANK[Severity(a.severity)], default=None)
    gateways = gateway_count(ctx)
    views: list[IncidentView] = [incident_view(i) for i in incidents[:INCIDENTS_LISTED]]
    return SiteOverview(
        **brief(ctx, home).model_dump(),
        connectivity=connectivity(gateways, ctx.site_links),
        gateways=gateways,
        links=[SiteLinkView(bridge=b, up=up) for b, up in sorted(ctx.site_links.items())],
        open_alerts=len(alerts), unacknowledged=sum(not a.acknowledged for a in alerts),
        alerts_by_severity={s.value: by_severity.get(s.value, 0) for s in Severity},
        worst_severity=worst.severity.value if worst else None,
        open_incidents=views, open_incident_count=len(incidents))


async def district(contexts: Mapping[str, Context], home: str) -> DistrictView:
    sites = await asyncio.gather(*(overview(c, c.site_id == home)
                                   for c in contexts.values()))
    worst_first = sorted(sites, key=lambda s: (
        -SEVERITY_RANK[Severity(s.worst_severity)] if s.worst_severity else 0,
        CONNECTIVITY_RANK[s.connectivity], -s.open_incident_count, s.id))
    return DistrictView(sites=worst_first,
                        open_incidents=sum(s.open_incident_count for s in sites),
                        open_alerts=sum(s.open_alerts for s in sites),
                        connectivity={state: sum(s.connectivity == state for s in sites)
                                      for state in CONNECTIVITY})
