"""Vendor MQTT devices on the broker: one connection, one loop per device.

A device publishes one report as soon as it starts, then one per period (simulated
seconds, so a faster clock reports more often in wall time), and at once when its state
changes (events). Whatever the clock does, one device publishes at most one batch per
`min_interval` wall seconds. Messages go through a bounded queue to the one client, which
publishes them with QoS 1 and reconnects with the shared backoff when the broker goes away;
the devices keep running meanwhile and the oldest messages are dropped if it stays away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from facility.mqtt import Connection, run_connected, until_lost
from facility.mqttlink import connector
from facility.settings import MqttSettings
from simulators.clock import SimClock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes


def outgoing(topic: str, body: dict[str, Any]) -> Outgoing:
    """A vendor JSON message: UTF-8, Chinese as is, compact."""
    return Outgoing(topic, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


class MqttDevice(Protocol):
    device_id: str

    def period(self, t: float) -> float:
        """Simulated seconds until the next routine report."""

    def report(self, t: float) -> list[Outgoing]:
        """The routine report(s)."""

    def changes(self, t: float) -> list[Outgoing]:
        """Events and a fresh report for what changed since the last call, or nothing."""

    def next_check(self, t: float) -> float | None:
        """When to look for changes again (simulated time); None: only on a report or wake."""


class Publisher:
    """The simulators' one MQTT client and its outgoing queue."""

    def __init__(self, settings: MqttSettings, client_id: str, *, topic_prefix: str = "",
                 limit: int = 20_000) -> None:
        self.settings = settings
        self.client_id = client_id
        self.topic_prefix = topic_prefix
        self.published = 0
        self.dropped = 0
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()  # set until connected, and again when lost
        self.disconnected.set()
        self.sent = asyncio.Event()  # set after every acknowledged publish
        self._queue: deque[Outgoing] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._pending: Outgoing | None = None

    def submit(self, messages: Iterable[Outgoing]) -> None:
        for message in messages:
            if len(self._queue) >= self._limit:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(message)
        self._ready.set()

    async def run(self) -> None:
        await run_connected(self.settings, connector(self.settings, self.client_id),
                            self._session, name="simulators", on_disconnect=self._lost)

    def _lost(self) -> None:
        self.connected.clear()
        self.disconnected.set()

    async def _session(self, client: Connection) -> None:
        self.connected.set()
        self.disconnected.clear()
        # An idle publisher learns of a lost connection at once, not at its next message.
        await until_lost(client, {"simulators publish": self._publish(client)})

    async def _publish(self, client: Connection) -> None:
        while True:
            if self._pending is None:
                while not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                self._pending = self._queue.popleft()
            message = self._pending
            # Kept as pending until acknowledged: a lost connection resends it (QoS 1).
            await client.publish(self.topic_prefix + message.topic, message.payload, qos=1)
            self._pending = None
            self.published += 1
            self.sent.set()

    async def wait_published(self, count: int) -> None:
        """Until `count` messages have been acknowledged in all (for tests and demos)."""
        while self.published < count:
            self.sent.clear()
            await self.sent.wait()


async def run_device(device: MqttDevice, clock: SimClock, publisher: Publisher,
                     wake: asyncio.Event, min_interval: float) -> None:
    """Report now, then on the period and on changes, until cancelled."""
    next_report = clock.now()
    while True:
        wake.clear()
        now = clock.now()
        messages = device.changes(now)
        if not messages and now >= next_report:
            messages = device.report(now)
        if messages:
            # Every change comes with a fresh report, so the period starts again from it.
            next_report = now + device.period(now)
        if messages:
            publisher.submit(messages)
            await asyncio.sleep(min_interval)  # the per-device rate limit, in wall time
            continue
        check = device.next_check(now)
        due = next_report if check is None else min(next_report, check)
        delay = clock.wall_delay(due - now)
        with contextlib.suppress(TimeoutError):
            # A clock change or a scenario sets `wake`; then the plan is made again.
            async with asyncio.timeout(None if delay is None else max(delay, 0.001)):
                await wake.wait()
