"""Commands to the OCPP chargers (csms/), the bollards' way: roles, zones, a reason, an id
the client chooses (a repeated id returns the first command and sends nothing), and the
audit log (a row before anything is published; the central system's results, the charge
point's own answer or a timeout, are appended by the command desk as they come).

The API never imports the central system: a `Command` (family ev_charger) goes out on
`command/ev_charger/{device}` and the `CommandResult`s come back on command-result/...,
like the gateway's bollard commands. Starting, stopping, unlocking, triggering a message
and reading the configuration are an operator's; availability, resets and configuration
changes a supervisor's."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import Field

from api.auth import Role, User
from api.deps import Ctx, CurrentUser, problems
from api.link import LinkDown
from api.models import CommandBase
from audit.commands import CommandView, fold
from audit.log import AlreadyRecorded, AuditError, AuditRow
from facility import messages as m
from facility import topics
from facility.site import GatewayKind

router = APIRouter(prefix="/api/chargers", tags=["EV chargers (OCPP)"])
NS = 1_000_000_000

ChargerAction = Literal["remote_start_transaction", "remote_stop_transaction",
                        "unlock_connector", "change_availability", "reset",
                        "trigger_message", "get_configuration", "change_configuration"]
ROLE: dict[str, Role] = {
    "remote_start_transaction": Role.OPERATOR, "remote_stop_transaction": Role.OPERATOR,
    "unlock_connector": Role.OPERATOR, "trigger_message": Role.OPERATOR,
    "get_configuration": Role.OPERATOR, "change_availability": Role.SUPERVISOR,
    "reset": Role.SUPERVISOR, "change_configuration": Role.SUPERVISOR}
WAIT = Annotated[float, Query(ge=0, le=60, description="seconds to wait for the outcome")]


class ChargerCommand(CommandBase):
    """One OCPP 1.6 command to one charge point; the parameters its action takes."""

    action: ChargerAction
    connector: int | None = Field(default=None, ge=0, le=16,
                                  description="connector (0: the whole charge point)")
    type: Literal["soft", "hard", "operative", "inoperative"] | None = Field(
        default=None, description="reset: soft or hard; change_availability: operative or "
                                  "inoperative")
    id_tag: str | None = Field(default=None, min_length=1, max_length=20,
                               description="remote start: the card (default: the control "
                                           "room's)")
    transaction_id: int | None = Field(default=None, ge=0,
                                       description="remote stop (default: the connector's)")
    message: str | None = Field(default=None, pattern=r"^[A-Za-z]{1,40}$",
                                description="trigger_message: e.g. StatusNotification")
    key: str | None = Field(default=None, min_length=1, max_length=500,
                            description="configuration key (get: comma-separated keys)")
    value: str | None = Field(default=None, max_length=500,
                              description="change_configuration: the new value")

    def params(self) -> dict[str, m.Scalar]:
        fields = ("connector", "type", "id_tag", "transaction_id", "message", "key", "value")
        return {f: v for f in fields if (v := getattr(self, f)) is not None}


def _charger(ctx: Ctx, device: str) -> str:
    """The charger's zone, or 404 for anything that is not an OCPP charger of the site."""
    source = ctx.topology.sources.get(device)
    if source is None or source.family != m.Family.EV_CHARGER.value:
        raise HTTPException(404, f"{device!r} is not an EV charger of this site")
    try:
        kind = ctx.site.gateway(source.gateway).kind
    except KeyError:
        kind = None
    if kind is not GatewayKind.OCPP:
        raise HTTPException(404, f"{device!r} does not speak OCPP to the platform")
    return source.zone


async def _refused(ctx: Ctx, user: User, body: ChargerCommand, device: str, why: str) -> None:
    with contextlib.suppress(AuditError, AlreadyRecorded):
        await ctx.store.append(site=ctx.site_id, command=body.id, event="refused",
                               username=user.username, role=user.role.value,
                               action=body.action, targets=[device], reason=body.reason,
                               outcome="refused", detail=why)


@router.post(
    "/{device}/commands", response_model=CommandView, status_code=201,
    responses={200: {"model": CommandView, "description": "This id was used before: the "
                     "first command, unchanged; nothing was sent again"},
               202: {"model": CommandView, "description": "Sent; no final answer yet"},
               **problems(401, 403, 404, 409, 503)},
    summary="Remote start/stop, unlock, availability, reset, trigger, configuration: to "
            "one OCPP charger, audited, at most once per id; the charger's answer is the "
            "result")
async def charger_command(device: str, body: ChargerCommand, user: CurrentUser, ctx: Ctx,
                          response: Response, wait: WAIT = 0) -> CommandView:
    try:
        zone = _charger(ctx, device)
    except HTTPException as exc:
        await _refused(ctx, user, body, device, str(exc.detail))
        raise
    need = ROLE[body.action]
    why = ""
    if not user.role.at_least(need):
        why = f"{body.action} needs the {need.value} role (you are {user.role.value})"
    elif not user.in_zones([zone]):
        why = f"you may not command in zone {zone}"
    if why:
        await _refused(ctx, user, body, device, why)
        raise HTTPException(403, why)
    now = time.time_ns()
    expires = now + round(ctx.settings.api.command_validity * NS)
    params = body.params()
    data: dict[str, object] = {"zones": [zone], "approval_required": False, "issued_at": now,
                               "expires_at": expires, "gateway_ids": [body.id],
                               "params": params}
    try:
        await ctx.store.append(site=ctx.site_id, command=body.id, event="requested",
                               username=user.username, role=user.role.value,
                               action=body.action, targets=[device], reason=body.reason,
                               data=data, once="requested", ts=now)
    except AlreadyRecorded:
        view = await ctx.desk.view(body.id)
        assert view is not None
        if (view.action, view.targets, view.reason, view.requested_by) != \
                (body.action, [device], body.reason, user.username):
            raise HTTPException(409, f"command id {body.id!r} was already used for another "
                                     "command") from None
        response.status_code = 200
        return view
    except AuditError:
        raise HTTPException(503, "the audit log cannot be written, so the command is "
                                 "refused (nothing was sent)") from None
    command = m.Command(id=body.id, site=ctx.site_id, family=m.Family.EV_CHARGER,
                        device=device, action=body.action, issued_at=now, expires_at=expires,
                        issued_by=user.username, reason=body.reason, params=params)
    try:
        await ctx.link.publish(topics.command(ctx.site_id, m.Family.EV_CHARGER, device),
                               m.encode(command))
    except LinkDown as exc:
        with contextlib.suppress(AuditError, AlreadyRecorded):
            await ctx.store.append(site=ctx.site_id, command=body.id, event="send_failed",
                                   username=user.username, action=body.action,
                                   targets=[device], outcome="failed", detail=str(exc),
                                   once="send_failed")
        raise HTTPException(503, f"not sent: {exc}. It is recorded as failed; to try again, "
                                 "send it with a new id") from None
    # The desk's sweep records `no_result` if the central system never answers.
    ctx.desk.await_result(body.id, expires)
    view = await ctx.desk.view(body.id)
    assert view is not None
    ctx.command_changed(view)
    if wait > 0 and not view.final:
        view = await ctx.desk.wait_final(body.id, wait) or view
    response.status_code = 201 if view.final else 202
    return view


@router.get("/commands", response_model=list[CommandView], responses=problems(401),
            summary="Recent charger commands, newest first, with the chargers' answers")
async def charger_commands(_: CurrentUser, ctx: Ctx,
                           hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24
                           ) -> list[CommandView]:
    rows = await ctx.store.rows(ctx.site_id, since=time.time_ns() - round(hours * 3600 * NS),
                                limit=20_000)
    by_command: dict[str, list[AuditRow]] = {}
    for row in rows:
        if row.action in ROLE:
            by_command.setdefault(row.command, []).append(row)
    now = time.time_ns()
    views = [v for c, rs in by_command.items() if (v := fold(c, rs, now)) is not None]
    return sorted(views, key=lambda v: v.requested_at, reverse=True)[:200]
