"""Ingest: canonical telemetry, statuses, events and dead letters from the broker into
InfluxDB, in batches, acknowledging each message to the broker only after InfluxDB took it.

Messages arrive over facility.mqttlink (a lean MQTT v5 connection: most of ingest's time
went into paho's per-packet work). The session is persistent (QoS 1, clean start off, a
session expiry), so messages that arrive while ingest is down or restarting wait at the
broker. The broker sends at most `receive_maximum` unacknowledged messages, which bounds
memory while InfluxDB is away. Ingest keeps no state of its own between messages, so N
copies can share the load through an MQTT v5 shared subscription (`ingest.shared_group`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from facility import messages as m
from facility import topics
from facility.influx import InfluxClient
from facility.metrics import Metrics
from facility.mqtt import run_connected
from facility.mqttlink import Message, MqttLink, connector
from facility.service import Service
from facility.settings import Settings
from facility.topics import Kind
from ingest.convert import Converter, Rejected
from ingest.writer import BatchWriter

log = logging.getLogger(__name__)

KINDS = (Kind.TELEMETRY, Kind.STATUS, Kind.EVENT, Kind.DEADLETTER)


class Ingest(Service):
    name = "ingest"

    def __init__(self, settings: Settings, *, client_id: str | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__()
        self.settings = settings
        self.options = settings.ingest
        self.client_id = client_id or f"{settings.mqtt.client_prefix}-{self.options.client_id}"
        self.clock_ns = clock_ns
        self.influx: InfluxClient | None = None
        self.converter = Converter()
        self.writer: BatchWriter | None = None
        self.metrics = Metrics("ingest")
        self._m_received = self.metrics.counter("messages_total", "Messages received")
        self._m_written = self.metrics.counter("points_written_total", "Points InfluxDB accepted")
        self._m_dead = self.metrics.counter("dead_letters_total",
                                            "Messages refused, with a dead letter", ("stage",))
        self._m_batch = self.metrics.histogram(
            "batch_seconds", "Time to write a batch and acknowledge it",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        # Plain counters too, for `facility up` and the tests.
        self.received = 0
        self.written = 0
        self.dead_letters = 0

    def subscriptions(self) -> list[str]:
        filters = [topics.subscription(kind, site=self.options.site) for kind in KINDS]
        group = self.options.shared_group
        return [f"$share/{group}/{f}" for f in filters] if group else filters

    async def open(self) -> None:
        self.influx = InfluxClient(self.settings.influx)
        await self.influx.__aenter__()
        self.writer = BatchWriter(self.influx)

    async def close(self) -> None:
        if self.influx is not None:
            await self.influx.__aexit__(None, None, None)
            self.influx = None

    async def run(self) -> None:
        assert self.writer is not None, "use inside 'async with'"
        await self.writer._ensure_database()
        await run_connected(self.settings.mqtt, self._connector(), self._session, name=self.name)

    def _connector(self) -> Callable[[], AbstractAsyncContextManager[MqttLink]]:
        return connector(self.settings.mqtt, self.client_id,
                         session_expiry=self.options.session_expiry,
                         receive_maximum=self.options.receive_maximum)

    async def _session(self, link: MqttLink) -> None:
        await link.subscribe(self.subscriptions(), qos=self.options.qos)
        self.ready.set()
        try:
            while True:
                await self._one_batch(link)
        finally:
            self.ready.clear()

    async def _one_batch(self, link: MqttLink) -> None:
        """Collect up to batch_size messages or batch_interval seconds, write, then ack."""
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
        started = loop.time()
        self._m_received.inc(len(batch))
        await self._store(link, batch)
        link.ack(batch)
        self._m_batch.observe(loop.time() - started)

    async def _store(self, link: MqttLink, batch: list[Message]) -> None:
        assert self.writer is not None
        lines: list[bytes] = []
        origin: list[int] = []
        refused: list[tuple[int, str, str]] = []  # (index, stage, reason)
        to_line = self.converter.to_line
        for index, message in enumerate(batch):
            try:
                lines.append(to_line(message.topic, message.payload))
                origin.append(index)
            except Rejected as exc:
                refused.append((index, "convert", str(exc)))
        self.received += len(batch)
        for line_index, reason in await self.writer.write(lines):
            refused.append((origin[line_index], "influxdb", f"InfluxDB refused it: {reason}"))
        written = len(lines) - sum(1 for _, stage, _ in refused if stage == "influxdb")
        self.written += written
        self._m_written.inc(written)
        if refused:
            await self._dead_letters(link, batch, refused)

    async def _dead_letters(self, link: MqttLink, batch: list[Message],
                            refused: list[tuple[int, str, str]]) -> None:
        publishes = []
        for index, stage, reason in refused:
            message = batch[index]
            topic = message.topic
            if topic.startswith(topics.PREFIX) and f"/{Kind.DEADLETTER}/" in topic:
                # A dead letter that cannot be stored is only logged: no loop of letters.
                log.error("dead letter on %s cannot be stored: %s", topic, reason)
                continue
            self.dead_letters += 1
            self._m_dead.labels(stage).inc()
            letter = m.DeadLetter.of("ingest", self.clock_ns(), topic, reason, message.payload)
            site = self.converter.site_of(topic) or "unknown"
            publishes.append(link.publish(topics.deadletter(site, "ingest"), m.encode(letter)))
        # The originals are acknowledged only after their dead letters are at the broker.
        await asyncio.gather(*publishes)


