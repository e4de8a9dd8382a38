"""What the control-room page needs beyond the campus and the alert list: one device's
recent activity (events, alerts open and closed, bollard commands), an incident's timeline
with its CAP documents, and which screens carry an operator's manual message. Read-only;
every logged-in user may read them (the same as the rest of the campus)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from api.deps import Ctx, CurrentUser, problems
from api.models import AlertView, IncidentView
from api.routes.alerts import alert_view, incident_view
from audit.commands import CommandView
from facility.influx import InfluxError, quote_ident, quote_string
from ingest.convert import EVENT_MEASUREMENT
from rules.store import endpoints_t

router = APIRouter(prefix="/api", tags=["control-room desk"])


class DeviceEvent(BaseModel):
    ts: int = Field(description="ns since the Unix epoch")
    name: str = Field(description="fire_alarm, fault, restore, ...")
    text: str
    id: str


class DeviceActivity(BaseModel):
    device: str
    events: list[DeviceEvent] = Field(description="newest first, from InfluxDB")
    events_error: str = Field(description="why events could not be read; empty if they were")
    alerts: list[AlertView] = Field(description="open and closed, newest first")
    commands: list[CommandView] = Field(description="bollard commands that targeted it "
                                                    "(or, for a PLC, its bollards)")


class TimelineEntry(BaseModel):
    ts: int
    alert: str
    title: str
    action: str = Field(description="raised, acknowledged, shelved, cleared, closed, ...")
    from_state: str
    to_state: str
    by: str
    comment: str


class IncidentTimeline(BaseModel):
    incident: IncidentView
    alerts: list[AlertView]
    entries: list[TimelineEntry] = Field(description="every member alert's history, oldest "
                                                     "first")
    cap_documents: list[str] = Field(description="each CAP 1.2 document issued, oldest first")


class ManualMessage(BaseModel):
    display: str
    text: str
    priority: int


@router.get("/devices/{device_id}/activity", response_model=DeviceActivity,
            responses=problems(401, 404),
            summary="One device's recent events, alerts (open and closed) and commands")
async def device_activity(
        device_id: str, _: CurrentUser, ctx: Ctx,
        hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24,
        limit: Annotated[int, Query(ge=1, le=200)] = 20) -> DeviceActivity:
    source = ctx.devices.source(device_id)
    if source is None or source.family == "gateway":
        raise HTTPException(404, f"no device {device_id!r}")
    since = time.time_ns() - round(hours * 3600e9)
    events, error = await _events(ctx, device_id, since, limit)
    alerts = await ctx.alerts.alerts(ctx.site_id, source=device_id, limit=limit)
    bollards = {s.id for s in ctx.devices.devices() if s.parent == device_id}
    commands = [c for c in await ctx.desk.recent(since, limit=500)
                if device_id in c.targets or bollards & set(c.targets)][:limit]
    return DeviceActivity(device=device_id, events=events, events_error=error,
                          alerts=[alert_view(a) for a in alerts], commands=commands)


async def _events(ctx: Ctx, device_id: str, since: int,
                  limit: int) -> tuple[list[DeviceEvent], str]:
    query = (f"SELECT id, text FROM {quote_ident(ctx.settings.influx.retention_policy)}."
             f"{quote_ident(EVENT_MEASUREMENT)} WHERE device = {quote_string(device_id)} "
             f"AND site = {quote_string(ctx.site_id)} AND time >= {since} "
             f"GROUP BY \"name\" ORDER BY time DESC LIMIT {limit}")
    try:
        result = await ctx.influx.query(query, epoch="ns")
    except InfluxError as exc:
        if "database not found" in str(exc):
            return [], ""
        return [], str(exc)
    out = [DeviceEvent(ts=int(row["time"]), name=series.tags.get("name", ""),
                       text=str(row.get("text") or ""), id=str(row.get("id") or ""))
           for series in (result[0] if result else []) for row in series.rows()]
    return sorted(out, key=lambda e: e.ts, reverse=True)[:limit], ""


@router.get("/incidents/{incident_id}/timeline", response_model=IncidentTimeline,
            responses=problems(401, 404),
            summary="An incident's alerts, their history as one timeline, and its CAP "
                    "documents")
async def incident_timeline(incident_id: str, _: CurrentUser, ctx: Ctx) -> IncidentTimeline:
    found = await ctx.alerts.incident(incident_id)
    if found is None or found.site != ctx.site_id:
        raise HTTPException(404, f"no incident {incident_id!r}")
    members = await ctx.alerts.alerts(ctx.site_id, incident=incident_id, limit=1000)
    titles = {a.id: a.title for a in members}
    entries: list[TimelineEntry] = []
    for a in members:
        entries.append(TimelineEntry(ts=a.raised_at, alert=a.id, title=a.title,
                                     action="raised", from_state="", to_state="", by="",
                                     comment=""))
        for h in await ctx.alerts.history(a.id):
            entries.append(TimelineEntry(ts=h["ts"], alert=a.id, title=titles[a.id],
                                         action=h["action"], from_state=h["from_state"],
                                         to_state=h["to_state"], by=h["by"],
                                         comment=h["comment"]))
    entries.sort(key=lambda e: e.ts)
    return IncidentTimeline(incident=incident_view(found), alerts=[alert_view(a) for a in members],
                            entries=entries,
                            cap_documents=await ctx.alerts.cap_documents(incident_id))


@router.get("/displays/manual", response_model=list[ManualMessage], responses=problems(401),
            summary="Screens that carry an operator's manual message now (shown or waiting "
                    "behind a more urgent one): only these can have it withdrawn")
async def manual_messages(_: CurrentUser, ctx: Ctx) -> list[ManualMessage]:
    async with ctx.alerts.db.connect() as conn:
        rows = await conn.execute(sa.select(endpoints_t.c.endpoint, endpoints_t.c.data)
                                  .where(endpoints_t.c.site == ctx.site_id))
        states: list[tuple[str, dict[str, Any]]] = [
            (r.endpoint, _json(r.data)) for r in rows]
    return [ManualMessage(display=endpoint, text=str(data["manual"].get("text", "")),
                          priority=int(data["manual"].get("priority") or 9))
            for endpoint, data in states if isinstance(data.get("manual"), dict)]


def _json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
