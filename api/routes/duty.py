"""The duty roster, notifications sent and repair work orders, for the control room.

Reads come from the duty service's store (duty.store, as the alert routes read the rules
engine's); work-order changes go to the running duty service (it alone knows whether a
device is still faulty) with the service key, in the logged-in user's name, and the
service audits them; handovers are written here, audited in the same transaction."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import aiohttp
from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, Field

from api.deps import Ctx, CurrentUser, IsoTime, Operator, problems
from duty.config import DutySettings
from duty.store import DutyStore
from duty.workorders import WorkOrder
from facility import labels

router = APIRouter(prefix="/api", tags=["duty and work orders"])
Id = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class OnDuty(BaseModel):
    team: str
    name: str
    kind: str
    people: list[dict[str, str]]  # id, name


class ShiftView(BaseModel):
    uid: str
    team: str
    person: str
    name: str  # the person's name
    start: datetime
    end: datetime
    kind: str
    replaces: str


class NoticeView(BaseModel):
    incident: str
    person: str
    name: str  # the person's name
    event: str
    step: int
    ts_ns: int
    first: bool
    title: str
    text: str
    channel: str  # '' when no channel took it
    delivered_ns: int


class AttemptView(BaseModel):
    incident: str
    person: str
    event: str
    channel: str
    n: int
    ts_ns: int
    ok: bool
    retryable: bool
    detail: str


class HandoverRequest(BaseModel):
    team: str = Field(default="control_room", max_length=64)
    incoming: str = Field(min_length=1, max_length=64, description="the incoming person")
    notes: list[Annotated[str, Field(max_length=2000)]] = Field(default=[], max_length=50)


class HandoverView(BaseModel):
    id: int
    team: str
    outgoing: str
    incoming: str
    ts_ns: int
    items: dict[str, Any]
    acked_by: str
    acked_ns: int


class WorkOrderView(BaseModel):
    id: str
    kind: str
    number: str
    device: str
    place: str
    family: str
    fault: str
    priority: int
    team: str
    state: str
    assignee: str
    opened_at: float
    due_at: float
    resolved_at: float
    verified_at: float
    sla_breached: bool
    alerts: list[str]
    timeline: list[dict[str, Any]]


class WorkOrderRequest(BaseModel):
    kind: Literal["request", "hotline"] = "request"
    number: str = Field(default="", max_length=64, description="the 12345 ticket number")
    device: str = Field(default="", max_length=64)
    place: str = Field(default="", max_length=64)
    family: str = Field(default="", max_length=32)
    fault: str = Field(min_length=1, max_length=2000)
    priority: int = Field(default=3, ge=1, le=4)
    team: str = Field(default="repair", max_length=64)


class WorkOrderAction(BaseModel):
    assignee: str = Field(default="", max_length=64)
    note: str = Field(default="", max_length=2000)


def _aware(value: datetime | None) -> datetime | None:
    """Naive query times are UTC, as everywhere in this API."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@asynccontextmanager
async def _store(ctx: Ctx) -> AsyncIterator[DutyStore]:
    try:
        store = await DutyStore.open(ctx.settings.state_url, ctx.site_id)
    except OSError as exc:
        raise HTTPException(503, f"the state store is not available: {exc}") from None
    try:
        yield store
    finally:
        await store.close()


@router.get("/duty/labels", response_model=dict[str, dict[str, str]],
            responses=problems(401),
            summary="The duty words of the label table (facility/labels.py), for the page")
async def duty_labels(_: CurrentUser) -> dict[str, dict[str, str]]:
    return {"event": dict(labels.DUTY_EVENT), "workorder_state": dict(labels.WORKORDER_STATE),
            "workorder_kind": dict(labels.WORKORDER_KIND),
            "priority": dict(labels.WORKORDER_PRIORITY), "team_kind": dict(labels.TEAM_KIND),
            "channel": dict(labels.CHANNEL), "family": {str(k): v for k, v in
                                                         labels.FAMILY.items()}}


@router.get("/duty/now", response_model=list[OnDuty], responses=problems(401),
            summary="Who is on duty now (or at `at`), per team")
async def on_duty(_: CurrentUser, ctx: Ctx,
                  at: Annotated[IsoTime | None, Query()] = None) -> list[OnDuty]:
    moment = _aware(at) or datetime.now(UTC)
    async with _store(ctx) as store:
        roster = await store.roster()
    return [OnDuty(team=t.id, name=t.name, kind=t.kind,
                   people=[{"id": p.id, "name": p.name} for p in roster.on_duty(t.id, moment)])
            for t in roster.teams.values()]


@router.get("/duty/shifts", response_model=list[ShiftView], responses=problems(401),
            summary="The roster's shifts overlapping [since, until)")
async def shifts(_: CurrentUser, ctx: Ctx, since: Annotated[IsoTime | None, Query()] = None,
                 until: Annotated[IsoTime | None, Query()] = None,
                 team: Annotated[str | None, Query(max_length=64)] = None) -> list[ShiftView]:
    since, until = _aware(since), _aware(until)
    async with _store(ctx) as store:
        roster = await store.roster()
    names = {p.id: p.name for p in roster.people.values()}
    return [ShiftView(uid=s.uid, team=s.team, person=s.person,
                      name=names.get(s.person, s.person), start=s.start, end=s.end,
                      kind=s.kind, replaces=s.replaces)
            for s in roster.shifts
            if (since is None or s.end > since) and (until is None or s.start < until)
            and (team is None or s.team == team)][:2000]


@router.get("/duty/notifications", response_model=list[NoticeView], responses=problems(401),
            summary="Notifications sent, newest first (one per incident, person and change)")
async def notifications(_: CurrentUser, ctx: Ctx,
                        incident: Annotated[str, Query(max_length=64)] = "",
                        limit: Annotated[int, Query(ge=1, le=2000)] = 200) -> list[NoticeView]:
    async with _store(ctx) as store:
        rows = await store.notices(incident, limit=limit)
        names = {p.id: p.name for p in (await store.roster()).people.values()}
    return [NoticeView(**{k: r[k] for k in NoticeView.model_fields if k != "name"},
                       name=names.get(r["person"], r["person"])) for r in rows]


@router.get("/duty/attempts", response_model=list[AttemptView], responses=problems(401),
            summary="Every delivery attempt of an incident's notifications")
async def attempts(_: CurrentUser, ctx: Ctx,
                   incident: Annotated[str, Query(min_length=1, max_length=64)]
                   ) -> list[AttemptView]:
    async with _store(ctx) as store:
        rows = await store.attempts(incident)
    return [AttemptView(**{k: r[k] for k in AttemptView.model_fields}) for r in rows]


@router.get("/duty/handovers", response_model=list[HandoverView], responses=problems(401),
            summary="Shift handovers, newest first")
async def handovers(_: CurrentUser, ctx: Ctx) -> list[HandoverView]:
    async with _store(ctx) as store:
        rows = await store.handovers()
    return [HandoverView(**{k: r[k] for k in HandoverView.model_fields}) for r in rows]


@router.post("/duty/handovers", response_model=HandoverView,
             responses=problems(401, 403), summary="Hand the shift over (operator): the "
             "open incidents and work orders are listed with the notes")
async def handover(body: HandoverRequest, user: Operator, ctx: Ctx) -> HandoverView:
    async with _store(ctx) as store:
        items = await store.handover_items(body.notes)
        number = await store.add_handover(body.team, user.username, body.incoming, items,
                                          time.time())
        [row] = await store.handovers(number=number)
    return HandoverView(**{k: row[k] for k in HandoverView.model_fields})


@router.post("/duty/handovers/{number}/ack", response_model=HandoverView,
             responses=problems(401, 403, 409),
             summary="The incoming person confirms the handover (recorded once)")
async def handover_ack(number: Annotated[int, Path(ge=1, le=2**31)], user: Operator,
                       ctx: Ctx) -> HandoverView:
    async with _store(ctx) as store:
        if not await store.ack_handover(number, user.username, time.time()):
            raise HTTPException(409, "no open handover with this number")
        [row] = await store.handovers(number=number)
    return HandoverView(**{k: row[k] for k in HandoverView.model_fields})


@router.get("/workorders", response_model=list[WorkOrderView], responses=problems(401),
            summary="Repair work orders: open ones by default, with their timeline")
async def workorders(_: CurrentUser, ctx: Ctx,
                     open_only: Annotated[bool, Query(alias="open")] = True
                     ) -> list[WorkOrderView]:
    async with _store(ctx) as store:
        found = await store.orders(("open", "assigned", "in_progress", "resolved")
                                   if open_only else ())
    return [_view(o) for o in found]


def _view(order: WorkOrder | dict[str, Any]) -> WorkOrderView:
    data = order if isinstance(order, dict) else {k: getattr(order, k)
                                                  for k in WorkOrderView.model_fields}
    return WorkOrderView(**{k: data[k] for k in WorkOrderView.model_fields})


async def _forward(path: str, body: dict[str, Any]) -> WorkOrderView:
    options = DutySettings()
    if options.secret is None:
        # Not a failure of a dependency but how this API is set up: no duty service here.
        raise HTTPException(409, "no duty service is configured for this API "
                                 "(FACILITY_DUTY_SECRET, FACILITY_DUTY_PORT)")
    url = f"http://{options.host}:{options.port}{path}"
    try:
        async with aiohttp.ClientSession() as session, session.post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=10),
                headers={"Authorization": f"Bearer {options.secret.get_secret_value()}"}
        ) as resp:
            reply = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise HTTPException(503, f"the duty service does not answer: {exc}") from None
    if resp.status == 409:
        raise HTTPException(409, str(reply.get("detail", "")))
    if resp.status != 200:
        raise HTTPException(503, f"the duty service answered {resp.status}")
    return _view(reply)


@router.post("/workorders", response_model=WorkOrderView,
             responses=problems(401, 403, 409, 503),
             summary="Open a work order: an operator's request or a 12345 hotline ticket")
async def open_workorder(body: WorkOrderRequest, user: Operator) -> WorkOrderView:
    if body.kind == "hotline" and not body.number.strip():
        raise HTTPException(409, "a hotline ticket needs its 12345 number")
    return await _forward("/workorders", {**body.model_dump(), "by": user.username})


@router.post("/workorders/{order_id}/{action}", response_model=WorkOrderView,
             responses=problems(401, 403, 409, 503),
             summary="assign (with an assignee), start or resolve a work order; resolving "
                     "a device that is still faulty is refused with the reason")
async def act_on_workorder(order_id: Id, action: Literal["assign", "start", "resolve"],
                           body: WorkOrderAction, user: Operator) -> WorkOrderView:
    return await _forward(f"/workorders/{order_id}/{action}",
                          {**body.model_dump(), "by": user.username})
