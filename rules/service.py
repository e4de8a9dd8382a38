"""The rules service: one worker per site. `async with RulesService(...) as rules:`.

Two MQTT connections, both QoS 1 on persistent sessions, each message acknowledged only
after the state store has what it caused:

- *alerts* (client id `<client_id>`): statuses, events, commands and command results,
  display acknowledgements and operator actions; it also publishes alert messages
  (through a disk-backed outbox), display messages (retained), broadcasts and operator
  results. Nothing bulky shares its queue or its socket.
- *telemetry* (`<client_id>-telemetry`): readings, taken in batches and handled a chunk
  at a time, so the alerts connection gets the engine within a chunk's time; a reading
  that changes an alert is stored and published at once, not at the end of its batch.

Each step is stored in one transaction, then published. A ticker on the injected clock
drives timers, escalation, shelve expiry and re-sends; a watcher reloads changed rule files.
Messages that do not fit are counted and dead-lettered or ignored (rules/intake.py).

Under a lease (rules/lease.py, a worker of `facility rules workers`), every write is
fenced by the lease's epoch, and each connection to the broker first confirms the lease:
a write refused (LeaseLost) stops the service at once, without a last write, and a
worker that lost the site never reconnects under the site's client ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import sqlalchemy as sa

from facility import messages as m
from facility import topics
from facility.catalog import Catalog
from facility.configfile import ConfigError
from facility.deadletters import DeadLetters, Letter
from facility.endpoints import EndpointConfig
from facility.metrics import Metrics
from facility.mqtt import Connection, run_connected, until_lost
from facility.mqttlink import MqttLink, connector
from facility.ops import OPS_FAMILY
from facility.outbox import Outbox
from facility.service import Service
from facility.settings import Settings
from facility.topics import Kind
from facility.topology import Topology
from rules.alerts import ChatterPolicy
from rules.clock import NS, Clock, SystemClock
from rules.config import RuleSet, load_rules, rule_files
from rules.engine import Effects, Engine
from rules.intake import Intake, Refusal
from rules.lease import LeaseLost, SiteLease
from rules.notify import WebhookNotifier, deliver
from rules.store import AlertStore

log = logging.getLogger(__name__)

PRIORITY_BATCH = 100  # messages per turn on the alerts connection
PRIORITY_INFLIGHT = 500  # unacknowledged messages the broker may send ahead on it
BULK_BATCH = 500  # readings per batch (acknowledged together after their commit)
BULK_CHUNK = 50  # readings handled per turn of the engine lock (about a millisecond)
BULK_INFLIGHT = 5000  # unacknowledged readings the broker may send ahead
COALESCE = 0.002  # s a batch of readings that cannot move a screen waits for more
BEAT = 10 * NS  # heartbeat: last-seen times and a slice of the windows go to the store
SERIES_PER_BEAT = 100_000  # window samples one heartbeat stores (1.6 MB, copied as arrays)
CHECKPOINT_EVERY = 5.0  # s between SQLite checkpoints (off the loop; a no-op elsewhere)


def load_all(settings: Settings, catalog: Catalog, rules_dir: Path | None = None
             ) -> tuple[Topology, EndpointConfig, RuleSet]:
    topology = Topology(catalog)
    endpoints = catalog.endpoints
    directory = rules_dir or settings.resolve(settings.rules.rules_dir)
    files = rule_files(directory)
    if not files:
        raise ConfigError(f"{directory}: no rule files (*.yaml)")
    return topology, endpoints, load_rules(files, topology, endpoints)


class RulesService(Service):
    def __init__(self, settings: Settings, catalog: Catalog, *, clock: Clock | None = None,
                 rules_dir: Path | None = None,
                 state_url: str | None = None, client_id: str | None = None,
                 site: str | None = None, lease: SiteLease | None = None) -> None:
        """`site`: the site to serve (default: settings.rules.site, else the site file's).
        `lease`: the worker's lease of the site (fenced writes, confirmed connections)."""
        super().__init__()
        self.settings = settings
        self.lease = lease
        self.fenced = False  # a write was refused: this worker no longer owns the site
        site_id = site or settings.rules.site or catalog.site.site.id
        self.catalog = catalog.for_site(site_id)
        self.site = self.catalog.site
        self.site_id = site_id
        self.name = f"rules {site_id}"
        self.clock = clock or SystemClock()
        self.rules_dir = rules_dir or settings.resolve(settings.rules.rules_dir)
        self.state_url = state_url or settings.state_url
        self.client_id = client_id or f"{settings.mqtt.client_prefix}-rules-{site_id}"
        self.bulk_client_id = f"{self.client_id}-telemetry"
        # Validate now: a bad rule file stops the start with file, rule and field.
        self.topology, self.endpoints, self.rules = load_all(settings, self.catalog,
                                                             self.rules_dir)
        self.intake = Intake(site_id, frozenset(self.topology.sources))
        self.intake.warm({s.id: s.family for s in self.topology.sources.values()})
        self.engine: Engine | None = None
        self.store: AlertStore | None = None
        self.outbox: Outbox | None = None
        self.http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._client: Connection | None = None  # the alerts connection: publishes too
        self._bulk: Connection | None = None  # the telemetry connection
        self._links: set[str] = set()  # connections up and subscribed
        self._last_beat = 0
        self._answers: list[tuple[str, bytes]] = []  # operator results, sent after the commit
        self.received = 0
        self.commits = 0  # steps stored
        self.sent = 0  # messages handed to a live broker connection (besides the outbox)
        self.taken = 0
        self.taken_topics: Counter[str] = Counter()  # per topic, after the commit
        self.committed_ticks = 0
        self.reloads = 0
        self.reload_error = ""
        # Called after the rule files were reloaded (the composition root passes
        # app.wiring.freeze: the long-lived rules stay out of the collector's way).
        self.on_reload: Callable[[], None] | None = None
        self._webhooks: set[asyncio.Task[Any]] = set()
        self.metrics = Metrics("rules")
        self.letters = DeadLetters("rules", site_id, metrics=self.metrics,
                                   clock_ns=self.clock.now_ns)
        self._m_inputs = self.metrics.counter("inputs_total", "Messages taken in", ("kind",))
        self._m_inputs_seen: dict[str, int] = {}  # what the intake counted at the last beat
        self._m_refused = self.metrics.counter("refused_total", "Messages refused",
                                               ("reason",))
        self._m_alerts = self.metrics.counter("alert_transitions_total", "Alert transitions",
                                              ("action",))
        self._m_sent = self.metrics.counter("deliveries_total", "Display/broadcast sends",
                                            ("kind",))
        self._m_step = self.metrics.histogram(
            "urgent_step_seconds", "From taking the batch of an input that changes alerts or "
            "outputs to its messages handed to the broker connection (stored first)",
            ("link",), buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))

    # --- life cycle -----------------------------------------------------------------

    async def open(self) -> None:
        self.store = await AlertStore.open(self.state_url)
        if self.lease is not None:
            self.store.fence = self.lease.fence
        now = self.clock.now_ns()
        rs = self.settings.rules
        self.engine = Engine(self.topology, self.rules, self.endpoints, now=now,
                             chatter=ChatterPolicy(rs.chatter_count, rs.chatter_window),
                             incident_hold=rs.incident_hold,
                             suppression_grace=rs.suppression_grace, cap_sender=rs.cap_sender,
                             cap_status=rs.cap_status)
        snapshot = await self.store.load(self.site_id)
        self.engine.restore(snapshot, now)
        spool = self.settings.spool_path("rules") / f"rules-{self.site_id}.sqlite"
        self.outbox = Outbox(spool, memory_limit=self.settings.spool.memory_limit,
                             window=self.settings.spool.publish_window)
        self.http = aiohttp.ClientSession()
        await self._commit(self.engine.take(), now, beat=True)

    async def close(self) -> None:
        for task in list(self._webhooks):
            task.cancel()
        await asyncio.gather(*self._webhooks, return_exceptions=True)
        if self.fenced and self.outbox is not None:
            self.outbox.memory.clear()  # not ours to send: the new owner has the state
        if self.engine is not None and self.store is not None and self.outbox is not None \
                and not self.fenced:
            # The last heartbeat: last-seen times (and windows) as of now, so a restart
            # goes on from here. Alert messages go to the outbox's spool, sends wait for
            # their retry after the restart.
            try:
                await self._commit(self.engine.take(), self.clock.now_ns(), beat=True)
            except (sa.exc.SQLAlchemyError, LeaseLost) as exc:
                log.warning("%s: last heartbeat not stored: %s", self.name, exc)
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
        mqtt = self.settings.mqtt
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_connected(mqtt, self._guarded(connector(
                                             mqtt, self.client_id, session_expiry=24 * 3600,
                                             receive_maximum=PRIORITY_INFLIGHT)),
                                         self._priority_session, name=f"{self.name} alerts",
                                         on_disconnect=self._priority_lost),
                           name=f"{self.name} alerts link")
            tg.create_task(run_connected(mqtt, self._guarded(connector(
                                             mqtt, self.bulk_client_id, session_expiry=24 * 3600,
                                             receive_maximum=BULK_INFLIGHT)),
                                         self._bulk_session, name=f"{self.name} telemetry",
                                         on_disconnect=self._bulk_lost),
                           name=f"{self.name} telemetry link")
            tg.create_task(self._ticker(), name=f"{self.name} ticker")
            tg.create_task(self._checkpoints(), name=f"{self.name} checkpoints")
            tg.create_task(self._watch_files(), name=f"{self.name} reload")

    def _guarded(self, connect: Callable[[], AbstractAsyncContextManager[MqttLink]]
                 ) -> Callable[[], AbstractAsyncContextManager[MqttLink]]:
        """Under a lease, each connection first confirms (and renews) it: the client ids
        are the site's, so a worker that lost the site and connected anyway would take
        the connection from the new owner. LeaseLost ends run()."""
        lease = self.lease
        if lease is None:
            return connect

        @contextlib.asynccontextmanager
        async def guarded() -> AsyncIterator[MqttLink]:
            if self.fenced:
                raise LeaseLost(f"{self.name}: a write was refused")
            await lease.confirm()
            async with connect() as link:
                yield link

        return guarded

    def _link_up(self, link: str) -> None:
        self._links.add(link)
        if self._links == {"alerts", "telemetry"}:
            self.ready.set()

    def _link_down(self, link: str) -> None:
        self._links.discard(link)
        self.ready.clear()

    def _priority_lost(self) -> None:
        self._link_down("alerts")
        self._client = None
        if self.outbox is not None:
            self.outbox.disconnected()

    def _bulk_lost(self) -> None:
        self._link_down("telemetry")
        self._bulk = None

    def priority_filters(self) -> list[str]:
        s = self.site_id
        return [topics.subscription(Kind.STATUS, s), topics.subscription(Kind.EVENT, s),
                topics.subscription(Kind.COMMAND, s),
                topics.subscription(Kind.COMMAND_RESULT, s),
                topics.subscription(Kind.DISPLAY_ACK, s),
                topics.subscription(Kind.DRILL, s),
                topics.subscription(Kind.LINK, s)]  # the site's bridge (site_link rules)

    def bulk_filters(self) -> list[str]:
        return [topics.subscription(Kind.TELEMETRY, self.site_id)]

    def filters(self) -> list[str]:
        return self.bulk_filters() + self.priority_filters()

    async def _priority_session(self, link: Connection) -> None:
        assert self.outbox is not None
        await link.subscribe(self.priority_filters(), qos=1)
        await link.unsubscribe(self.bulk_filters())  # a session from before the split
        self._client = link
        self._link_up("alerts")
        try:
            await until_lost(link, {f"{self.name} outbox": self.outbox.drain(link),
                                    f"{self.name} receive alerts": self._receive(link),
                                    f"{self.name} resend": self._resend_on_connect()})
        finally:
            self._client = None
            self._link_down("alerts")

    async def _bulk_session(self, link: Connection) -> None:
        await link.subscribe(self.bulk_filters(), qos=1)
        self._bulk = link
        self._link_up("telemetry")
        try:
            while True:
                batch = await link.next_batch(BULK_BATCH, None)
                taken_at = time.perf_counter()
                ordered, urgent = self._urgent_first(batch)
                if not urgent:
                    # Readings that can move nothing on a screen wait up to COALESCE for
                    # company: one pass of the engine, one commit check and one write of
                    # acknowledgements per few dozen readings, not per one or two.
                    deadline = taken_at + COALESCE
                    while len(batch) < BULK_CHUNK and not urgent:
                        left = deadline - time.perf_counter()
                        more = await link.next_batch(BULK_BATCH - len(batch), left) \
                            if left > 0 else []
                        if not more:
                            break
                        batch += more
                        ordered, urgent = self._urgent_first(batch)
                await self._handle_batch(ordered, BULK_CHUNK, bulk=True,
                                         caught_up=len(batch) < BULK_BATCH, taken_at=taken_at)
                link.ack(batch)
        finally:
            self._bulk = None
            self._link_down("telemetry")

    def _urgent_first(self, batch: list[Any]) -> tuple[list[tuple[str, bytes]], int]:
        """Readings of sources that can move screens or the PA (a detector, a water level)
        before the others of the batch, each device's readings in their order: a fire
        does not wait behind hundreds of meter readings. Acknowledged in arrival order.
        Returns the batch in that order and how many are urgent."""
        assert self.engine is not None
        urgent_sources = self.engine.urgent_sources
        parse = self.intake.parse
        urgent: list[tuple[str, bytes]] = []
        rest: list[tuple[str, bytes]] = []
        for packet in batch:
            where = parse(packet.topic)
            (urgent if where is not None and where.name in urgent_sources else rest).append(
                (packet.topic, packet.payload))
        return urgent + rest, len(urgent)

    async def _resend_on_connect(self) -> None:
        # What was sent while the broker was away is due again now, not at its next retry.
        async with self._lock:
            assert self.engine is not None
            now = self.clock.now_ns()
            for pending in self.engine.router.pending.values():
                pending.next_at = min(pending.next_at, now)
            self.engine.router.retry(now)
            await self._commit_step(now)

    async def _receive(self, link: Connection) -> None:
        while True:
            batch = await link.next_batch(PRIORITY_BATCH, None)
            await self._handle_batch([(p.topic, p.payload) for p in batch], PRIORITY_BATCH,
                                     taken_at=time.perf_counter())
            link.ack(batch)

    async def _handle_batch(self, batch: list[tuple[str, bytes]], chunk: int, *,
                            bulk: bool = False, caught_up: bool = False,
                            taken_at: float = 0.0) -> None:
        """Take a batch into the engine a chunk at a time; store and publish at once what
        changes alerts or outputs, the rest (timers) once at the end. The caller
        acknowledges the batch afterwards: what it caused is stored by then."""
        assert self.engine is not None
        now = 0
        for start in range(0, len(batch), chunk):
            if bulk:
                await asyncio.sleep(0)  # let the alerts connection have the engine
            async with self._lock:
                now = self.clock.now_ns()
                for topic, payload in batch[start:start + chunk]:
                    out = self.letters.run(partial(self._take, topic, payload, now), topic,
                                           payload)
                    if isinstance(out, Letter):  # the engine failed on it: quarantined
                        self._send_letter(out)
                    if self.engine.urgent():  # tell the world now, not after the batch
                        await self._commit_step(now)
                        self._m_step.labels("telemetry" if bulk else "alerts").observe(
                            time.perf_counter() - taken_at)
        async with self._lock:
            now = self.clock.now_ns()
            await self._commit_step(now)
            self.taken += len(batch)  # stored: what these messages did is durable
            self.taken_topics.update(topic for topic, _ in batch)
            if caught_up:
                self.engine.caught_up(now)  # what the broker kept for us is in

    def _take(self, topic: str, payload: bytes, now: int) -> None:
        assert self.engine is not None
        self.received += 1
        refusal, op = self.intake.take(self.engine, topic, payload, now)
        if refusal is not None:
            self._m_refused.labels(refusal.reason).inc()
            if refusal.letter:
                self._dead_letter(refusal, now)
            return
        if op is not None:
            # The operator hears back only after the step is stored: an API that reads the
            # alert on our answer must find the acknowledgement there.
            self._answers.append(self._operate(op, now))

    def _dead_letter(self, refusal: Refusal, now: int) -> None:
        self._send_letter(self.letters.letter(
            refusal.topic, refusal.payload, refusal.reason,
            f"{refusal.reason}: {refusal.detail}"))

    def _send_letter(self, letter: Letter) -> None:
        # On the telemetry connection: letters must not queue before alert messages.
        self._send_soon(self._bulk or self._client, letter.topic, letter.payload)

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
                      comment: str = "", until: int = 0, text: str = "",
                      priority: int = 0) -> m.AlertOperationResult:
        """Acknowledge, comment, shelve (until), unshelve, out of service, return to service,
        maintenance (until), end maintenance, set content, show and withdraw a manual
        message (priority), reload: recorded with who/when."""
        assert self.engine is not None
        async with self._lock:
            now = self.clock.now_ns()
            op = m.AlertOperation(id=f"op-{uuid.uuid4().hex[:16]}", site=self.site_id,
                                  action=action, target=target, by=by, ts=now,
                                  comment=comment, until=until, text=text, priority=priority)
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

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY)
            assert self.store is not None
            try:
                await self.store.checkpoint()
            except sa.exc.OperationalError as exc:  # busy: the next one will do
                log.debug("%s: checkpoint: %s", self.name, exc)

    async def _watch_files(self) -> None:
        stamp: list[tuple[str, int, int]] = []
        while True:
            await asyncio.sleep(self.settings.rules.reload_poll)
            try:
                files = rule_files(self.rules_dir)
                now_stamp = [(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files]
                if now_stamp == stamp:
                    continue  # names, times and sizes as before: no reading and hashing
                stamp = now_stamp
                digest = _digest(files)
            except OSError:
                continue
            if digest != self.rules.digest:
                async with self._lock:
                    self._reload()

    def _reload(self) -> tuple[bool, str]:
        try:
            _, _, rules = load_all(self.settings, self.catalog, self.rules_dir)
        except ConfigError as exc:
            if str(exc) != self.reload_error:
                log.error("%s: rule files not reloaded, the running rules stay:\n%s",
                          self.name, exc)
            self.reload_error = str(exc)
            self.rules = dataclasses.replace(self.rules,
                                             digest=_digest(rule_files(self.rules_dir)))
            return False, str(exc)
        assert self.engine is not None
        self.rules = rules
        self.engine.set_rules(rules)
        if self.on_reload is not None:
            self.on_reload()  # the composition root freezes the new rules (app.wiring)
        self.reloads += 1
        self.reload_error = ""
        log.info("%s: reloaded %d rules from %s", self.name, len(rules.rules), self.rules_dir)
        return True, f"{len(rules.rules)} rules"

    # --- storing and publishing -----------------------------------------------------

    async def _commit_step(self, now: int) -> None:
        assert self.engine is not None
        effects = self.engine.take()
        beat = now - self._last_beat >= BEAT
        if effects or beat or self._answers:
            await self._commit(effects, now, beat)
        answers, self._answers = self._answers, []
        for topic, body in answers:
            self._send_soon(self._client, topic, body)

    async def _commit(self, effects: Effects, now: int, beat: bool = False) -> None:
        assert self.engine is not None
        assert self.store is not None
        assert self.outbox is not None
        engine = self.engine
        pending = engine.pending_payloads() if effects.deliveries or effects.acks else None
        try:
            if beat:
                self._count_inputs()
                await self.store.apply(self.site_id, effects, now, pending,
                                       last_seen=engine.evaluator.last_seen(),
                                       series=engine.evaluator.series_slice(SERIES_PER_BEAT),
                                       started=engine.evaluator.started_at)
                self._last_beat = now
            else:
                await self.store.apply(self.site_id, effects, now, pending)
        except LeaseLost:
            # Another worker owns the site now: publish nothing of this step, drop the
            # broker connections (they are the site's) and stop.
            self.fenced = True
            self._drop_links()
            raise
        self.commits += 1
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
            self._send_soon(self._client, topic, m.encode(delivery.message), retain)
        for alert, team in effects.escalations:
            self._escalate(alert.message("escalated", now), team)

    def _count_inputs(self) -> None:
        """Move the intake's counts into the metrics (once a heartbeat, not per message:
        a labelled Prometheus counter costs a few microseconds each time)."""
        for kind, count in self.intake.taken.items():
            self._m_inputs.labels(kind).inc(count - self._m_inputs_seen.get(kind, 0))
            self._m_inputs_seen[kind] = count

    def _send_soon(self, client: Connection | None, topic: str, payload: bytes,
                   retain: bool = False) -> None:
        """Publish without waiting for the broker's acknowledgement: a display message or
        broadcast not confirmed by its endpoint is re-sent by the router (same id), an
        operator result by the operator's retry, a dead letter is not worth a wait."""
        if client is not None and not self.fenced and client.send(topic, payload,
                                                                   retain=retain):
            self.sent += 1

    def _drop_links(self) -> None:
        for link in (self._client, self._bulk):
            if isinstance(link, MqttLink):
                link.close()
        self._client = self._bulk = None

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
