"""A site bridged to the centre on one machine, for tests/test_bridge.py and `python -m bench
bridge`: two real Mosquitto processes (the site's broker with the configuration `facility
broker bridge` generates, the centre's) and a TCP proxy between them that can be cut; a
publisher that sends a site's readings at their normal rate to the site broker, each device
with its own sequence numbers; and the audit of what the centre received.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.aioclient import make_client
from bench.campus_load import Readings
from bench.tcpproxy import TcpProxy
from facility import bridge, topics
from facility import messages as m
from facility.catalog import Catalog
from facility.localservers import MosquittoServer
from facility.settings import MqttSettings, Settings
from facility.topology import Topology


class Rig:
    """The centre's broker, the proxy (the link) and the site's broker bridged through it.

    `settings` are the platform's (its `bridge:` section is used with the proxy's address);
    the site broker's configuration is exactly what `facility broker bridge` writes."""

    def __init__(self, folder: Path, catalog: Catalog, settings: Settings, *,
                 centre_config: str = "max_queued_messages 1000000\n",
                 edit: Callable[[str], str] | None = None) -> None:
        """`edit`: a change to the generated file, for tests of what it must not be."""
        self.folder = folder
        self.catalog = catalog
        self.settings = settings
        self.site_id = catalog.site.site.id
        self.centre = MosquittoServer(folder / "centre", extra_config=centre_config)
        self.site: MosquittoServer | None = None
        self.proxy: TcpProxy | None = None
        self.config = ""
        self.edit = edit

    async def __aenter__(self) -> Rig:
        await asyncio.to_thread(self.centre.start)
        try:
            self.proxy = await TcpProxy("127.0.0.1", self.centre.port).__aenter__()
            options = self.settings.bridge.model_copy(
                update={"remote": f"127.0.0.1:{self.proxy.port}"})
            settings = self.settings.model_copy(update={"bridge": options})
            self.config = bridge.config(self.catalog, settings, self.site_id)
            if self.edit is not None:
                self.config = self.edit(self.config)
            self.site = MosquittoServer(self.folder / "site", extra_config=self.config)
            await asyncio.to_thread(self.site.start)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.site is not None:
            await asyncio.to_thread(self.site.stop)
        if self.proxy is not None:
            await self.proxy.__aexit__()
        await asyncio.to_thread(self.centre.stop)

    @property
    def centre_mqtt(self) -> MqttSettings:
        return MqttSettings(url=SecretStr(self.centre.url))

    @property
    def site_mqtt(self) -> MqttSettings:
        assert self.site is not None
        return MqttSettings(url=SecretStr(self.site.url))

    def site_log(self) -> str:
        return self.site.log_tail(40) if self.site is not None else ""


@dataclass
class Publisher:
    """The site's devices at their report periods, on the site broker, QoS 1. Each
    reading carries its device's next sequence number (Reading.seq)."""

    mqtt: MqttSettings
    catalog: Catalog
    sent: Counter[str] = field(default_factory=Counter)  # device -> last seq sent
    started: float = 0.0

    async def run(self, stop: asyncio.Event, speed: float = 1.0) -> None:
        """Publish until `stop` is set; `speed` > 1 sends faster than real time."""
        site = self.catalog.site
        topology = Topology(self.catalog)
        readings = Readings(site, topology)
        topic = readings.topics
        due = {d.id: 0.0 for d in readings.devices}
        self.started = time.monotonic()
        async with make_client(self.mqtt, f"site-pub-{uuid.uuid4().hex[:8]}") as client:
            while not stop.is_set():
                now = (time.monotonic() - self.started) * speed
                batch = []
                for device in readings.devices:
                    if due[device.id] <= now:
                        due[device.id] += device.period
                        self.sent[device.id] += 1
                        reading = m.Reading(site=site.site.id, family=m.Family(device.family),
                                            device=device.id, ts=time.time_ns(),
                                            values=readings.values(device),
                                            seq=self.sent[device.id])
                        batch.append((topic[device.id], m.encode(reading)))
                for t, payload in batch:  # in order: QoS 1 keeps it per publisher
                    await client.publish(t, payload, qos=1)
                nxt = min(due.values()) / speed
                delay = nxt - (time.monotonic() - self.started)
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)

    @property
    def total(self) -> int:
        return sum(self.sent.values())


@dataclass
class Audit:
    sent: int
    received: int  # messages, duplicates included
    lost: int  # sequence numbers sent and never received
    out_of_order: int  # a new sequence number below one seen before, per device
    duplicates: int  # redelivered (QoS 1 is at least once)
    devices: int
    disorder: list[str] = field(default_factory=list)  # the first few, as device:seq<newest

    def ok(self) -> bool:
        return self.lost == 0 and self.out_of_order == 0


def audit(sent: Counter[str], received: list[tuple[str, bytes]]) -> Audit:
    """Per device: every sequence number 1..sent arrived, and the new ones in order (a
    redelivery after a reconnect repeats numbers already seen: counted, not disorder)."""
    seen: dict[str, set[int]] = {}
    newest: dict[str, int] = {}
    out_of_order = duplicates = count = 0
    disorder: list[str] = []
    for topic, payload in received:
        if not topics.is_kind(topic, topics.Kind.TELEMETRY):
            continue
        count += 1
        reading = m.decode(payload, m.Reading)
        got = seen.setdefault(reading.device, set())
        if reading.seq in got:
            duplicates += 1
            continue
        if reading.seq < newest.get(reading.device, 0):
            out_of_order += 1
            if len(disorder) < 10:
                disorder.append(f"{reading.device}:{reading.seq}<{newest[reading.device]}"
                                f"@{count}")
        got.add(reading.seq)
        newest[reading.device] = max(newest.get(reading.device, 0), reading.seq)
    lost = sum(len(set(range(1, n + 1)) - seen.get(d, set())) for d, n in sent.items())
    return Audit(sent=sum(sent.values()), received=count, lost=lost,
                 out_of_order=out_of_order, duplicates=duplicates, devices=len(sent),
                 disorder=disorder)


def link_states(received: list[tuple[str, bytes]], site: str, name: str) -> list[str]:
    """The link states the centre saw, in order ("1", "0", ...)."""
    link = topics.link(site, name)
    return [payload.decode(errors="replace") for topic, payload in received if topic == link]


def describe(a: Audit) -> dict[str, Any]:
    return {"sent": a.sent, "received": a.received, "lost": a.lost,
            "out_of_order": a.out_of_order, "duplicates": a.duplicates}


class Listener:
    """Keeps every message on some filters of one broker (QoS 1), in arrival order."""

    def __init__(self, mqtt: MqttSettings, *filters: str) -> None:
        self.mqtt = mqtt
        self.filters = filters
        self.messages: list[tuple[str, bytes]] = []
        self.arrived: list[float] = []  # monotonic time of each message
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Listener:
        self._task = asyncio.create_task(self._run(), name="listener")
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with make_client(self.mqtt, f"listener-{uuid.uuid4().hex[:8]}") as client:
            for flt in self.filters:
                await client.subscribe(flt, qos=1)
            self._ready.set()
            async for message in client.messages:
                payload = message.payload
                self.messages.append((message.topic.value, payload if isinstance(
                    payload, bytes) else str(payload).encode()))
                self.arrived.append(time.monotonic())
