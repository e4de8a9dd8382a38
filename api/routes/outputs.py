"""LED screens, information terminals and PA zones: what they show and manual messages."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from api.commands import CommandError
from api.deps import Ctx, CurrentUser, Operator, problems
from api.models import BroadcastRequest, BroadcastView, DisplayMessageRequest, DisplayView

router = APIRouter(prefix="/api", tags=["displays and PA"])


def _http(exc: CommandError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


@router.get("/displays", response_model=list[DisplayView], responses=problems(401),
            summary="Every screen, terminal and PA zone: what it shows now and whether it "
                    "confirmed it")
async def displays(_: CurrentUser, ctx: Ctx) -> list[DisplayView]:
    return await ctx.outputs.displays()


async def _display(ctx: Ctx, display_id: str) -> DisplayView:
    for view in await ctx.outputs.displays():
        if view.id == display_id:
            return view
    raise HTTPException(404, f"no display {display_id!r}")


@router.put("/displays/{display_id}/message", response_model=DisplayView,
            responses=problems(401, 403, 404, 409, 503, 504),
            summary="Show a manual message with a priority (1-2: supervisor); more urgent "
                    "messages pre-empt it, less urgent ones wait")
async def set_message(display_id: str, body: DisplayMessageRequest, user: Operator,
                      ctx: Ctx) -> DisplayView:
    try:
        await ctx.outputs.set_message(user, display_id, body.text, body.priority)
    except CommandError as exc:
        raise _http(exc) from None
    return await _display(ctx, display_id)


@router.delete("/displays/{display_id}/message", response_model=DisplayView,
               responses=problems(401, 403, 404, 409, 503, 504),
               summary="Withdraw the manual message: the screen shows what ranks next")
async def withdraw_message(display_id: str, user: Operator, ctx: Ctx) -> DisplayView:
    try:
        await ctx.outputs.set_message(user, display_id, None)
    except CommandError as exc:
        raise _http(exc) from None
    return await _display(ctx, display_id)


@router.post("/broadcasts", response_model=BroadcastView, status_code=201,
             responses=problems(401, 403, 404, 409, 503),
             summary="A manual PA announcement to chosen zones (priority 1-2: supervisor)")
async def broadcast(body: BroadcastRequest, user: Operator, ctx: Ctx) -> BroadcastView:
    try:
        return await ctx.outputs.broadcast(user, body)
    except CommandError as exc:
        raise _http(exc) from None


@router.get("/broadcasts", response_model=list[BroadcastView], responses=problems(401),
            summary="Manual PA announcements and which zones confirmed them")
async def broadcasts(_: CurrentUser, ctx: Ctx,
                     hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24
                     ) -> list[BroadcastView]:
    return await ctx.outputs.broadcasts(time.time_ns() - round(hours * 3600e9))
