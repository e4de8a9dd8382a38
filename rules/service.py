"""The rules service: one worker per site. `async with RulesService(...) as rules:`.

It subscribes (QoS 1, persistent session, acknowledged only after the state store has the
result) to the site's telemetry, statuses, events, commands and command results, display
acknowledgements and operator actions; runs them through the engine; stores each step in
one transaction; then publishes alert state changes (through a disk-backed outbox),
display messages (retained) and broadcasts. A ticker on the injected clock drives timers,
escalation, shelve expiry and re-sends; a watcher reloads changed rule files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import msgspec

from facility import messages as m
from facility import topics
from facility.configfile import ConfigError
from facility.metrics import Metrics
from facility.mqtt import ManualAck, make_client, run_connected
from facility.outbox import Outbox
from facility.service import Service
from facility.settings import Settings
from facility.site import SiteConfig
from facility.topics import Kind
from rules.alerts import ChatterPolicy
from rules.clock import NS, Clock, SystemClock
from rules.config import RuleSet, load_rules, rule_files
from rules.endpoints import EndpointConfig, load_endpoints
from rules.engine import Effects, Engine
from rules.notify import WebhookNotifier, deliver
from rules.store import AlertStore
from rules.topology import Topology

log = logging.getLogger(__name__)

OPS_FAMILY = "alert"  # operator actions: command/alert/{target}, results on command-result/alert


def site_for(site: SiteConfig, site_id: str) -> SiteConfig:
    """The same campus under another site id (a worker per site; tests isolate by site)."""
    if site_id == site.site.id:
        return site
    return site.model_copy(update={"site": site.site.model_copy(update={"id": site_id})})


def load_all(settings: Settings, site: SiteConfig, rules_dir: Path | None = None,
             endpoints_file: Path | None = None) -> tuple[Topology, EndpointConfig, RuleSet]:
    topology = Topology(site)
    endpoints = load_endpoints(endpoints_file or settings.resolve(settings.rules.endpoints_file),
                               site)
    directory = rules_dir or settings.resolve(settings.rules.rules_dir)
    files = rule_files(directory)
    if not files:
        raise ConfigError(f"{directory}: no rule files (*.yaml)")
    return topology, endpoints, load_rules(files, topology, endpoints)


class RulesService(Service):
    def __init__(self, settings: Settings, site: SiteConfig, *, clock: Clock | None = None,
                 rules_dir: Path | None = None, endpoints_file: Path | None = None,
                 state_url: str | None = None, client_id: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        site_id = settings.rules.site or site.site.id
        self.site = site_for(site, site_id)
        self.site_id = site_id
        self.name = f"rules {site_id}"
        self.clock = clock or SystemClock()
        self.rules_dir = rules_dir or settings.resolve(settings.rules.rules_dir)
        self.endpoints_file = endpoints_file or settings.resolve(settings.rules.endpoints_file)
        self.state_url = state_url or settings.state_url
        self.client_id = client_id or f"{settings.mqtt.client_prefix}-rules-{site_id}"
        # Validate now: a bad rule file stops the start with file, rule and field.
        self.topology, self.endpoints, self.rules = load_all(settings, self.site, self.rules_dir,
                                                             self.endpoints_file)
        self.engine: Engine | None = None
        self.store: AlertStore | None = None
        self.outbox: Outbox | None = None
        self.http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._client: aiomqtt.Client | None = None
        self._last_beat = 0
        self.received = 0
        self.taken = 0
        self.taken_topics: Counter[str] = Counter()  # per topic, after the commit
        self.committed_ticks = 0
        self.reloads = 0
        self.reload_error = ""
        self._webhooks: set[asyncio.Task[Any]] = set()
        self.metrics = Metrics("rules")
        self._m_inputs = self.metrics.counter("inputs_total", "Messages taken in", ("kind",))
        self._m_alerts = self.metrics.counter("alert_transitions_total", "Alert transitions",
                                              ("action",))
        self._m_sent = self.metrics.counter("deliveries_total", "Display/broadcast sends",
                                            ("kind",))

    # --- life cycle -----------------------------------------------------------------

    async def open(self) -> None:
        self.store = await AlertStore.open(self.state_url)
        now = self.clock.now_ns()
        rs = self.settings.rules
        self.engine = Engine(self.topology, self.rules, self.endpoints, now=now,
                             chatter=ChatterPolicy(rs.chatter_count, rs.chatter_window),
                             incident_hold=rs.incident_hold, cap_sender=rs.cap_sender,
                             cap_status=rs.cap_status)
        snapshot = await self.store.load(self.site_id)
        self.engine.restore(snapshot, now)
        spool = self.settings.resolve(self.settings.gateway.spool_dir) / \
            f"rules-{self.site_id}.sqlite"
        self.outbox = Outbox(spool, memory_limit=self.settings.gateway.spool_memory_limit,
                             window=self.settings.gateway.publish_window)
        self.http = aiohttp.ClientSession()
        await self._commit(self.engine.take(), now)

    async def close(self) -> None:
        for task in list(self._webhooks):
            task.cancel()
        await asyncio.gather(*self._webhooks, return_exceptions=True)
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_connected(self.settings.mqtt, self._make_client, self._session,
                                         name=self.name, on_disconnect=self._disconnected),
                           name=f"{self.name} mqtt")
            tg.create_task(self._ticker(), name=f"{self.name} ticker")
            tg.create_task(self._watch_files(), name=f"{self.name} reload")

    def _make_client(self) -> aiomqtt.Client:
        return ManualAck.enable(make_client(self.settings.mqtt, self.client_id,
                                            session_expiry=24 * 3600, receive_maximum=2000,
                                            max_inflight=self.settings.gateway.publish_window))

    def _disconnected(self) -> None:
        self.ready.clear()
        self._client = None
        if self.outbox is not None:
            self.outbox.disconnected()

    def filters(self) -> list[str]:
        s = self.site_id
        return [topics.subscription(Kind.TELEMETRY, s), topics.subscription(Kind.STATUS, s),
                topics.subscription(Kind.EVENT, s), topics.subscription(Kind.COMMAND, s),
                topics.subscription(Kind.COMMAND_RESULT, s),
                topics.subscription(Kind.DISPLAY_ACK, s)]

    async def _session(self, client: aiomqtt.Client) -> None:
        assert self.outbox is not None
        acker = ManualAck(client)
        for flt in self.filters():
            await client.subscribe(flt, qos=1)
        self._client = client
        self.ready.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.outbox.drain(client), name=f"{self.name} outbox")
                tg.create_task(self._receive(acker), name=f"{self.name} receive")
                tg.create_task(self._resend_on_connect(), name=f"{self.name} resend")
        except* aiomqtt.MqttError as group:
            raise group.exceptions[0] from None
        finally:
            self._client = None
            self.ready.clear()

    async def _resend_on_connect(self) -> None:
        # What was sent while the broker was away is due again now, not at its next retry.
        async with self._lock:
            assert self.engine is not None
            now = self.clock.now_ns()
            for pending in self.engine.router.pending.values():
                pending.next_at = min(pending.next_at, now)
            self.engine.router.retry(now)
            await self._commit_step(now)

    async def _receive(self, acker: ManualAck) -> None:
        while True:
            batch = await acker.next_batch(500, None)
            async with self._lock:
                now = self.clock.now_ns()
                results: list[tuple[str, bytes]] = []
                for message in batch:
                    result = self._handle(message, now)
                    if result is not None:
                        results.append(result)
                await self._commit_step(now)
                self.taken += len(batch)  # stored: what these messages did is durable
                self.taken_topics.update(message.topic.value for message in batch)
            for topic, payload in results:
                await self._publish(topic, payload)
            for message in batch:
                acker.ack(message)

    def _handle(self, message: aiomqtt.Message, now: int) -> tuple[str, bytes] | None:
        assert self.engine is not None
        engine = self.engine
        payload = message.payload if isinstance(message.payload, bytes) \
            else str(message.payload).encode()
        try:
            parsed = topics.parse(message.topic.value)
        except topics.TopicError:
            return None
        self.received += 1
        self._m_inputs.labels(parsed.kind.value).inc()
        try:
            if parsed.kind is Kind.TELEMETRY:
                engine.reading(m.decode(payload, m.Reading), now)
            elif parsed.kind is Kind.EVENT:
                engine.event(m.decode(payload, m.Event), now)
            elif parsed.kind is Kind.STATUS:
                if payload:
                    engine.status(m.decode(payload, m.DeviceStatus), now)
            elif parsed.kind is Kind.COMMAND and parsed.family == OPS_FAMILY:
                return self._operate(m.decode(payload, m.AlertOperation), now)
            elif parsed.kind is Kind.COMMAND:
                engine.command(m.decode(payload, m.Command), now)
            elif parsed.kind is Kind.COMMAND_RESULT and parsed.family != OPS_FAMILY:
                engine.command_result(m.decode(payload, m.CommandResult), now)
            elif parsed.kind is Kind.DISPLAY_ACK:
                engine.display_ack(m.decode(payload, m.DisplayAck), now)
        except m.ContractError as exc:
            log.warning("%s: ignored a message on %s: %s", self.name, message.topic.value, exc)
        return None

    def _operate(self, op: m.AlertOperation, now: int) -> tuple[str, bytes]:
        assert self.engine is not None
        if op.action is m.AlertAction.RELOAD:
            ok, detail = self._reload()
            result = m.AlertOperationResult(id=op.id, site=self.site_id, target=op.target,
                                            ts=now, ok=ok, detail=detail)
        else:
            result = self.engine.operate(op, now)
        return topics.command_result(self.site_id, OPS_FAMILY, op.target), m.encode(result)

    # --- the Python API for operator actions (the API service, in the same process) --

    async def operate(self, action: m.AlertAction, target: str, by: str, *,
                      comment: str = "", until: int = 0, text: str = "") -> m.AlertOperationResult:
        """Acknowledge, comment, shelve (until), unshelve, out of service, return to service,
        maintenance (until), end maintenance, set content, reload: recorded with who/when."""
        assert self.engine is not None
        async with self._lock:
            now = self.clock.now_ns()
            op = m.AlertOperation(id=f"op-{uuid.uuid4().hex[:16]}", site=self.site_id,
                                  action=action, target=target, by=by, ts=now,
                                  comment=comment, until=until, text=text)
            _, payload = self._operate(op, now)
            await self._commit_step(now)
        return m.decode(payload, m.AlertOperationResult)

    # --- time -----------------------------------------------------------------------

    async def _ticker(self) -> None:
        step = round(self.settings.rules.tick * NS)
        while True:
            await self.clock.sleep_until(self.clock.now_ns() + step)
            async with self._lock:
                assert self.engine is not None
                now = self.clock.now_ns()
                self.engine.tick(now)
                await self._commit_step(now)
                self.committed_ticks += 1

    async def _watch_files(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rules.reload_poll)
            try:
                files = rule_files(self.rules_dir)
                digest = _digest(files)
            except OSError:
                continue
            if digest != self.rules.digest:
                async with self._lock:
                    self._reload()

    def _reload(self) -> tuple[bool, str]:
        try:
            _, _, rules = load_all(self.settings, self.site, self.rules_dir, self.endpoints_file)
        except ConfigError as exc:
            if str(exc) != self.reload_error:
                log.error("%s: rule files not reloaded, the running rules stay:\n%s",
                          self.name, exc)
            self.reload_error = str(exc)
            self.rules = RuleSet(self.rules.rules, self.rules.schedules, self.rules.templates,
                                 self.rules.teams, self.rules.inhibit, self.rules.files,
                                 _digest(rule_files(self.rules_dir)))
            return False, str(exc)
        assert self.engine is not None
        self.rules = rules
        self.engine.set_rules(rules)
        self.reloads += 1
        self.reload_error = ""
        log.info("%s: reloaded %d rules from %s", self.name, len(rules.rules), self.rules_dir)
        return True, f"{len(rules.rules)} rules"

    # --- storing and publishing -----------------------------------------------------

    async def _commit_step(self, now: int) -> None:
        assert self.engine is not None
        effects = self.engine.take()
        if effects or now - self._last_beat >= 10 * NS:
            await self._commit(effects, now)

    async def _commit(self, effects: Effects, now: int) -> None:
        assert self.engine is not None
        assert self.store is not None
        assert self.outbox is not None
        pending = self.engine.pending_payloads() \
            if effects.deliveries or effects.acks else None
        await self.store.apply(self.site_id, effects, now, pending)
        self._last_beat = now
        for alert, action, by, comment in effects.alerts:
            self._m_alerts.labels(action).inc()
            message = alert.message(action, now, by, comment)
            self.outbox.put(topics.alert(self.site_id, alert.id), m.encode(message))
        for delivery in effects.deliveries:
            self._m_sent.labels(delivery.kind).inc()
            if delivery.kind == "display":
                topic, retain = topics.display(self.site_id, delivery.endpoint), True
            else:
                topic, retain = topics.broadcast(self.site_id, delivery.endpoint), False
            await self._publish(topic, m.encode(delivery.message), retain=retain)
        for alert, team in effects.escalations:
            self._escalate(alert.message("escalated", now), team)

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish now if connected; if not, the message is re-sent by its retry (displays,
        broadcasts) or the caller's own retry (operation results)."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(topic, payload, qos=1, retain=retain)

    def _escalate(self, message: m.AlertMessage, team_id: str) -> None:
        team = self.rules.teams.get(team_id)
        if team is None or not team.webhook or self.http is None:
            log.warning("%s: alert %s escalated to %s (%s)", self.name, message.id, team_id,
                        team.name if team else "unknown team")
            return
        notifier = WebhookNotifier(self.http, team.webhook)
        payload: dict[str, Any] = {"team": team_id, "team_name": team.name,
                                   "alert": msgspec.to_builtins(message)}
        task = asyncio.get_running_loop().create_task(deliver(notifier, payload),
                                                      name=f"{self.name} webhook")
        self._webhooks.add(task)
        task.add_done_callback(self._webhooks.discard)



def _digest(files: list[Path]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()
