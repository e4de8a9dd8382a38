"""The duty service: incidents from the broker in, notices to people out, acknowledgements
back to the rules engine, work orders kept.

- Reads AlertMessage on alert/+ of its site (a persistent QoS 1 session on the lean MQTT
  link, as ingest does); each message goes through facility.deadletters, so a bad one is
  a counted dead letter and the line moves on.
- The Escalator says who to notify; each notice is recorded (the store's unique key
  refuses a second copy) before a task delivers it through the Deliverer.
- An acknowledge link, opened on a phone, comes to this service's small web server
  (duty.web); the person is checked, the link used up and audited, and an AlertOperation
  `acknowledge` goes to the rules engine on command/alert/{alert} (facility.ops, the
  protocol the control-room page uses). The engine's AlertMessage that follows stops
  the escalation and tells the others, like an acknowledgement on the page.
- A timer ticks the chains and the work orders (open on persisting faults, verify,
  SLA escalation through the same chains).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from duty.channels import Channel, build
from duty.config import DutyFile, DutySettings, RouteSpec, load_duty
from duty.deliver import Deliverer
from duty.escalate import Attempt, Escalator, Notice, Page, page_from_json, page_json
from duty.links import Claim, LinkError, Signer
from duty.roster import CHINA, ROTA, Calendar, Roster
from duty.store import DutyStore
from duty.web import serve
from duty.workorders import WorkOrder, WorkOrderBook, WorkOrderRefused
from facility import labels, topics
from facility import messages as m
from facility.deadletters import DeadLetters, Letter
from facility.metrics import Metrics
from facility.mqtt import MqttError, run_connected
from facility.mqttlink import MqttLink, connector
from facility.ops import Operations
from facility.service import Service
from facility.settings import Settings
from facility.topics import Kind

log = logging.getLogger(__name__)
ROSTER_EVERY = 60.0  # s between re-reads of the roster from the store


class DutyService(Service):
    name = "duty"

    def __init__(self, settings: Settings, site: str, *, duty: DutyFile | None = None,
                 options: DutySettings | None = None,
                 clock: Callable[[], float] = time.time,
                 channels: Mapping[str, Channel] | None = None,
                 places: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.site = site
        self.options = options or DutySettings()
        folder = settings.config_folder
        self.config = duty or load_duty(folder / self.options.file)
        self.calendar = Calendar.load(_resolve(folder, self.options.holidays_file))
        self.clock = clock
        self.client_id = f"{settings.mqtt.client_prefix}-duty-{site}"
        secret = self.options.secret.get_secret_value() if self.options.secret else ""
        self.key = secret or uuid.uuid4().hex * 2  # unset: links and actions end with us
        self.signer = Signer(self.key.encode(), self.config.link_lifetime)
        self._given_channels = channels
        self.places = places or {}  # place id -> its name, for the messages
        self.metrics = Metrics("duty")
        self.letters = DeadLetters("duty", site, metrics=self.metrics)
        self.store: DutyStore | None = None
        self.escalator: Escalator | None = None
        self.book = WorkOrderBook(self.config.workorders, clock, self._order_id)
        self.deliverer: Deliverer | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ops: Operations | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._web: web.AppRunner | None = None
        self._pages_saved: dict[str, str] = {}
        self._roster_read = 0.0
        self._faults_saved = ""
        self.web_url = ""  # where the acknowledge links are answered
        self.delivered = 0

    # --- life -------------------------------------------------------------------------

    async def open(self) -> None:
        self.store = await DutyStore.open(self.settings.state_url, self.site)
        roster = await self.store.roster()
        if not roster.people:  # a fresh store: the roster file's rotations, 60 days on
            now = datetime.fromtimestamp(self.clock(), UTC)
            roster = self.config.roster(self.calendar, now - timedelta(days=1),
                                        now + timedelta(days=self.options.days))
            await self.store.save_roster(roster)
        roster = await self._extend(roster)
        self._roster_read = self.clock()
        self.escalator = Escalator(self.config, roster, self.calendar, self.clock,
                                   link=self.link, places=self.places,
                                   code=self.signer.code if self.options.sms_inbound_secret
                                   else None)
        # Resume: the escalations under way, and every notice ever sent (never twice).
        saved = await self.store.pages()
        self.escalator.pages = {k: page_from_json(v) for k, v in saved.items()}
        self._pages_saved = saved
        self.escalator.sent = await self.store.notice_keys()
        for chain in {self.config.workorders.chain}:  # SLA pages run the work-order chain
            if chain in self.config.chains:
                self.escalator.routes[f"@{chain}"] = RouteSpec(name=f"@{chain}", chain=chain)
        self._http = aiohttp.ClientSession()
        channels: Mapping[str, Channel]
        if self._given_channels is not None:
            channels = self._given_channels
        else:
            channels, missing = build(self.config.channels, self._http, self.clock)
            for line in missing:
                log.warning("duty: %s; that channel is off", line)
        self.deliverer = Deliverer(channels, self._record, self.clock)
        for order in await self.store.orders():
            self.book.orders[order.id] = order
        self.book.load_faults(await self.store.load_state("faults"))
        self._faults_saved = self.book.faults_json()
        sms = self.options.sms_inbound_secret
        self._web = await serve(self, self.key, self.options.host, self.options.port,
                                sms_secret=sms.get_secret_value() if sms else "",
                                clock=self.clock)
        host, port = self._web.addresses[0][:2]
        self.web_url = f"http://{host}:{port}"

    async def close(self) -> None:
        for task in self._sending:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        if self._web is not None:
            await self._web.cleanup()
        if self._http is not None:
            await self._http.close()
        if self.store is not None:
            await self.store.close()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_connected(self.settings.mqtt, self._connector(), self._session,
                                         name=self.name), name="duty mqtt")
            tg.create_task(self._ticker(), name="duty ticker")

    def _connector(self) -> Callable[[], AbstractAsyncContextManager[MqttLink]]:
        return connector(self.settings.mqtt, self.client_id, session_expiry=24 * 3600,
                         receive_maximum=1000)

    async def _session(self, link: MqttLink) -> None:
        self._ops = Operations(self.site, link.publish)
        await link.subscribe([topics.subscription(Kind.ALERT, self.site), self._ops.results()],
                             qos=1)
        self.ready.set()
        try:
            while True:
                batch = await link.next_batch(100, None)
                for message in batch:
                    topic, payload = str(message.topic), bytes(message.payload)
                    out = await self.letters.run_async(partial(self.take, topic, payload),
                                                       topic, payload)
                    if isinstance(out, Letter):
                        await link.publish(out.topic, out.payload)
                link.ack(batch)
        finally:
            self.ready.clear()
            self._ops.cancel()
            self._ops = None

    async def take(self, topic: str, payload: bytes) -> None:
        """One message from the broker."""
        if topics.is_kind(topic, Kind.COMMAND_RESULT, self.site):
            if self._ops is not None:
                self._ops.take(payload)
            return
        alert = m.decode(payload, m.AlertMessage)
        if alert.site != self.site:
            raise m.ContractError(f"an alert of site {alert.site!r} on {self.site!r}'s topic")
        assert self.escalator is not None
        assert self.store is not None
        self.book.take(alert)
        incident = alert.incident or alert.id
        before = self.escalator.pages.get(incident)
        was_acked = before is not None and bool(before.acked_by)
        notices = self.escalator.take(alert)
        page = self.escalator.pages.get(incident)
        if page is not None and page.acked_by and not was_acked:
            # The time to acknowledge, for the reports (who, after how many seconds).
            await self.store.audit(page.acked_by, "incident_ack", incident,
                                   f"{page.acked_at - page.raised_at:.0f}", self.clock())
        # State first, then the notices: a stop in between loses no step of a chain.
        await self._save_orders()
        await self._save_pages()
        await self.send(notices)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.options.tick)
            await self.tick()

    async def _extend(self, roster: Roster) -> Roster:
        """Keep the rotations `days` ahead: add the rota shifts after each team's last one
        (never over a stored shift: an imported calendar's changes stay)."""
        assert self.store is not None
        now = datetime.fromtimestamp(self.clock(), UTC)
        horizon = now + timedelta(days=self.options.days)
        last: dict[str, datetime] = {}
        for shift in roster.shifts:
            if shift.kind == ROTA and (shift.team not in last or shift.end > last[shift.team]):
                last[shift.team] = shift.end
        if last and min(last.values()) > now + timedelta(days=self.options.days / 2):
            return roster
        fresh = self.config.roster(self.calendar, now - timedelta(days=1), horizon)
        new = [s for s in fresh.shifts if s.team not in last or s.start >= last[s.team]]
        if not new:
            return roster
        await self.store.put_shifts(new)
        log.info("duty: %d rota shifts added up to %s", len(new), f"{horizon:%Y-%m-%d}")
        return await self.store.roster()

    async def tick(self) -> None:
        assert self.escalator is not None
        assert self.store is not None
        if self.clock() - self._roster_read >= ROSTER_EVERY:
            # Imports, swaps and overrides made meanwhile; the rotations kept ahead.
            self.escalator.roster = await self._extend(await self.store.roster())
            self._roster_read = self.clock()
        notices = self.escalator.tick()
        opened, missed = self.book.tick()
        for order in opened:
            notices += self._order_page(order)
        for order in missed:
            notices += self._sla_page(order)
        await self._save_orders()
        await self._save_pages()
        await self.send(notices)

    # --- notices ----------------------------------------------------------------------

    async def send(self, notices: list[Notice]) -> None:
        assert self.store is not None
        assert self.escalator is not None
        for notice in notices:
            if not await self.store.add_notice(notice):
                continue  # sent before (a redelivery, a restart): never twice
            person = self.escalator.roster.people.get(notice.person)
            if person is None:
                continue
            task = asyncio.create_task(self._deliver(notice),
                                       name=f"duty deliver {notice.thread}")
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _deliver(self, notice: Notice) -> None:
        assert self.deliverer is not None
        assert self.store is not None
        assert self.escalator is not None
        person = self.escalator.roster.people[notice.person]
        if not self.deliverer.channels:
            return  # no channel is configured (said once at start): recorded, not sent
        channel = await self.deliverer.deliver(notice, person)
        if channel:
            self.delivered += 1
            await self.store.delivered(notice, channel, self.clock())
        else:
            log.warning("duty: %s for %s not delivered on any channel", notice.event,
                        notice.person)

    async def _record(self, attempt: Attempt) -> None:
        assert self.store is not None
        await self.store.add_attempt(attempt)

    async def idle(self, timeout: float = 10.0) -> None:
        """Until every delivery under way has ended (tests, the scripted night)."""
        async with asyncio.timeout(timeout):
            while self._sending:
                await asyncio.gather(*list(self._sending), return_exceptions=True)

    # --- acknowledge links --------------------------------------------------------------

    def link(self, person: str, incident: str) -> str:
        return self.config.link_base + self.signer.token(person, incident, self.clock())

    async def redeem(self, token: str) -> tuple[bool, str]:
        """A phone opened an acknowledge link: (acknowledged, what to show, in Chinese).

        The link is used up only once the rules engine took the acknowledgement: a press
        while the broker or the engine is away leaves it usable for a second try."""
        assert self.store is not None
        now = self.clock()
        try:
            claim = self.signer.check(token, now)
        except LinkError as exc:
            await self.store.audit("?", "ack_link_refused", "", exc.reason, now)
            return False, labels.DUTY_TEXT[f"ack_{exc.reason}"]
        return await self._acknowledge(claim, now)

    async def reply(self, mobile: str, text: str) -> tuple[bool, str]:
        """An SMS answer "确认 123456" from a person's mobile: the same acknowledgement as
        the link, once per person and incident."""
        assert self.store is not None
        assert self.escalator is not None
        now = self.clock()
        digits = "".join(c for c in text if c.isdigit())[-6:]
        people = [p for p in self.escalator.roster.people.values()
                  if mobile and p.contact("mobile") == mobile]
        for person in people:
            for page in self.escalator.pages.values():
                if person.id in page.notified and \
                        hmac.compare_digest(self.signer.code(person.id, page.incident), digits):
                    claim = Claim(person.id, page.incident, 0,
                                  f"sms-{page.incident}-{person.id}"[:64])
                    return await self._acknowledge(claim, now)
        await self.store.audit(mobile or "?", "ack_reply_refused", "", text[:100], now)
        return False, labels.DUTY_TEXT["reply_unknown"]

    async def _acknowledge(self, claim: Claim, now: float) -> tuple[bool, str]:
        assert self.store is not None
        assert self.escalator is not None
        if await self.store.link_used(claim.nonce):
            return False, labels.DUTY_TEXT["ack_used"]
        person = self.escalator.roster.people.get(claim.person)
        who = person.name if person is not None else claim.person
        page = self.escalator.pages.get(claim.incident)
        if page is not None and page.open and not claim.incident.startswith("wo-"):
            ok, detail = await self._ack_alerts(page, who, claim)
            if not ok:
                await self.store.audit(claim.person, "ack_failed", claim.incident, detail, now)
                return False, labels.label(labels.HTTP_STATUS, "503")
            await self.store.audit(claim.person, "ack_sent", claim.incident, detail, now)
        if not await self.store.redeem(claim.nonce, claim.person, claim.incident, now):
            return False, labels.DUTY_TEXT["ack_used"]
        if page is not None and page.open and claim.incident.startswith("wo-"):
            # A work order's SLA page: nothing for the rules engine, ours alone.
            await self.send(self.escalator.acknowledge(claim.incident, who))
            await self._save_pages()
        return True, labels.DUTY_TEXT["ack_done"].format(who=who)

    async def _ack_alerts(self, page: Page, who: str, claim: Claim) -> tuple[bool, str]:
        """Acknowledge the incident's alerts through the rules engine: (any taken, detail)."""
        if self._ops is None:
            return False, "the broker is not connected"
        details, taken = [], False
        for alert in sorted(page.unacked) or sorted(page.alerts):
            try:
                result = await self._ops.request(
                    m.AlertAction.ACKNOWLEDGE, alert, who,
                    comment=f"手机确认链接（{claim.person}）", timeout=self.options.ack_timeout)
                taken = taken or result.ok
                details.append(f"{alert}: {'ok' if result.ok else result.detail}")
            except (TimeoutError, MqttError) as exc:
                details.append(f"{alert}: {exc}")
        return taken, "; ".join(details)

    # --- work orders --------------------------------------------------------------------

    def _order_id(self) -> str:
        moment = datetime.fromtimestamp(self.clock(), CHINA)
        return f"wo-{moment:%Y%m%d}-{uuid.uuid4().hex[:6]}"

    def _order_text(self, order: WorkOrder, key: str, **extra: Any) -> str:
        return labels.DUTY_TEXT[key].format(
            id=order.id, place=self.places.get(order.place, order.place),
            device=order.device, fault=order.fault,
            priority=labels.label(labels.WORKORDER_PRIORITY, str(order.priority)), **extra)

    def _order_page(self, order: WorkOrder) -> list[Notice]:
        """A new fault order: the team's on-duty people hear of it, once."""
        assert self.escalator is not None
        text = self._order_text(order, "workorder_opened")
        return self.escalator.announce(order.id, [f"on_duty:{order.team}"], text)

    def _sla_page(self, order: WorkOrder) -> list[Notice]:
        assert self.escalator is not None
        hours = round(self.config.workorders.sla[order.priority] / 3600, 1)
        text = self._order_text(order, "workorder_sla", hours=hours)
        return self.escalator.page_chain(f"{order.id}-sla", self.config.workorders.chain,
                                         text)

    async def open_order(self, fields: dict[str, Any], by: str) -> WorkOrder:
        """An operator's request or a 12345 hotline ticket (or a device by hand)."""
        assert self.store is not None
        kind = str(fields.get("kind", "request"))
        if kind not in ("request", "hotline", "fault"):
            raise ValueError(f"kind {kind!r} is not request, hotline or fault")
        if kind == "hotline" and not str(fields.get("number", "")).strip():
            raise ValueError("a hotline ticket needs its 12345 number")
        order = self.book.open(
            kind=kind, device=str(fields.get("device", "")), place=str(fields.get("place", "")),
            family=str(fields.get("family", "")), fault=str(fields["fault"]),
            priority=int(fields.get("priority", 3)), team=str(fields.get("team", "repair")),
            by=by, number=str(fields.get("number", "")))
        await self.store.audit(by, "workorder_open", order.id, order.fault, self.clock())
        await self._save_orders()
        return order

    async def move_order(self, order_id: str, state: str, by: str, assignee: str,
                         note: str) -> WorkOrder:
        assert self.store is not None
        try:
            order = self.book.move(order_id, state, by, assignee=assignee, note=note)
        except WorkOrderRefused as exc:
            await self.store.audit(by, f"workorder_{state}_refused", order_id, str(exc),
                                   self.clock())
            raise
        await self.store.audit(by, f"workorder_{state}", order_id, note or assignee,
                               self.clock())
        await self._save_orders()
        return order

    async def _save_pages(self) -> None:
        assert self.store is not None
        assert self.escalator is not None
        now = {k: page_json(p) for k, p in self.escalator.pages.items()}
        if now != self._pages_saved:
            await self.store.save_pages(now)
            self._pages_saved = now

    async def _save_orders(self) -> None:
        assert self.store is not None
        faults = self.book.faults_json()
        if faults != self._faults_saved:  # a restart must still refuse a faulty "resolved"
            await self.store.save_state("faults", faults)
            self._faults_saved = faults
        if self.book.changed:
            changed = [self.book.orders[i] for i in self.book.changed]
            self.book.changed.clear()
            await self.store.save_orders(changed)


def _resolve(folder: Path, path: Path) -> Path:
    return path if path.is_absolute() else folder / path
