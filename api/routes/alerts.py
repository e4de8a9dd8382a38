"""Alerts and incidents from the rules engine's store, and the operator's actions on
alerts, carried out by the rules engine (it records who did what and when)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from api.auth import User
from api.deps import Ctx, CurrentUser, IsoTime, Operator, Supervisor, problems, to_ns
from api.link import LinkDown
from api.models import (
    AckRequest,
    AlertDetail,
    AlertView,
    CommentRequest,
    IncidentDetail,
    IncidentView,
    OperationResult,
    ServiceRequest,
    ShelveRequest,
    Transition,
)
from facility.messages import AlertAction, AlertState, Severity
from facility.ops import NoAnswer
from rules.alerts import Alert, Incident

router = APIRouter(prefix="/api", tags=["alerts and incidents"])


def alert_view(a: Alert) -> AlertView:
    return AlertView(
        id=a.id, rule=a.rule, source=a.source, state=a.state.value, active=a.active,
        acknowledged=a.acknowledged, severity=a.severity.value, priority=a.priority,
        category=a.category, family=a.family, place=a.place, zone=a.zone,
        incident=a.incident, title=a.title, text=a.text, value=a.value, unit=a.unit,
        raised_at=a.raised_at, cleared_at=a.cleared_at, acked_at=a.acked_at,
        acked_by=a.acked_by, closed_at=a.closed_at, shelved_until=a.shelved_until,
        shelved_by=a.shelved_by, out_of_service_by=a.out_of_service_by,
        suppressed_by=a.suppressed_by, escalation=a.escalation, escalated_to=a.escalated_to,
        chattering=a.chattering, updated_at=a.updated_at, late_s=a.late_s,
        peak_severity=_peak(a), drill=a.drill)


def _peak(a: Alert) -> str | None:
    # The rules engine's peak severity, where its alerts have one (read defensively: the
    # field is new in rules/alerts.py).
    peak = getattr(a, "peak_severity", None)
    return str(peak.value if hasattr(peak, "value") else peak) if peak else None


def incident_view(i: Incident) -> IncidentView:
    return IncidentView(id=i.id, category=i.category, title=i.title, severity=i.severity.value,
                        priority=i.priority, place=i.place, zone=i.zone, zones=list(i.zones),
                        active=i.active, opened_at=i.opened_at, cleared_at=i.cleared_at,
                        closed_at=i.closed_at, members=list(i.members))


@router.get("/alerts", response_model=list[AlertView], responses=problems(401),
            summary="Alerts, newest first: open ones by default; filter by state, "
                    "severity, zone, family, time raised")
async def alerts(
        _: CurrentUser, ctx: Ctx,
        state: Annotated[list[AlertState] | None, Query()] = None,
        severity: Annotated[list[Severity] | None, Query()] = None,
        zone: Annotated[list[str] | None, Query()] = None,
        family: Annotated[list[str] | None, Query()] = None,
        open_only: Annotated[bool, Query(alias="open",
                                         description="only alerts not closed")] = True,
        since: Annotated[IsoTime | None, Query(description="raised at or after")] = None,
        until: Annotated[IsoTime | None, Query(description="raised before")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[AlertView]:
    found = await ctx.alerts.alerts(
        ctx.site_id, open_only=open_only, states=[s.value for s in state] if state else None,
        since=to_ns(since), until=to_ns(until), limit=5000)
    out = [a for a in found
           if (not severity or a.severity in severity) and (not zone or a.zone in zone)
           and (not family or a.family in family)]
    return [alert_view(a) for a in out[:limit]]


@router.get("/alerts/{alert_id}", response_model=AlertDetail, responses=problems(401, 404),
            summary="One alert with its transition history (who did what, when)")
async def alert(alert_id: str, _: CurrentUser, ctx: Ctx) -> AlertDetail:
    found = await _alert(ctx, alert_id)
    history = [Transition(ts=h["ts"], action=h["action"], from_state=h["from_state"],
                          to_state=h["to_state"], by=h["by"], comment=h["comment"],
                          detail=h["detail"]) for h in await ctx.alerts.history(alert_id)]
    return AlertDetail(**alert_view(found).model_dump(), history=history)


async def _alert(ctx: Ctx, alert_id: str) -> Alert:
    found = await ctx.alerts.alert(alert_id)
    if found is None or found.site != ctx.site_id:
        raise HTTPException(404, f"no alert {alert_id!r}")
    return found


async def _operate(ctx: Ctx, user: User, alert_id: str, action: AlertAction, *,
                   comment: str = "", until: int = 0) -> OperationResult:
    found = await _alert(ctx, alert_id)
    if found.zone and not user.in_zone(found.zone):
        raise HTTPException(403, f"you may not act in zone {found.zone}")
    try:
        result = await ctx.link.operate(action, alert_id, user.username, comment=comment,
                                        until=until)
    except LinkDown as exc:
        raise HTTPException(503, str(exc)) from None
    except NoAnswer as exc:
        raise HTTPException(504, str(exc)) from None
    if not result.ok:
        raise HTTPException(409, result.detail or "the rules engine refused it")
    after = await ctx.alerts.alert(alert_id)
    return OperationResult(ok=True, alert=alert_view(after) if after else None,
                           detail=result.state)


OPS = problems(401, 403, 404, 409, 503, 504)


@router.post("/alerts/{alert_id}/acknowledge", response_model=OperationResult, responses=OPS,
             summary="Acknowledge (operator, in their zones)")
async def acknowledge(alert_id: str, body: AckRequest, user: Operator,
                      ctx: Ctx) -> OperationResult:
    return await _operate(ctx, user, alert_id, AlertAction.ACKNOWLEDGE, comment=body.comment)


@router.post("/alerts/{alert_id}/comment", response_model=OperationResult, responses=OPS,
             summary="Add a comment to the alert's history (operator)")
async def comment(alert_id: str, body: CommentRequest, user: Operator,
                  ctx: Ctx) -> OperationResult:
    return await _operate(ctx, user, alert_id, AlertAction.COMMENT, comment=body.comment)


@router.post("/alerts/{alert_id}/shelve", response_model=OperationResult, responses=OPS,
             summary="Shelve for a while, with a reason; it returns by itself (operator)")
async def shelve(alert_id: str, body: ShelveRequest, user: Operator,
                 ctx: Ctx) -> OperationResult:
    until = time.time_ns() + round(body.minutes * 60e9)
    return await _operate(ctx, user, alert_id, AlertAction.SHELVE, comment=body.comment,
                          until=until)


@router.post("/alerts/{alert_id}/unshelve", response_model=OperationResult, responses=OPS,
             summary="Unshelve (operator)")
async def unshelve(alert_id: str, body: AckRequest, user: Operator,
                   ctx: Ctx) -> OperationResult:
    return await _operate(ctx, user, alert_id, AlertAction.UNSHELVE, comment=body.comment)


@router.post("/alerts/{alert_id}/out-of-service", response_model=OperationResult,
             responses=OPS, summary="Take out of service, e.g. for repair (supervisor)")
async def out_of_service(alert_id: str, body: ServiceRequest, user: Supervisor,
                         ctx: Ctx) -> OperationResult:
    return await _operate(ctx, user, alert_id, AlertAction.OUT_OF_SERVICE,
                          comment=body.comment)


@router.post("/alerts/{alert_id}/return-to-service", response_model=OperationResult,
             responses=OPS, summary="Return to service (supervisor)")
async def return_to_service(alert_id: str, body: AckRequest, user: Supervisor,
                            ctx: Ctx) -> OperationResult:
    return await _operate(ctx, user, alert_id, AlertAction.RETURN_TO_SERVICE,
                          comment=body.comment)


@router.get("/incidents", response_model=list[IncidentView], responses=problems(401),
            summary="Incidents (related alerts grouped), newest first")
async def incidents(_: CurrentUser, ctx: Ctx,
                    open_only: Annotated[bool, Query(alias="open")] = True,
                    since: Annotated[IsoTime | None, Query()] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[IncidentView]:
    found = await ctx.alerts.incidents(ctx.site_id, open_only=open_only, since=to_ns(since),
                                       limit=limit)
    return [incident_view(i) for i in found]


@router.get("/incidents/{incident_id}", response_model=IncidentDetail,
            responses=problems(401, 404), summary="One incident with its alerts")
async def incident(incident_id: str, _: CurrentUser, ctx: Ctx) -> IncidentDetail:
    found = await ctx.alerts.incident(incident_id)
    if found is None or found.site != ctx.site_id:
        raise HTTPException(404, f"no incident {incident_id!r}")
    members = [a for a in await ctx.alerts.alerts(ctx.site_id, incident=incident_id,
                                                   limit=1000)]
    caps = await ctx.alerts.cap_documents(incident_id)
    return IncidentDetail(**incident_view(found).model_dump(),
                          alerts=[alert_view(a) for a in members], cap_documents=len(caps))

