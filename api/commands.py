"""Bollard commands, the safe way: authorised, audited, approved where needed, at most once.

1. Who: a viewer commands nothing; an operator only in the zones granted to them; lowering
   all bollards (or more than `api.lower_without_approval` of them) is requested by a
   supervisor and approved by a second, different supervisor within
   `api.approval_timeout`. An emergency rise never waits for anybody, and it cancels
   lowering requests still waiting for approval.
2. Audit first: every attempt, allowed or refused, is a row in the append-only audit log
   (audit/log.py). The request row is written before anything is published; if it cannot
   be written the command is refused and nothing moves.
3. At most once: the request row claims the command id (a unique key). A repeated id
   returns the first command and publishes nothing; the gateway also executes an id at
   most once, so a redelivered MQTT message cannot move a bollard twice.
4. The gateway writes the PLC and confirms through the feedback registers; its results
   (accepted, then done, refused, failed, timed_out, expired) are appended to the audit
   log and sent to the live stream. A target with no result long after its validity is
   recorded as `no_result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from api.auth import Role, User
from api.link import ApiLink, LinkDown
from api.models import BollardCommand, GateCommand
from api.store import ApiStore
from audit.commands import FINAL, CommandView, fold
from audit.log import AlreadyRecorded, AuditError, AuditRow
from facility import messages as m
from facility import topics
from facility.settings import ApiSettings
from facility.topology import Topology

log = logging.getLogger(__name__)
NS = 1_000_000_000


@dataclass(frozen=True)
class ActionSpec:
    scope: str  # unit (the bollards named) or controller (the PLC)
    role: Role  # the least role that may request it
    approval: bool = False  # always needs a second supervisor
    lowers: bool = False  # counts toward lower_without_approval


ACTIONS = {
    "raise": ActionSpec("unit", Role.OPERATOR),
    "lower": ActionSpec("unit", Role.OPERATOR, lowers=True),
    "raise_all": ActionSpec("controller", Role.OPERATOR),
    "lower_all": ActionSpec("controller", Role.SUPERVISOR, approval=True, lowers=True),
    "emergency_rise": ActionSpec("controller", Role.OPERATOR),
    "reset_faults": ActionSpec("controller", Role.OPERATOR),
}


class CommandError(Exception):
    """A command that is not carried out; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Plan:
    action: str
    targets: list[str]  # device ids the gateway gets one Command each for
    zones: list[str]
    approval: bool


class CommandDesk:
    def __init__(self, settings: ApiSettings, site_id: str, topology: Topology,
                 store: ApiStore, link: ApiLink,
                 notify: Callable[[CommandView], None],
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.settings = settings
        self.site_id = site_id
        self.topology = topology
        self.store = store
        self.link = link
        self.notify = notify
        self.clock_ns = clock_ns
        self.controllers = sorted({s.parent for s in topology.sources.values()
                                   if s.family == m.Family.BOLLARD.value
                                   and s.tags.get("controller")})
        self._changed = asyncio.Condition()
        self._results: asyncio.Queue[m.CommandResult] = asyncio.Queue(10_000)
        self._inflight: dict[str, int] = {}  # command id -> when to give up on its results

    # --- planning and authorisation ---------------------------------------------------

    def plan(self, request: BollardCommand | GateCommand) -> Plan:
        spec = ACTIONS[request.action]
        if isinstance(request, BollardCommand):
            targets = sorted(request.bollards)
            for device in targets:
                source = self.topology.sources.get(device)
                if source is None or source.family != m.Family.BOLLARD.value \
                        or not source.tags.get("controller"):
                    raise CommandError(404, f"{device!r} is not a bollard of this site")
        else:
            controller = request.controller
            if controller is None:
                if len(self.controllers) != 1:
                    raise CommandError(404, "name the controller: "
                                            f"{', '.join(self.controllers) or 'none here'}")
                controller = self.controllers[0]
            if controller not in self.controllers:
                raise CommandError(404, f"{controller!r} is not a bollard controller here")
            targets = [controller]
        zones = sorted({self.topology.sources[t].zone for t in targets})
        approval = spec.approval or (spec.lowers and spec.scope == "unit"
                                     and len(targets) > self.settings.lower_without_approval)
        return Plan(request.action, targets, zones, approval)

    def _allowed(self, user: User, plan: Plan) -> str:
        """Why the user may not request it, or ''."""
        spec = ACTIONS[plan.action]
        need = Role.SUPERVISOR if plan.approval else spec.role
        if not user.role.at_least(need):
            return f"{plan.action} needs the {need.value} role (you are {user.role.value})"
        if not user.in_zones(plan.zones):
            return f"you may not command in zone {', '.join(plan.zones)}"
        return ""

    # --- requests ---------------------------------------------------------------------

    async def submit(self, user: User,
                     request: BollardCommand | GateCommand) -> tuple[CommandView, bool]:
        """The command's view and whether it is new (False: the id was used before)."""
        try:
            plan = self.plan(request)
        except CommandError as exc:
            await self._refused(user, request, [], exc.detail)
            raise
        why = self._allowed(user, plan)
        if why:
            await self._refused(user, request, plan.targets, why)
            raise CommandError(403, why)
        now = self.clock_ns()
        data = {"zones": plan.zones, "approval_required": plan.approval}
        if plan.approval:
            data["approval_expires_at"] = now + round(self.settings.approval_timeout * NS)
        else:
            data.update(self._issue(now, plan.targets, request.id))
        try:
            await self.store.append(site=self.site_id, command=request.id, event="requested",
                                    username=user.username, role=user.role.value,
                                    action=plan.action, targets=plan.targets,
                                    reason=request.reason, data=data, once="requested", ts=now)
        except AlreadyRecorded:
            view = await self.view(request.id)
            assert view is not None
            same = (view.action, view.targets, view.reason, view.requested_by) == \
                (plan.action, plan.targets, request.reason, user.username)
            if not same:
                raise CommandError(409, f"command id {request.id!r} was already used for "
                                        "another command") from None
            return view, False
        except AuditError as exc:
            log.error("command %s refused: %s", request.id, exc)
            raise CommandError(503, "the audit log cannot be written, so the command is "
                                    "refused (nothing was sent)") from None
        if plan.action == "emergency_rise":
            await self._supersede_lowering(user, request.id)
        if not plan.approval:
            await self._send(request.id, plan.action, plan.targets, user.username, "",
                             request.reason, data)
        view = await self.view(request.id)
        assert view is not None
        self.notify(view)
        return view, True

    def _issue(self, now: int, targets: list[str], command_id: str) -> dict[str, object]:
        expires = now + round(self.settings.command_validity * NS)
        ids = [command_id] if len(targets) == 1 else [f"{command_id}.{t}" for t in targets]
        return {"issued_at": now, "expires_at": expires, "gateway_ids": ids}

    async def _refused(self, user: User, request: BollardCommand | GateCommand,
                       targets: list[str], why: str) -> None:
        if not targets:
            targets = sorted(request.bollards) if isinstance(request, BollardCommand) \
                else [request.controller] if request.controller else []
        try:
            await self.store.append(site=self.site_id, command=request.id, event="refused",
                                    username=user.username, role=user.role.value,
                                    action=request.action, targets=targets,
                                    reason=request.reason, outcome="refused", detail=why)
        except AuditError as exc:
            log.error("refused command %s by %s not audited: %s", request.id, user.username,
                      exc)

    async def _send(self, command_id: str, action: str, targets: list[str], by: str,
                    approved_by: str, reason: str, data: dict[str, object]) -> None:
        issued, expires, ids = data["issued_at"], data["expires_at"], data["gateway_ids"]
        assert isinstance(issued, int)
        assert isinstance(expires, int)
        assert isinstance(ids, list)
        try:
            for gateway_id, device in zip(ids, targets, strict=True):
                source = self.topology.sources[device]
                command = m.Command(id=gateway_id, site=self.site_id,
                                    family=m.Family(source.family), device=device,
                                    action=action, issued_at=issued, expires_at=expires,
                                    issued_by=by, approved_by=approved_by, reason=reason)
                await self.link.publish(topics.command(self.site_id, source.family, device),
                                        m.encode(command))
        except LinkDown as exc:
            with contextlib.suppress(AuditError, AlreadyRecorded):
                await self.store.append(site=self.site_id, command=command_id,
                                        event="send_failed", username=by, action=action,
                                        targets=targets, outcome="failed", detail=str(exc),
                                        once="send_failed")
            log.error("command %s not sent: %s", command_id, exc)
            view = await self.view(command_id)
            if view is not None:
                self.notify(view)
            raise CommandError(503, f"not sent: {exc}. It is recorded as failed; to try "
                                    "again, send it with a new id") from None
        self.await_result(command_id, expires)
        log.info("command %s %s %s sent (by %s%s)", command_id, action, ",".join(targets), by,
                 f", approved by {approved_by}" if approved_by else "")

    def await_result(self, command_id: str, expires: int) -> None:
        """A command is sent: the sweep records `no_result` if nothing answers by its expiry
        plus the result timeout (for the desk's own commands and the chargers' route)."""
        self._inflight[command_id] = expires + round(self.settings.result_timeout * NS)

    # --- approvals --------------------------------------------------------------------

    async def decide(self, user: User, command_id: str, approve: bool,
                     comment: str = "") -> CommandView:
        rows = await self._rows(command_id)
        view = fold(command_id, rows)
        if view is None:
            raise CommandError(404, f"no command {command_id!r}")
        if not view.approval.required:
            raise CommandError(409, "this command needs no approval")
        event = "approved" if approve else "rejected"
        why = ""
        requester = view.requested_by
        if approve and user.username == requester:
            why = "you cannot approve your own request; a second supervisor must"
        elif approve and not user.role.at_least(Role.SUPERVISOR):
            why = "approving needs the supervisor role"
        elif not approve and user.username != requester \
                and not user.role.at_least(Role.SUPERVISOR):
            why = "only the requester or a supervisor may reject it"
        elif not user.in_zones(view.zones):
            why = f"you may not command in zone {', '.join(view.zones)}"
        if why:
            with contextlib.suppress(AuditError):
                await self.store.append(site=self.site_id, command=command_id,
                                        event=f"{event}_refused", username=user.username,
                                        role=user.role.value, action=view.action,
                                        targets=view.targets, outcome="refused", detail=why)
            raise CommandError(403, why)
        if view.approval.decision:
            raise CommandError(409, f"already decided: {view.approval.decision} by "
                                    f"{view.approval.decided_by}")
        now = self.clock_ns()
        if now > view.approval.expires_at:
            await self._expire(view, now)
            raise CommandError(409, "the time to approve has run out; request it again")
        data: dict[str, object] = {"comment": comment}
        if approve:
            data.update(self._issue(now, view.targets, command_id))
        try:
            await self.store.append(site=self.site_id, command=command_id, event=event,
                                    username=user.username, role=user.role.value,
                                    action=view.action, targets=view.targets,
                                    approved_by=user.username if approve else "",
                                    outcome=event, detail=comment, data=data, once="decision",
                                    ts=now)
        except AlreadyRecorded:
            raise CommandError(409, "another decision was recorded first") from None
        except AuditError as exc:
            log.error("decision on %s refused: %s", command_id, exc)
            raise CommandError(503, "the audit log cannot be written, so nothing was "
                                    "sent") from None
        if approve:
            await self._send(command_id, view.action, view.targets, requester, user.username,
                             view.reason, data)
        result = await self.view(command_id)
        assert result is not None
        self.notify(result)
        return result

    async def _expire(self, view: CommandView, now: int) -> None:
        with contextlib.suppress(AlreadyRecorded):
            await self.store.append(site=self.site_id, command=view.id,
                                    event="approval_expired", username="system",
                                    action=view.action, targets=view.targets,
                                    outcome="approval_expired", once="decision", ts=now)
            expired = await self.view(view.id)
            if expired is not None:
                self.notify(expired)

    async def _supersede_lowering(self, user: User, by_command: str) -> None:
        """An emergency rise cancels lowering that still waits for approval."""
        for view in await self.pending_approvals():
            if ACTIONS[view.action].lowers:
                try:
                    await self.store.append(
                        site=self.site_id, command=view.id, event="superseded",
                        username=user.username, role=user.role.value, action=view.action,
                        targets=view.targets, outcome="superseded",
                        detail=f"emergency rise {by_command}", once="decision")
                except (AlreadyRecorded, AuditError):
                    continue
                done = await self.view(view.id)
                if done is not None:
                    self.notify(done)

    async def pending_approvals(self) -> list[CommandView]:
        """Requests still waiting for a decision (expired ones included until recorded)."""
        since = self.clock_ns() - round((self.settings.approval_timeout + 600) * NS)
        rows = await self.store.rows(self.site_id, since=since, limit=5000)
        by_command: dict[str, list[AuditRow]] = {}
        for row in rows:
            by_command.setdefault(row.command, []).append(row)
        out = []
        for command_id, group in by_command.items():
            view = fold(command_id, group)
            if view is not None and view.status == "awaiting_approval":
                out.append(view)
        return sorted(out, key=lambda v: v.requested_at)

    # --- results ----------------------------------------------------------------------

    def take_result(self, result: m.CommandResult) -> None:
        """From the broker (command-result/bollard/...); recorded by `record_results`."""
        try:
            self._results.put_nowait(result)
        except asyncio.QueueFull:
            log.error("command result %s %s dropped: too many waiting", result.id,
                      result.status.value)

    async def record_results(self) -> None:
        """Append each gateway result to the audit log and tell the stream and waiters."""
        while True:
            result = await self._results.get()
            command_id = result.id
            suffix = f".{result.device}"
            if command_id.endswith(suffix):
                command_id = command_id[:-len(suffix)]
            try:
                await self._record(command_id, result)
            except AuditError as exc:
                log.error("result %s of command %s not audited: %s", result.status.value,
                          command_id, exc)

    async def _record(self, command_id: str, result: m.CommandResult) -> None:
        rows = await self._rows(command_id)
        requested = next((r for r in rows if r.event == "requested"), None)
        if requested is None:
            return  # not a command of this API (another tool, or another site's)
        try:
            await self.store.append(site=self.site_id, command=command_id, event="result",
                                    username="gateway", action=requested.action,
                                    targets=[result.device], outcome=result.status.value,
                                    detail=result.detail, data={"gateway": result.gateway,
                                                                "ts": result.ts},
                                    once=f"result:{result.device}:{result.status.value}")
        except AlreadyRecorded:
            return  # a redelivered result
        view = await self.view(command_id)
        if view is None:
            return
        if view.final:
            self._inflight.pop(command_id, None)
        self.notify(view)
        async with self._changed:
            self._changed.notify_all()

    async def wait_final(self, command_id: str, timeout: float) -> CommandView | None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            view = await self.view(command_id)
            left = deadline - asyncio.get_running_loop().time()
            if view is None or view.final or view.status == "awaiting_approval" or left <= 0:
                return view
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 1.0)):
                        await self._changed.wait()

    async def sweep(self) -> None:
        """Expire approvals that ran out; record targets that never got a result."""
        while True:
            await asyncio.sleep(1.0)
            try:
                now = self.clock_ns()
                for view in await self.pending_approvals():
                    if now > view.approval.expires_at:
                        await self._expire(view, now)
                for command_id, give_up in list(self._inflight.items()):
                    if now > give_up:
                        await self._no_result(command_id)
            except AuditError as exc:
                log.error("command sweep: %s", exc)

    async def _no_result(self, command_id: str) -> None:
        self._inflight.pop(command_id, None)
        view = await self.view(command_id)
        if view is None or view.final:
            return
        for target in view.results:
            if target.status not in FINAL:
                with contextlib.suppress(AlreadyRecorded):
                    await self.store.append(
                        site=self.site_id, command=command_id, event="result",
                        username="system", action=view.action, targets=[target.device],
                        outcome="no_result", detail="no result from the gateway",
                        once=f"result:{target.device}:no_result")
        done = await self.view(command_id)
        if done is not None:
            log.warning("command %s: no result from the gateway for %s", command_id,
                        ", ".join(t.device for t in done.results if t.status == "no_result"))
            self.notify(done)

    # --- reading ----------------------------------------------------------------------

    async def _rows(self, command_id: str) -> list[AuditRow]:
        return await self.store.rows(self.site_id, command=command_id)

    async def view(self, command_id: str) -> CommandView | None:
        return fold(command_id, await self._rows(command_id), self.clock_ns())

    async def recent(self, since: int, limit: int = 200) -> list[CommandView]:
        rows = await self.store.rows(self.site_id, since=since, limit=20_000)
        by_command: dict[str, list[AuditRow]] = {}
        for row in rows:
            by_command.setdefault(row.command, []).append(row)
        now = self.clock_ns()
        views = [fold(c, rs, now) for c, rs in by_command.items()]
        out = [v for v in views if v is not None and v.action in ACTIONS]
        return sorted(out, key=lambda v: v.requested_at, reverse=True)[:limit]
