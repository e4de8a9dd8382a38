"""The campus: site, zones, places, gateways; devices with their latest values; history."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from api.deps import Ctx, CurrentUser, IsoTime, problems, to_ns
from api.devices import Latest
from api.history import AGGREGATES, energy_today, history
from api.models import (
    AlertSummary,
    DeviceDetail,
    DeviceView,
    EnergyToday,
    GatewayView,
    History,
    LatestValues,
    PlaceView,
    PlanPoint,
    SiteView,
    ZoneView,
)
from api.routes.alerts import alert_view
from facility.influx import InfluxError
from facility.messages import SEVERITY_RANK, Severity
from facility.topology import Source
from rules.alerts import Alert

router = APIRouter(prefix="/api", tags=["campus and devices"])
Aggregate = Literal["mean", "min", "max", "last", "first", "count"]
assert set(AGGREGATES) == {"mean", "min", "max", "last", "first", "count"}


@router.get("/site", response_model=SiteView, responses=problems(401),
            summary="The site: zones, places with plan positions, gateways")
async def site(_: CurrentUser, ctx: Ctx) -> SiteView:
    s = ctx.site
    gateways = []
    for g in s.gateways:
        status = ctx.devices.status.get(g.id)
        gateways.append(GatewayView(
            id=g.id, name=g.name or g.id, kind=g.kind.value,
            online=None if status is None else status.state == "online",
            status_reason=status.reason if status else ""))
    return SiteView(
        id=s.site.id, name=s.site.name, timezone=s.site.timezone,
        zones=[ZoneView(id=z.id, name=z.name) for z in s.zones],
        places=[PlaceView(id=p.id, name=p.name, kind=p.kind.value, zone=p.zone,
                          building=p.building,
                          plan=PlanPoint(x=p.plan.x, y=p.plan.y) if p.plan else None,
                          floor_area_m2=p.floor_area_m2) for p in s.places],
        gateways=gateways)


def _plan(ctx: Ctx, source: Source) -> PlanPoint | None:
    if source.id in ctx.plans:
        cached: PlanPoint | None = ctx.plans[source.id]
        return cached
    device_id = source.parent if source.tags.get("controller") else source.id
    device = next((d for d in ctx.site.devices if d.id == device_id), None)
    point = device.plan if device and device.plan else None
    if point is None:
        place = ctx.topology.places.get(source.place)
        point = place.plan if place else None
    ctx.plans[source.id] = plan = PlanPoint(x=point.x, y=point.y) if point else None
    return plan


def _latest(latest: Latest | None) -> LatestValues | None:
    if latest is None:
        return None
    return LatestValues(ts=latest.ts, quality=latest.quality, values=latest.values,
                        units=latest.units, errors=latest.errors,
                        source="live" if latest.source == "live" else "influxdb")


def _summary(alerts: list[Alert]) -> AlertSummary:
    live = [a for a in alerts if a.annunciated]
    worst = max(live, key=lambda a: SEVERITY_RANK[Severity(a.severity)], default=None)
    return AlertSummary(count=len(live), worst_severity=worst.severity.value if worst else None)


def device_view(ctx: Ctx, source: Source, alerts: list[Alert]) -> DeviceView:
    status = ctx.devices.status.get(source.id)
    return DeviceView(
        id=source.id, name=source.name, family=source.family, kind=source.kind,
        place=source.place, place_name=source.place_name, zone=source.zone,
        zone_name=source.zone_name, building=source.building, gateway=source.gateway,
        controller=source.parent, plan=_plan(ctx, source), online=ctx.devices.online(source),
        status_reason=status.reason if status else "",
        latest=_latest(ctx.devices.latest.get(source.id)), alerts=_summary(alerts))


async def _open_alerts(ctx: Ctx) -> dict[str, list[Alert]]:
    by_source: dict[str, list[Alert]] = {}
    for alert in await ctx.open_alerts():
        by_source.setdefault(alert.source, []).append(alert)
    return by_source


@router.get("/devices", response_model=list[DeviceView], responses=problems(401),
            summary="Devices (bollards behind their PLC included) with status and latest "
                    "values")
async def devices(_: CurrentUser, ctx: Ctx,
                  family: Annotated[list[str] | None, Query()] = None,
                  zone: Annotated[list[str] | None, Query()] = None,
                  place: Annotated[list[str] | None, Query()] = None) -> Response:
    # The wall screen asks every few seconds from many desks: each device's JSON is kept
    # until its reading, status or alerts change, and the list is joined from those.
    alerts = await _open_alerts(ctx)
    parts = [_device_json(ctx, s, alerts.get(s.id, [])) for s in ctx.devices.devices()
             if (not family or s.family in family) and (not zone or s.zone in zone)
             and (not place or s.place in place)]
    return Response(b"[" + b",".join(parts) + b"]", media_type="application/json")


def _device_json(ctx: Ctx, source: Source, alerts: list[Alert]) -> bytes:
    latest = ctx.devices.latest.get(source.id)
    status = ctx.devices.status.get(source.id)
    online = ctx.devices.online(source)
    marks = tuple((a.id, a.state, a.annunciated, a.severity) for a in alerts)
    cached = ctx.device_json.get(source.id)
    if cached is not None and cached[0] is latest and cached[1] is status \
            and cached[2] == (online, marks):
        kept: bytes = cached[3]
        return kept
    body = device_view(ctx, source, alerts).model_dump_json().encode()
    ctx.device_json[source.id] = (latest, status, (online, marks), body)
    return body


def _source(ctx: Ctx, device_id: str) -> Source:
    source = ctx.devices.source(device_id)
    if source is None or source.family == "gateway":
        raise HTTPException(404, f"no device {device_id!r}")
    return source


@router.get("/devices/{device_id}", response_model=DeviceDetail, responses=problems(401, 404),
            summary="One device: where it is, status, latest values, open alerts")
async def device(device_id: str, _: CurrentUser, ctx: Ctx) -> DeviceDetail:
    source = _source(ctx, device_id)
    alerts = (await _open_alerts(ctx)).get(source.id, [])
    view = device_view(ctx, source, alerts)
    return DeviceDetail(**view.model_dump(), value_names=sorted(source.value_names),
                        open_alerts=[alert_view(a) for a in alerts])


@router.get("/devices/{device_id}/history", response_model=History,
            responses=problems(401, 404, 409, 503),
            summary="A reading's history, downsampled by InfluxDB (GROUP BY time)")
async def device_history(
        device_id: str, _: CurrentUser, ctx: Ctx,
        field: Annotated[str, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$",
                                    description="value name, e.g. water_level")],
        start: Annotated[IsoTime | None, Query(description="ISO 8601; default end - 24 h")]
        = None,
        end: Annotated[IsoTime | None, Query(description="ISO 8601; default now")] = None,
        points: Annotated[int | None, Query(ge=1, le=5000,
                                            description="at most this many points")] = None,
        aggregate: Aggregate = "mean") -> History:
    source = _source(ctx, device_id)
    if field not in source.value_names:
        raise HTTPException(404, f"{device_id} has no value {field!r} "
                                 f"(it has: {', '.join(sorted(source.value_names))})")
    end_ns = to_ns(end, time.time_ns())
    assert end_ns is not None
    start_ns = to_ns(start, end_ns - 24 * 3600 * 10**9)
    assert start_ns is not None
    if start_ns >= end_ns:  # an empty interval has no points
        return History(device=source.id, field=field, aggregate=aggregate, interval_s=0,
                       start=start_ns // 10**6, end=end_ns // 10**6, query="", points=[])
    try:
        return await history(ctx.influx, ctx.settings.influx.retention_policy, source, field,
                             start_ns, end_ns, points or ctx.settings.api.history_points,
                             aggregate)
    except InfluxError as exc:
        if exc.retryable:
            raise HTTPException(503, f"InfluxDB: {exc}") from None
        # e.g. the mean of a text value: the stored data decides, not the request's form
        raise HTTPException(409, f"{aggregate} does not apply to {field!r} as stored "
                                 f"(InfluxDB: {exc}); try aggregate=last") from None


@router.get("/energy/today", response_model=EnergyToday, responses=problems(401, 503),
            summary="Energy used today per building (kWh and kgce), with its formula")
async def energy(_: CurrentUser, ctx: Ctx) -> EnergyToday:
    try:
        return await energy_today(ctx.influx, ctx.settings.influx.retention_policy,
                                  ctx.topology)
    except InfluxError as exc:
        if "database not found" in str(exc):
            return EnergyToday(since=0, formula="no data stored yet", buildings=[])
        raise HTTPException(503, f"InfluxDB: {exc}") from None
