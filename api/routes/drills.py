"""Drills (演练): a supervisor starts one from the control room; every start is audited.

`POST /api/drills` plans the drill from the site file (facility/drills.py, as `facility
drill` does), writes the audit row first (nothing is sent if the audit log cannot take it)
and publishes the `Drill` on drill/{id}: the simulators play it, the rules engine marks its
alerts, screens and PA with 演练. `GET /api/drills` lists the drills started, from the
audit log.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from api.deps import Ctx, CurrentUser, Supervisor, problems
from api.link import LinkDown
from audit.log import AuditError
from facility import labels, topics
from facility import messages as m
from facility.drills import DEFAULTS, DrillError, plan

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["drills"])

EVENT = "drill"


class DrillRequest(BaseModel):
    scenario: m.DrillScenario
    place: str = Field(default="", max_length=64,
                       description="where: a place (fire, rainstorm), a Modbus gateway "
                                   "(gateway-loss) or a bollard (bollard-fault); empty: "
                                   "the scenario's default")
    duration_s: float | None = Field(default=None, ge=1, le=24 * 3600,
                                     description="seconds until it stops (default per scenario)")


class DrillView(BaseModel):
    id: str
    scenario: str
    name: str  # 火警演练, ...
    place: str
    place_name: str
    by: str
    ts: int
    ends_at: int
    sources: int  # how many devices and gateways it covers


def _place_name(ctx: Ctx, place: str) -> str:
    site = ctx.site
    for p in site.places:
        if p.id == place:
            return p.name
    for d in site.devices:
        if d.id == place:
            return d.name or place
        if place in d.unit_ids() and d.units is not None and d.units.name:
            return d.units.name.format(n=d.unit_ids().index(place) + 1)
    for g in site.gateways:
        if g.id == place:
            return g.name or place
    return place


def _view(ctx: Ctx, drill: m.Drill) -> DrillView:
    return DrillView(id=drill.id, scenario=drill.scenario.value,
                     name=labels.DRILL[drill.scenario.value], place=drill.place,
                     place_name=_place_name(ctx, drill.place), by=drill.by, ts=drill.ts,
                     ends_at=drill.ends_at, sources=len(drill.sources))


@router.post("/drills", response_model=DrillView, status_code=201,
             responses=problems(401, 403, 409, 503),
             summary="Start a drill (演练) on the simulated campus: fire, rainstorm, "
                     "gateway-loss, bollard-fault (supervisor; audited)")
async def start_drill(body: DrillRequest, user: Supervisor, ctx: Ctx) -> DrillView:
    try:
        drill = plan(ctx.site, body.scenario, by=user.username, place=body.place,
                     duration_s=body.duration_s)
    except DrillError as exc:
        raise HTTPException(409, str(exc)) from None
    view = _view(ctx, drill)
    try:
        await ctx.store.append(site=ctx.site_id, command=drill.id, event=EVENT,
                               username=user.username, role=user.role.value,
                               action=drill.scenario.value, targets=[drill.place],
                               reason=view.name,
                               data={"ends_at": drill.ends_at, "sources": len(drill.sources),
                                     "place_name": view.place_name}, ts=drill.ts)
    except AuditError as exc:
        log.error("drill by %s refused: %s", user.username, exc)
        raise HTTPException(503, "审计日志无法写入，演练未开始") from None
    try:
        await ctx.link.publish(topics.drill(ctx.site_id, drill.id), m.encode(drill))
    except LinkDown as exc:
        await _outcome(ctx, drill, user.username, "failed", str(exc))
        raise HTTPException(503, f"消息服务器不可用，演练未开始（{exc}）") from None
    await _outcome(ctx, drill, user.username, "sent", "")
    return view


async def _outcome(ctx: Ctx, drill: m.Drill, username: str, outcome: str, detail: str) -> None:
    try:
        await ctx.store.append(site=ctx.site_id, command=drill.id, event=f"{EVENT}_{outcome}",
                               username=username, action=drill.scenario.value,
                               targets=[drill.place], outcome=outcome, detail=detail)
    except AuditError as exc:
        log.error("drill %s: outcome %s not audited: %s", drill.id, outcome, exc)


@router.get("/drills", response_model=list[DrillView], responses=problems(401),
            summary="The drills started, newest first")
async def drills(_: CurrentUser, ctx: Ctx,
                 hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24 * 7) -> list[DrillView]:
    since = time.time_ns() - round(hours * 3600e9)
    rows = await ctx.store.rows(ctx.site_id, since=since, events=[EVENT], newest_first=True,
                                limit=200)
    out = []
    for row in rows:
        scenario = row.action if row.action in DEFAULTS else ""
        if not scenario:
            continue
        place = row.targets[0] if row.targets else ""
        out.append(DrillView(id=row.command, scenario=scenario, name=labels.DRILL[scenario],
                             place=place, place_name=_place_name(ctx, place), by=row.username,
                             ts=row.ts, ends_at=int(row.data.get("ends_at", row.ts)),
                             sources=int(row.data.get("sources", 0))))
    return out
