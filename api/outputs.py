"""LED screens, information terminals and PA zones: what they show, and manual messages.

Screens have one writer, the rules engine: it decides what each screen shows from the
priority of the incidents routed to it, an operator's manual message and the screen's
normal content. A manual message is the rules engine's `show_message` operation with a
priority (1-2, emergencies, need a supervisor): it pre-empts whatever ranks below it and
yields to what ranks above, exactly as automatic messages do; withdrawing it lets the
screen show what ranks next.

PA announcements are one-off: a manual announcement is a Broadcast published to the PA
zones chosen, with the priority given. It is refused where an active incident of higher
priority (a smaller number) is being announced in the zones the PA zone covers, so an
operator cannot talk over an evacuation. Priorities 1-2 (emergency) need a supervisor.
Each zone's confirmation (display-ack) is recorded in the audit log.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from api.auth import Role, User
from api.commands import CommandError
from api.link import ApiLink, LinkDown
from api.models import (
    BroadcastRequest,
    BroadcastView,
    Delivery,
    DisplayView,
    ManualDelivery,
    ShownMessage,
)
from api.store import ApiStore
from audit.log import AlreadyRecorded, AuditError
from facility import messages as m
from facility import topics
from facility.endpoints import Endpoint, EndpointConfig
from facility.ops import NoAnswer
from rules.store import AlertStore

log = logging.getLogger(__name__)
EMERGENCY_PRIORITY = 2  # 1-2: emergencies, as the rules engine routes them
MANUAL_PREFIX = "bcm-"  # manual announcements (the rules engine's are bc-...)


def kind_for(priority: int) -> m.DisplayKind:
    if priority <= EMERGENCY_PRIORITY:
        return m.DisplayKind.EMERGENCY
    return m.DisplayKind.NORMAL if priority >= 9 else m.DisplayKind.ALERT


class OutputDesk:
    def __init__(self, site_id: str, endpoints: EndpointConfig, store: ApiStore,
                 alerts: AlertStore, link: ApiLink) -> None:
        self.site_id = site_id
        self.endpoints = endpoints.by_id()
        self.store = store
        self.alerts = alerts
        self.link = link

    def endpoint(self, endpoint_id: str, *, pa: bool) -> Endpoint:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None or endpoint.is_pa != pa:
            raise CommandError(404, f"no {'PA zone' if pa else 'screen'} {endpoint_id!r}")
        return endpoint

    async def displays(self) -> list[DisplayView]:
        shown = await self.alerts.displays(self.site_id)
        since = time.time_ns() - 7 * 24 * 3600 * 10**9
        deliveries: dict[str, dict[str, Any]] = {}
        for row in await self.alerts.deliveries(self.site_id, since=since):
            deliveries[row["message"]] = row
        out = []
        for endpoint in self.endpoints.values():
            message: dict[str, Any] | None = shown.get(endpoint.id) or None
            delivery = None
            if message:
                found = deliveries.get(str(message.get("id")))
                delivery = _delivery(found) if found is not None else None
            elif endpoint.is_pa:  # a PA zone: its last announcement
                last = [r for r in deliveries.values() if r["endpoint"] == endpoint.id]
                if last:
                    newest = max(last, key=lambda r: r["first_sent"])
                    message = {"id": newest["message"], "kind": "broadcast", "priority": 0,
                               "title": "", "text": newest["text"], "colour": "",
                               "incident": newest["incident"], "alert": "",
                               "ts": newest["first_sent"]}
                    delivery = _delivery(newest)
            out.append(DisplayView(
                id=endpoint.id, name=endpoint.name, kind=endpoint.kind.value,
                zone=endpoint.zone, covers=list(endpoint.covers), place=endpoint.place,
                max_chars=endpoint.max_chars, default_content=endpoint.default_content,
                shown=_shown(message) if message else None, delivery=delivery))
        return out

    # --- screens ----------------------------------------------------------------------

    async def set_message(self, user: User, endpoint_id: str, text: str | None,
                          priority: int = 9) -> str:
        """A manual message on a screen (None: withdraw it). Returns the rules engine's
        state after the operation."""
        endpoint = self.endpoint(endpoint_id, pa=False)
        need = Role.SUPERVISOR if text is not None and priority <= EMERGENCY_PRIORITY \
            else Role.OPERATOR
        self._may(user, endpoint.zones, need)
        event = "display_withdrawn" if text is None else "display_message"
        op_id = f"dm-{uuid.uuid4().hex[:20]}"
        await self._audit(user, op_id, event, [endpoint.id], text or "",
                          data={"priority": priority} if text is not None else None)
        action = m.AlertAction.WITHDRAW_MESSAGE if text is None else m.AlertAction.SHOW_MESSAGE
        try:
            result = await self.link.operate(action, endpoint.id, user.username,
                                             text=text or "", priority=priority,
                                             comment="withdrawn" if text is None else "manual")
        except LinkDown as exc:
            raise CommandError(503, str(exc)) from None
        except NoAnswer as exc:
            raise CommandError(504, str(exc)) from None
        if not result.ok:
            raise CommandError(409, result.detail or "the rules engine refused it")
        return result.state

    # --- PA ---------------------------------------------------------------------------

    async def broadcast(self, user: User, request: BroadcastRequest) -> BroadcastView:
        zones = [self.endpoint(z, pa=True) for z in dict.fromkeys(request.zones)]
        need = Role.SUPERVISOR if request.priority <= EMERGENCY_PRIORITY else Role.OPERATOR
        self._may(user, [z for e in zones for z in e.zones], need)
        await self._check_priority(zones, request.priority)
        kind = kind_for(request.priority)
        broadcast_id = f"{MANUAL_PREFIX}{uuid.uuid4().hex[:20]}"
        now = time.time_ns()
        await self._audit(user, broadcast_id, "broadcast", [e.id for e in zones], request.text,
                          data={"priority": request.priority, "kind": kind.value,
                                "repeat": request.repeat})
        sent: list[str] = []
        for endpoint in zones:
            message = m.Broadcast(id=f"{broadcast_id}-{endpoint.id}"[:64], site=self.site_id,
                                  zone=endpoint.id, ts=now, kind=kind,
                                  priority=request.priority, text=request.text,
                                  repeat=request.repeat,
                                  chime="chime" in endpoint.capabilities)
            try:
                await self.link.publish(topics.broadcast(self.site_id, endpoint.id),
                                        m.encode(message))
            except LinkDown as exc:
                raise CommandError(503, f"{exc} (sent to: {', '.join(sent) or 'none'})") \
                    from None
            sent.append(endpoint.id)
        view = await self.broadcast_view(broadcast_id)
        assert view is not None
        return view

    async def _check_priority(self, zones: list[Endpoint], priority: int) -> None:
        covered = {z for e in zones for z in e.covers}
        for incident in await self.alerts.incidents(self.site_id, open_only=True):
            if incident.active and set(incident.zones) & covered \
                    and incident.priority < priority:
                raise CommandError(409, f"incident {incident.id} ({incident.title}, priority "
                                        f"{incident.priority}) is more urgent in these zones; "
                                        "an announcement of this priority would talk over it")

    def take_ack(self, ack: m.DisplayAck) -> str | None:
        """The broadcast id of a manual announcement this confirms, if it is one of ours."""
        if not ack.message.startswith(MANUAL_PREFIX) \
                or not ack.message.endswith(f"-{ack.endpoint}"):
            return None
        return ack.message[: -len(ack.endpoint) - 1]

    async def record_ack(self, broadcast_id: str, ack: m.DisplayAck) -> None:
        rows = await self.store.rows(self.site_id, command=broadcast_id, events=["broadcast"])
        if not rows or ack.endpoint not in rows[0].targets:
            return
        try:
            await self.store.append(site=self.site_id, command=broadcast_id,
                                    event="broadcast_ack", username=ack.endpoint,
                                    targets=[ack.endpoint], outcome=ack.status.value,
                                    detail=ack.detail, once=f"ack:{ack.endpoint}")
        except AlreadyRecorded:
            return
        except AuditError as exc:
            log.error("confirmation of %s by %s not audited: %s", broadcast_id, ack.endpoint,
                      exc)

    async def broadcast_view(self, broadcast_id: str) -> BroadcastView | None:
        rows = await self.store.rows(self.site_id, command=broadcast_id)
        head = next((r for r in rows if r.event == "broadcast"), None)
        if head is None:
            return None
        acks = {r.targets[0]: r.outcome for r in rows if r.event == "broadcast_ack"}
        return BroadcastView(
            id=broadcast_id, by=head.username, ts=head.ts, text=head.reason,
            priority=int(head.data.get("priority", 0)), kind=str(head.data.get("kind", "")),
            deliveries=[ManualDelivery(zone=z, message=f"{broadcast_id}-{z}"[:64],
                                       status=acks.get(z, "pending")) for z in head.targets])

    async def broadcasts(self, since: int) -> list[BroadcastView]:
        rows = await self.store.rows(self.site_id, since=since, events=["broadcast"],
                                     newest_first=True, limit=200)
        views = [await self.broadcast_view(r.command) for r in rows]
        return [v for v in views if v is not None]

    # --- shared -----------------------------------------------------------------------

    def _may(self, user: User, zones: list[str], role: Role) -> None:
        if not user.role.at_least(role):
            raise CommandError(403, f"this needs the {role.value} role")
        if not user.in_zones(zones):
            raise CommandError(403, f"you may not act in zone {', '.join(sorted(set(zones)))}")

    async def _audit(self, user: User, message_id: str, event: str, targets: list[str],
                     text: str, data: dict[str, Any] | None = None) -> None:
        try:
            await self.store.append(site=self.site_id, command=message_id, event=event,
                                    username=user.username, role=user.role.value,
                                    action=event, targets=targets, reason=text, data=data)
        except AuditError as exc:
            log.error("%s by %s refused: %s", event, user.username, exc)
            raise CommandError(503, "the audit log cannot be written, so nothing was "
                                    "sent") from None


def _delivery(row: dict[str, Any]) -> Delivery:
    return Delivery(message=row["message"], attempts=row["attempts"],
                    first_sent=row["first_sent"], last_sent=row["last_sent"],
                    confirmed_at=row["acked_at"], status=row["ack_status"] or "pending")


def _shown(message: dict[str, Any]) -> ShownMessage:
    return ShownMessage(id=str(message.get("id", "")), kind=str(message.get("kind", "")),
                        priority=int(message.get("priority") or 0),
                        title=str(message.get("title", "")), text=str(message.get("text", "")),
                        colour=str(message.get("colour", "")),
                        incident=str(message.get("incident", "")),
                        alert=str(message.get("alert", "")), ts=int(message.get("ts") or 0))
