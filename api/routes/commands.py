"""Bollard commands: request, approve or reject, follow; and the audit log."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from api.commands import CommandError
from api.deps import Ctx, CurrentUser, IsoTime, Supervisor, problems, to_ns
from api.models import ApprovalRequest, AuditEntry, CommandRequest
from audit.commands import CommandView

router = APIRouter(prefix="/api", tags=["bollard commands"])

WAIT = Annotated[float, Query(ge=0, le=60, description="seconds to wait for the outcome")]


@router.post(
    "/commands", response_model=CommandView, status_code=201,
    responses={200: {"model": CommandView, "description": "This id was used before: the "
                     "first command, unchanged; nothing was sent again"},
               202: {"model": CommandView, "description": "Sent and not finished yet, or "
                     "waiting for a second supervisor's approval"},
               **problems(401, 403, 404, 409, 503)},
    summary="Raise or lower bollards, a group, all; emergency rise. Audited; at most once "
            "per id; lowering all needs a second supervisor")
async def command(body: CommandRequest, user: CurrentUser, ctx: Ctx, response: Response,
                  wait: WAIT = 0) -> CommandView:
    try:
        view, new = await ctx.desk.submit(user, body)
    except CommandError as exc:
        ctx.metrics.commands.labels(body.action, "refused").inc()
        raise HTTPException(exc.status, exc.detail) from None
    if not new:
        response.status_code = 200
        return view
    if wait > 0 and not view.final:
        view = await ctx.desk.wait_final(view.id, wait) or view
    response.status_code = 201 if view.final else 202
    return view


@router.get("/commands", response_model=list[CommandView], responses=problems(401),
            summary="Recent commands, newest first; or only those awaiting approval")
async def commands(_: CurrentUser, ctx: Ctx,
                   hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24,
                   pending: Annotated[bool, Query(description="awaiting approval only")]
                   = False) -> list[CommandView]:
    if pending:
        now = time.time_ns()
        return [v for v in await ctx.desk.pending_approvals()
                if v.approval.expires_at >= now]
    return await ctx.desk.recent(time.time_ns() - round(hours * 3600e9))


@router.get("/commands/{command_id}", response_model=CommandView,
            responses=problems(401, 404), summary="One command: approval, per-bollard results")
async def one_command(command_id: str, _: CurrentUser, ctx: Ctx, wait: WAIT = 0
                      ) -> CommandView:
    view = await (ctx.desk.wait_final(command_id, wait) if wait else ctx.desk.view(command_id))
    if view is None:
        raise HTTPException(404, f"no command {command_id!r}")
    return view


async def _decide(ctx: Ctx, user: CurrentUser, command_id: str, approve: bool,
                  comment: str) -> CommandView:
    try:
        return await ctx.desk.decide(user, command_id, approve, comment)
    except CommandError as exc:
        raise HTTPException(exc.status, exc.detail) from None


@router.post("/commands/{command_id}/approve", response_model=CommandView,
             responses=problems(401, 403, 404, 409, 503),
             summary="Approve as the second supervisor (not the requester); sends it")
async def approve(command_id: str, body: ApprovalRequest, user: CurrentUser,
                  ctx: Ctx) -> CommandView:
    return await _decide(ctx, user, command_id, True, body.comment)


@router.post("/commands/{command_id}/reject", response_model=CommandView,
             responses=problems(401, 403, 404, 409, 503),
             summary="Reject (a supervisor) or withdraw (the requester)")
async def reject(command_id: str, body: ApprovalRequest, user: CurrentUser,
                 ctx: Ctx) -> CommandView:
    return await _decide(ctx, user, command_id, False, body.comment)


@router.get("/audit", response_model=list[AuditEntry], responses=problems(401, 403),
            summary="The audit log, newest first (supervisor)")
async def audit(_: Supervisor, ctx: Ctx,
                since: Annotated[IsoTime | None, Query()] = None,
                until: Annotated[IsoTime | None, Query()] = None,
                user: Annotated[str | None, Query(max_length=64)] = None,
                command: Annotated[str | None, Query(max_length=64)] = None,
                limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> list[AuditEntry]:
    rows = await ctx.store.rows(ctx.site_id, command=command, since=to_ns(since),
                                until=to_ns(until), username=user, limit=limit,
                                newest_first=True)
    return [AuditEntry(seq=r.seq, ts=r.ts, command=r.command, event=r.event,
                       username=r.username, role=r.role, action=r.action, targets=r.targets,
                       reason=r.reason, approved_by=r.approved_by, outcome=r.outcome,
                       detail=r.detail) for r in rows]
