"""Ingest: canonical telemetry, statuses, events and dead letters from the broker into
InfluxDB, in batches, acknowledging each message to the broker only after InfluxDB took it.

Messages arrive over facility.mqttlink (a lean MQTT v5 connection: most of ingest's time
went into paho's per-packet work). The session is persistent (QoS 1, clean start off, a
session expiry), so messages that arrive while ingest is down or restarting wait at the
broker. The broker sends at most `receive_maximum` unacknowledged messages, which bounds
memory while InfluxDB is away. Each site's points go to its InfluxDB server
(facility/influxroutes.py), one write per server and batch.

Storing is stateless, so N copies (workers) share the load through an MQTT v5 shared
subscription (`ingest.shared_group`: every filter becomes `$share/<group>/...` and the
broker gives each message to one copy). Loss counting then cannot be per copy (each would
take the others' numbers for lost): with a PostgreSQL state store, every worker records
the sequence numbers it stored in a shared ledger before it acknowledges them, and one
worker at a time checks the union (ingest/ledger.py). Without PostgreSQL, a copy on a
shared subscription keeps the one-copy tracker (ingest/sequence.py) and says in its log
that its loss count is wrong. docs/ingest.md has the design and what was measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from facility import topics
from facility.backoff import Backoff
from facility.deadletters import DeadLetters, Letter
from facility.influx import InfluxClient, InfluxError
from facility.influxroutes import DEFAULT, all_routes, route_name
from facility.metrics import Metrics
from facility.mqtt import Connection, Message, MqttError, run_connected, until_lost
from facility.mqttlink import MqttLink, connector
from facility.service import Service
from facility.settings import Settings
from facility.topics import Kind
from ingest.convert import Converter
from ingest.gaps import LedgerUnavailable, Marks
from ingest.sequence import SequenceTracker
from ingest.spool import Spool
from ingest.writer import BatchWriter, Unavailable

if TYPE_CHECKING:
    from ingest.ledger import SequenceLedger

log = logging.getLogger(__name__)

KINDS = (Kind.TELEMETRY, Kind.STATUS, Kind.EVENT, Kind.DEADLETTER)


@dataclass
class Sink:
    """One InfluxDB server of the routing table (facility/influxroutes.py) with its own
    writer, replayer and spool: a server that is away spools only its own sites' points."""

    name: str
    influx: InfluxClient
    writer: BatchWriter
    replayer: BatchWriter
    spool: Spool


class Ingest(Service):
    name = "ingest"

    def __init__(self, settings: Settings, *, client_id: str | None = None,
                 clock_ns: Callable[[], int] = time.time_ns, retiring: bool = False) -> None:
        super().__init__()
        # Retiring a worker slot for good (`retire`): no subscription, only what the
        # slot's session still holds.
        self.retiring = retiring
        self.settings = settings
        self.options = settings.ingest
        self.client_id = client_id or f"{settings.mqtt.client_prefix}-{self.options.client_id}"
        self.clock_ns = clock_ns
        self.influx: InfluxClient | None = None  # the default server's client
        self.sinks: dict[str, Sink] = {}
        self._sink_of: dict[str, Sink] = {}  # site -> its server's sink
        self.sequences = SequenceTracker(grace=self.options.loss_grace)
        # N workers on a shared subscription count loss together in PostgreSQL.
        self.shared_loss = bool(self.options.shared_group) and \
            settings.state_url.startswith(("postgresql:", "postgres:"))
        self.marks = Marks()  # this batch's numbers, for the ledger
        self._unrecorded = Marks()  # numbers the ledger did not take yet (PostgreSQL away)
        self.ledger: SequenceLedger | None = None  # with shared_loss, once open
        self.converter = Converter(
            sequences=self.marks if self.shared_loss else self.sequences)
        self.spool: Spool | None = None
        self.replayer: BatchWriter | None = None  # the default server's, as before routes
        self.writer: BatchWriter | None = None
        self.metrics = Metrics("ingest")
        self._m_received = self.metrics.counter("messages_total", "Messages received")
        self._m_written = self.metrics.counter("points_written_total", "Points InfluxDB accepted")
        self.letters = DeadLetters("ingest", self.options.site, metrics=self.metrics,
                                   clock_ns=clock_ns)
        self._m_batch = self.metrics.histogram(
            "batch_seconds", "Time to write a batch and acknowledge it",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self._m_spooled = self.metrics.gauge("spooled_points",
                                             "Points waiting in the disk spool for InfluxDB")
        self._m_lost = self.metrics.counter("sequence_lost_total",
                                            "Gateway messages that never arrived", ("gateway",))
        # Plain counters too, for `facility up` and the tests.
        self.received = 0
        self.acknowledged = 0
        self.written = 0
        self.spooled = 0

    @property
    def dead_letters(self) -> int:
        return self.letters.total

    def subscriptions(self) -> list[str]:
        filters = [topics.subscription(kind, site=self.options.site) for kind in KINDS]
        group = self.options.shared_group
        return [topics.shared(group, f) for f in filters] if group else filters

    async def open(self) -> None:
        folder = self.settings.spool_path("ingest")
        try:
            for name, server in all_routes(self.settings.influx).items():
                client = await InfluxClient(server).__aenter__()
                # The default server keeps the spool file name of before the routing table.
                file = f"{self.client_id}.sqlite" if name == DEFAULT \
                    else f"{self.client_id}.{name}.sqlite"
                sink = Sink(name, client, BatchWriter(client), BatchWriter(client),
                            Spool(folder / file))
                self.sinks[name] = sink
                if sink.spool.batches:
                    log.info("ingest: %d points for InfluxDB %s spooled from before; "
                             "replaying them first", sink.spool.lines, name)
        except BaseException:
            await self.close()
            raise
        default = self.sinks[DEFAULT]
        self.influx, self.writer, self.replayer, self.spool = \
            default.influx, default.writer, default.replayer, default.spool
        if self.shared_loss:
            from ingest.ledger import SequenceLedger  # SQLAlchemy only where it is used

            self.ledger = SequenceLedger(self.settings.state_url, self.client_id,
                                         grace=self.options.loss_grace)
            try:
                await self.ledger.__aenter__()
                await self._take_slot(self.ledger)
            except BaseException:
                await self.close()
                raise
        elif self.options.shared_group:
            log.warning("ingest: shared subscription (group %s) without a PostgreSQL state "
                        "store: sequence_lost_total also counts the messages the other copies "
                        "took", self.options.shared_group)

    async def close(self) -> None:
        if self.ledger is not None:
            ledger, self.ledger = self.ledger, None
            await ledger.__aexit__(None, None, None)
        sinks, self.sinks = self.sinks, {}
        self._sink_of.clear()
        self.influx = self.writer = self.replayer = self.spool = None
        for sink in sinks.values():
            await sink.influx.__aexit__(None, None, None)
            sink.spool.close()

    def sink(self, site: str) -> Sink:
        """The sink of a site's InfluxDB server (the routing table's answer, cached)."""
        found = self._sink_of.get(site)
        if found is None:
            found = self.sinks[route_name(self.settings.influx, site)]
            if len(self._sink_of) < 100_000:
                self._sink_of[site] = found
        return found

    @property
    def spooled_lines(self) -> int:
        return sum(sink.spool.lines for sink in self.sinks.values())

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._schema(), name="ingest schema")
            tg.create_task(run_connected(self.settings.mqtt, self._connector(), self._session,
                                         name=self.name), name="ingest mqtt")

    async def _schema(self) -> None:
        """The databases, their retention policies and the energy rollups (continuous
        queries, so long reports read 15-minute data, not months of raw points), on every
        server of the routing table. Retried until InfluxDB answers; writes meanwhile wait
        or go to the spool."""
        async with asyncio.TaskGroup() as tg:
            for sink in self.sinks.values():
                tg.create_task(self._schema_on(sink.influx), name=f"ingest schema {sink.name}")

    async def _schema_on(self, influx: InfluxClient) -> None:
        from facility.schema import ensure_downsampling

        backoff = Backoff(initial=0.5, cap=30.0)
        while True:
            try:
                await influx.ensure_database()
                await ensure_downsampling(influx, self.settings.reports)
                return
            except InfluxError as exc:
                if backoff.attempts == 0:
                    log.warning("ingest: cannot set up the InfluxDB schema on %s yet: %s",
                                influx.settings.url, exc)
                await asyncio.sleep(backoff.next_delay())

    def _connector(self) -> Callable[[], AbstractAsyncContextManager[MqttLink]]:
        return connector(self.settings.mqtt, self.client_id,
                         session_expiry=self.options.session_expiry,
                         receive_maximum=self.options.receive_maximum)

    async def _session(self, link: Connection) -> None:
        if self.retiring:
            # The broker queues nothing more for this session; what it holds still comes.
            await link.unsubscribe(self.subscriptions())
        else:
            await link.subscribe(self.subscriptions(), qos=self.options.qos)
        self.ready.set()
        try:
            tasks = {"ingest batches": self._batches(link),
                     "ingest sequences": self._watch_sequences()}
            for sink in self.sinks.values():
                tasks[f"ingest replay {sink.name}"] = self._replay(link, sink)
            await until_lost(link, tasks)
        finally:
            self.ready.clear()

    async def _batches(self, link: Connection) -> None:
        """Collect, convert and write batches, a few writes in flight at once (InfluxDB
        answers while the next batch is read), acknowledging each batch as soon as its
        write is done, in arrival order (a quiet broker leaves no batch unacknowledged)."""
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.options.pipeline)
        order: asyncio.Queue[tuple[asyncio.Task[None], list[Message], float]] = \
            asyncio.Queue()
        stores: set[asyncio.Task[None]] = set()

        async def acknowledge() -> None:
            while True:
                task, done, started = await order.get()
                try:
                    await task
                finally:
                    slots.release()
                link.ack(done)
                self.acknowledged += len(done)
                self._m_batch.observe(loop.time() - started)

        async def collect() -> None:
            while True:
                batch = await self._collect(link)
                self._m_received.inc(len(batch))
                await slots.acquire()
                task = asyncio.create_task(self._store(link, batch))
                stores.add(task)
                task.add_done_callback(stores.discard)
                order.put_nowait((task, batch, loop.time()))

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(acknowledge(), name="ingest acknowledgements")
                tg.create_task(collect(), name="ingest collect")
        finally:
            for task in stores:
                task.cancel()
            await asyncio.gather(*stores, return_exceptions=True)

    async def _replay(self, link: Connection, sink: Sink) -> None:
        """Write a server's spooled batches back, oldest first, once it takes them again."""
        spool = sink.spool
        while True:
            batch_id, lines = await spool.oldest()
            refused = await sink.replayer.write(lines)
            written = len(lines) - len(refused)
            self.written += written
            self._m_written.inc(written)
            for index, reason in refused:
                await self._send_letter(link, self.letters.letter(
                    "(spooled line)", lines[index], "influxdb",
                    f"InfluxDB refused it on replay: {reason}"))
            spool.remove(batch_id, len(lines))
            self._m_spooled.set(self.spooled_lines)

    async def _watch_sequences(self) -> None:
        loop = asyncio.get_running_loop()
        if self.ledger is not None:
            await self._watch_ledger(self.ledger)
            return
        while True:
            await asyncio.sleep(min(10.0, self.options.loss_grace / 2))
            before = dict(self.sequences.lost)
            self.sequences.check(loop.time())
            for gateway, lost in self.sequences.lost.items():
                if lost > before.get(gateway, 0):
                    self._m_lost.labels(gateway).inc(lost - before.get(gateway, 0))

    async def _watch_ledger(self, ledger: SequenceLedger) -> None:
        """The shared loss check (one worker checks, the others only try for the lock:
        often is cheap) and the worker slots' leases."""
        if self.retiring:
            return
        every = min(2.0, self.options.loss_grace / 4)
        if self.options.slot_ttl > 0:
            every = min(every, self.options.slot_ttl / 3)
        adoption: asyncio.Task[None] | None = None
        try:
            while True:
                await asyncio.sleep(every)
                await self._check_ledger(ledger)
                try:
                    adoption = await self._slots(ledger, adoption)
                except LedgerUnavailable as exc:
                    log.warning("ingest: the slot leases cannot be read: %s", exc)
        finally:
            if adoption is not None:
                adoption.cancel()
                await asyncio.gather(adoption, return_exceptions=True)

    async def _take_slot(self, ledger: SequenceLedger) -> None:
        """Hold this worker's slot lease; while a live worker is retiring the slot (this
        process was away longer than slot_ttl), wait until it is done."""
        ttl = self.options.slot_ttl
        if self.retiring or ttl <= 0:
            return
        waited = False
        while not await ledger.hold_slot(self.client_id, ttl, holder=self.client_id):
            if not waited:
                log.warning("ingest: slot %s is being retired by another worker; waiting",
                            self.client_id)
                waited = True
            await asyncio.sleep(1.0)

    async def _slots(self, ledger: SequenceLedger,
                     adoption: asyncio.Task[None] | None) -> asyncio.Task[None] | None:
        """Renew this worker's slot; retire one slot whose lease ran out (its process is
        gone), one at a time. Returns the retiring task, if any."""
        ttl = self.options.slot_ttl
        if ttl <= 0:
            return adoption
        if not await ledger.hold_slot(self.client_id, ttl, holder=self.client_id):
            log.warning("ingest: slot %s is held by a worker retiring it", self.client_id)
        if adoption is not None and not adoption.done():
            return adoption
        for slot in await ledger.orphans():
            if slot != self.client_id and await ledger.hold_slot(slot, ttl):
                return asyncio.create_task(self._adopt(ledger, slot),
                                           name=f"ingest retire {slot}")
        return None

    async def _adopt(self, ledger: SequenceLedger, slot: str) -> None:
        """Retire a dead slot: store what the broker holds for it and end its session, so
        the broker stops giving it a share (docs/ingest.md)."""
        ttl = self.options.slot_ttl
        log.warning("ingest: slot %s silent for over %gs: retiring it", slot, ttl)

        async def renew() -> None:
            while True:
                await asyncio.sleep(ttl / 3)
                with contextlib.suppress(LedgerUnavailable):
                    await ledger.hold_slot(slot, ttl)

        renewing = asyncio.create_task(renew(), name=f"ingest renew {slot}")
        try:
            await retire(self.settings, slot, idle=max(1.0, min(5.0, ttl / 3)))
            await ledger.drop_slot(slot)
        except (MqttError, LedgerUnavailable, TimeoutError) as exc:
            log.warning("ingest: retiring slot %s failed (%s); it will be tried again",
                        slot, exc)
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)

    async def _check_ledger(self, ledger: SequenceLedger) -> None:
        """A round of the shared loss check, if this worker is the checker; a store that
        does not answer delays the check, never the messages."""
        try:
            verdicts = await asyncio.wait_for(ledger.check(time.monotonic()), 30)
        except (TimeoutError, LedgerUnavailable) as exc:
            log.warning("ingest: the loss check failed this round: %s", exc)
            return
        for gateway, verdict in verdicts.items():
            if verdict.lost:
                self._m_lost.labels(gateway).inc(verdict.lost_count)
                self.sequences.lost[gateway] += verdict.lost_count
            self.sequences.late[gateway] += verdict.late
            self.sequences.restarts[gateway] += verdict.restart

    async def _record(self, marks: Marks) -> None:
        """The batch's sequence numbers into the shared ledger, before its acknowledgement.
        PostgreSQL away: they wait in memory and go with the next batch (the messages are
        stored; only their loss check waits)."""
        assert self.ledger is not None
        self._unrecorded.merge(marks)
        if not self._unrecorded.windows:
            return
        pending = self._unrecorded.take()
        try:
            await asyncio.wait_for(self.ledger.record(pending), 10)
        except (TimeoutError, LedgerUnavailable) as exc:
            if not self._unrecorded.windows:
                log.warning("ingest: the sequence ledger did not take %d windows: %s",
                            len(pending), exc)
            self._unrecorded.merge(pending)

    async def _collect(self, link: Connection) -> list[Message]:
        """Up to batch_size messages, or what came within batch_interval of the first."""
        loop = asyncio.get_running_loop()
        size = self.options.batch_size
        batch: list[Message] = []
        deadline: float | None = None
        while len(batch) < size:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            got = await link.next_batch(size - len(batch), timeout)
            if not got:
                break  # the interval is over
            if deadline is None:
                deadline = loop.time() + self.options.batch_interval
            batch.extend(got)
        return batch

    async def _store(self, link: Connection, batch: list[Message]) -> None:
        """Convert a batch, write each point to its site's server (one write per server,
        concurrently), dead-letter what cannot be stored; returns once all is done."""
        groups: dict[str, tuple[Sink, list[bytes], list[int]]] = {}
        letters: list[Letter] = []
        to_line = self.converter.to_line
        site_of = self.converter.site_of
        sink_of = self.sink
        guard = self.letters.run
        for index, message in enumerate(batch):
            out = guard(partial(to_line, message.topic, message.payload), message.topic,
                        message.payload)
            if type(out) is bytes:
                # A line exists only for a topic that parsed, so it has a site.
                sink = sink_of(site_of(message.topic) or "")
                group = groups.get(sink.name)
                if group is None:
                    group = groups[sink.name] = (sink, [], [])
                group[1].append(out)
                group[2].append(index)
            else:
                assert isinstance(out, Letter)
                letters.append(out)
        # The conversion above did not yield, so these are this batch's numbers.
        marks = self.marks.take() if self.ledger is not None else None
        self.received += len(batch)
        if len(groups) == 1:
            for sink, lines, origin in groups.values():
                await self._store_on(sink, lines, origin, batch, letters)
        elif groups:
            await asyncio.gather(*(self._store_on(sink, lines, origin, batch, letters)
                                   for sink, lines, origin in groups.values()))
        if letters:
            # The originals are acknowledged only after their dead letters are at the broker.
            await asyncio.gather(*(self._send_letter(link, letter) for letter in letters))
        if marks is not None:
            await self._record(marks)

    async def _store_on(self, sink: Sink, lines: list[bytes], origin: list[int],
                        batch: list[Message], letters: list[Letter]) -> None:
        if sink.spool.batches == 0:
            try:
                not_written = await sink.writer.write(lines,
                                                      give_up_after=self.options.spool_after)
                for line_index, reason in not_written:
                    message = batch[origin[line_index]]
                    letters.append(self.letters.letter(
                        message.topic, message.payload, "influxdb",
                        f"InfluxDB refused it: {reason}"))
                written = len(lines) - len(not_written)
                self.written += written
                self._m_written.inc(written)
                lines = []
            except Unavailable:
                log.warning("InfluxDB %s unavailable for %gs: spooling to disk", sink.name,
                            self.options.spool_after)
        if lines:  # InfluxDB is away, or batches wait before this one: keep the order
            sink.spool.append(lines)
            self.spooled += len(lines)
            self._m_spooled.set(self.spooled_lines)

    async def _send_letter(self, link: Connection, letter: Letter) -> None:
        if topics.is_kind(letter.origin, Kind.DEADLETTER):
            # A dead letter that cannot be stored is only logged: no loop of letters.
            log.error("a dead letter cannot be stored: %s", letter.text)
            return
        await link.publish(letter.topic, letter.payload)




async def retire(settings: Settings, client_id: str | None = None, *, idle: float = 5.0,
                 timeout: float = 3600.0) -> int:
    """Take a worker slot out for good, losing nothing: connect as the slot, unsubscribe
    (so the broker gives it no more of the shared subscription's messages), store what
    its session still holds (in flight at its last process, queued since), and once
    nothing has come for `idle` seconds and all is acknowledged, end the session. Returns
    how many messages it stored. Left alone, a dead slot's session would keep taking its
    share until it expires, and then discard it (docs/ingest.md)."""
    ingest = Ingest(settings, client_id=client_id, retiring=True)
    loop = asyncio.get_running_loop()
    async with ingest:
        await ingest.wait_ready()
        deadline = loop.time() + timeout
        seen, since = -1, loop.time()
        while loop.time() < deadline:
            await asyncio.sleep(0.2)
            if ingest.received != seen:
                seen, since = ingest.received, loop.time()
            elif ingest.acknowledged == ingest.received and loop.time() - since >= idle:
                break
        else:
            raise TimeoutError(f"slot {ingest.client_id} still busy after {timeout}s")
        stored = ingest.received
    # A clean start discards the (now empty) session at the broker.
    link = await MqttLink.open(settings.mqtt, ingest.client_id, session_expiry=0)
    async with link:
        pass
    log.info("ingest: slot %s retired after storing %d messages", ingest.client_id, stored)
    return stored
