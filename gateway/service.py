"""A gateway: reads its devices (Modbus polls or vendor MQTT) and publishes canonical
readings, events and statuses on the broker.

One gateway runs per `gateways:` entry of the site file. It announces itself with a
retained status and an MQTT last will, keeps polling while the broker is away (its
outbox spools to disk and replays in order), and dead-letters what it cannot decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import msgspec

from facility import messages as m
from facility import topics
from facility.catalog import Catalog
from facility.configfile import ConfigError
from facility.deadletters import DeadLetters, Letter, Payload
from facility.messages import Availability, CommandStatus, DeviceStatus, Family, Quality, Reading
from facility.metrics import Metrics
from facility.modbusmaps import CommandSpec, RegisterMap
from facility.mqtt import Connection, MqttError, Will, run_connected, until_lost
from facility.mqttlink import MqttLink, connector
from facility.outbox import Outbox
from facility.service import Service
from facility.settings import Settings
from facility.site import Device, GatewayKind
from facility.vendormaps import VendorMapping
from gateway.commands import CommandExecutor, CommandLog
from gateway.modbus.decode import decode_block
from gateway.modbus.poller import HostPoller, PolledDevice, PollResult, Sink
from gateway.modbus.registermap import Block, compile_plan
from gateway.vendors import VendorDecoder

log = logging.getLogger(__name__)


class Gateway(Service, Sink):
    def __init__(self, settings: Settings, catalog: Catalog, gateway_id: str, *,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__()
        self.name = f"gateway {gateway_id}"
        self.settings = settings
        self.site = site = catalog.site
        self.site_path = str(catalog.site_path)
        self.site_id = site.site.id
        try:
            self.spec = site.gateway(gateway_id)
        except KeyError:
            known = ", ".join(g.id for g in site.gateways)
            raise ConfigError(f"gateway {gateway_id!r} is not in the site file (known: {known})") \
                from None
        self.id = gateway_id
        self.clock_ns = clock_ns
        self.devices = site.devices_of(gateway_id)
        self._seq = itertools.count(1)
        self.last_seq = 0  # the last sequence number given to a message
        self.metrics = Metrics("gateway")
        self._m_readings = self.metrics.counter("readings_total", "Readings published",
                                                ("family", "quality"))
        self._m_events = self.metrics.counter("events_total", "Events published", ("family",))
        self.letters = DeadLetters(gateway_id, self.site_id, metrics=self.metrics,
                                   clock_ns=clock_ns)
        self.status: dict[str, DeviceStatus] = {}
        self._status_dirty: set[str] = set()
        self._status_wake = asyncio.Event()
        self.pollers: list[HostPoller] = []
        self.executors: list[CommandExecutor] = []
        self.command_log: CommandLog | None = None
        self._commands: set[asyncio.Task[CommandStatus]] = set()
        self.decoders: list[VendorDecoder] = []
        self.last_seen: dict[str, float] = {}
        if self.spec.kind is GatewayKind.MODBUS:
            self._build_pollers(catalog.models)
        else:
            self._build_decoders(catalog.vendors)
        self.outbox: Outbox | None = None

    # --- set-up -------------------------------------------------------------------------

    def _build_pollers(self, models: Mapping[str, RegisterMap]) -> None:
        hosts: dict[tuple[str, int], list[PolledDevice]] = defaultdict(list)
        self._labels: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        for device in self.devices:
            endpoint = device.modbus
            assert endpoint is not None
            regmap = models[endpoint.model]  # the catalog checked it is there, units too
            count = device.units.count if device.units else 0
            plan = compile_plan(regmap, count)
            hosts[(endpoint.host, endpoint.port)].append(PolledDevice(device, plan))
            own = {p.name: p.unit for p in regmap.points if p.unit}
            per_unit = {p.name: p.unit for p in regmap.units.points if p.unit} \
                if regmap.units else {}
            self._labels[device.id] = (own, per_unit)
        self.pollers = [HostPoller(host, port, devs, self, clock_ns=self.clock_ns)
                        for (host, port), devs in hosts.items()]
        self._command_targets: list[tuple[HostPoller, PolledDevice, CommandSpec]] = []
        for poller in self.pollers:
            for polled in poller.devices:
                commands = models[polled.modbus.model].commands
                if commands is not None:
                    self._command_targets.append((poller, polled, commands))

    def _build_decoders(self, vendors: Mapping[str, VendorMapping]) -> None:
        for vendor in self.spec.vendors:  # the catalog checked each has a mapping
            self.decoders.append(VendorDecoder(vendors[vendor], self.site, self.id,
                                               self.clock_ns))

    def _next_seq(self) -> int:
        self.last_seq = next(self._seq)
        return self.last_seq

    def _rewind(self, seq: int) -> None:
        """Give back the sequence numbers a failed message took: nothing was published
        with them, and a gap would count as a message lost on the way."""
        self._seq = itertools.count(seq + 1)
        self.last_seq = seq

    @property
    def dead_letters(self) -> int:
        return self.letters.total

    # --- running ------------------------------------------------------------------------

    async def open(self) -> None:
        folder = self.settings.spool_path("gateway")
        if getattr(self, "_command_targets", None):
            self.command_log = CommandLog(folder / f"{self.id}-commands.sqlite")
            self.executors = [
                CommandExecutor(poller, polled, spec, self.command_log, self.publish_result,
                                clock_ns=self.clock_ns)
                for poller, polled, spec in self._command_targets]
        spool = folder / f"{self.id}.sqlite"
        self.outbox = Outbox(spool, memory_limit=self.settings.spool.memory_limit,
                             window=self.settings.spool.publish_window)
        if self.outbox.spool.count:
            log.info("%s: %d messages spooled from before; they go first", self.name,
                     self.outbox.spool.count)

    async def close(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        if self.command_log is not None:
            self.command_log.close()
            self.command_log = None

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            for task in list(self._commands):
                task.cancel()
            await asyncio.gather(*self._commands, return_exceptions=True)

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_connected(self.settings.mqtt, self._connector(), self._session,
                                         name=self.name, on_disconnect=self._disconnected),
                           name=f"{self.id} mqtt")
            for poller in self.pollers:
                tg.create_task(poller.run(), name=f"{self.id} modbus {poller.name}")
            if self.decoders:
                tg.create_task(self._watchdog(), name=f"{self.id} watchdog")

    def _connector(self) -> Callable[[], contextlib.AbstractAsyncContextManager[MqttLink]]:
        will = Will(topics.status(self.site_id, Family.GATEWAY, self.id),
                    m.encode(self._gateway_status(Availability.OFFLINE, "connection lost")))
        # A persistent session: vendor messages and commands sent while the gateway is
        # away wait for it (each is acknowledged once its readings are in the outbox).
        return connector(self.settings.mqtt, f"{self.settings.mqtt.client_prefix}-{self.id}",
                         session_expiry=24 * 3600, will=will)

    def _gateway_status(self, state: Availability, reason: str) -> DeviceStatus:
        return DeviceStatus(site=self.site_id, family=Family.GATEWAY, device=self.id,
                            ts=self.clock_ns(), state=state, reason=reason, gateway=self.id)

    def _disconnected(self) -> None:
        self.ready.clear()
        if self.outbox is not None:
            self.outbox.disconnected()

    async def _session(self, client: Connection) -> None:
        assert self.outbox is not None
        await client.publish(topics.status(self.site_id, Family.GATEWAY, self.id),
                             m.encode(self._gateway_status(Availability.ONLINE, "running")),
                             qos=1, retain=True)
        vendor_filters = [flt for decoder in self.decoders
                          for flt in decoder.mapping.subscriptions()]
        if vendor_filters:
            await client.subscribe(vendor_filters, qos=1)
        if self.executors:
            # Exactly our own devices' command topics: the broker's ACL allows no more.
            await client.subscribe([topics.command(self.site_id, family, device_id)
                                    for executor in self.executors
                                    for device_id, family in executor.commandable()], qos=1)
        self._status_dirty.update(self.status)
        self.ready.set()
        tasks = {f"{self.id} outbox": self.outbox.drain(client),
                 f"{self.id} statuses": self._publish_statuses(client)}
        if self.decoders or self.executors:
            tasks[f"{self.id} receive"] = self._receive(client)
        try:
            await until_lost(client, tasks)
        except asyncio.CancelledError:
            # A clean stop sends no will: say so ourselves, briefly, then stop.
            with contextlib.suppress(MqttError, asyncio.TimeoutError):
                async with asyncio.timeout(2.0):
                    await client.publish(
                        topics.status(self.site_id, Family.GATEWAY, self.id),
                        m.encode(self._gateway_status(Availability.OFFLINE, "stopped")),
                        qos=1, retain=True)
            raise
        finally:
            self.ready.clear()

    # --- publishing ---------------------------------------------------------------------

    def _put(self, topic: str, message: msgspec.Struct) -> None:
        assert self.outbox is not None, "gateway not opened"
        self.outbox.put(topic, m.encode(message))

    def publish_reading(self, reading: Reading) -> None:
        self._put(topics.telemetry(reading.site, reading.family, reading.device), reading)
        self._m_readings.labels(reading.family, reading.quality).inc()

    def publish_event(self, event: m.Event) -> None:
        self._put(topics.event(event.site, event.family, event.device), event)
        self._m_events.labels(event.family).inc()

    def publish_result(self, result: m.CommandResult) -> None:
        self._put(topics.command_result(result.site, result.family, result.device), result)

    def set_status(self, device_id: str, family: Family, state: Availability, reason: str) -> None:
        self.status[device_id] = DeviceStatus(site=self.site_id, family=family, device=device_id,
                                              ts=self.clock_ns(), state=state, reason=reason,
                                              gateway=self.id)
        self._status_dirty.add(device_id)
        self._status_wake.set()

    async def _publish_statuses(self, client: Connection) -> None:
        # Retained latest state, not a queue: after an outage only the current state matters.
        while True:
            while self._status_dirty:
                device_id = self._status_dirty.pop()
                status = self.status[device_id]
                try:
                    await client.publish(topics.status(status.site, status.family, device_id),
                                         m.encode(status), qos=1, retain=True)
                except MqttError:
                    self._status_dirty.add(device_id)
                    raise
            self._status_wake.clear()
            await self._status_wake.wait()

    def _send_letter(self, letter: Letter) -> None:
        assert self.outbox is not None, "gateway not opened"
        self.outbox.put(letter.topic, letter.payload)

    def _guarded(self, handler: Callable[[], None], topic: str, payload: Payload) -> None:
        """Run one message's handler; whatever it raises becomes a dead letter (refused or
        quarantined), and the sequence numbers it took are given back."""
        before = self.last_seq
        out = self.letters.run(handler, topic, payload)
        if isinstance(out, Letter):
            self._rewind(before)
            self._send_letter(out)

    # --- Modbus sink --------------------------------------------------------------------

    def poll_done(self, polled: PolledDevice, result: PollResult) -> None:
        # A poll's results are this path's message: a failure on them must not stop the
        # host's poller (and every device behind it).
        self._guarded(lambda: self._poll_done(polled, result),
                      topics.telemetry(self.site_id, polled.device.family, polled.device.id),
                      lambda: msgspec.json.encode({"values": result.values,
                                                   "errors": result.errors,
                                                   "quality": result.quality}))

    def decode(self, polled: PolledDevice, block: Block, data: Sequence[int] | Sequence[bool],
               result: PollResult) -> bool:
        device = polled.device
        out = self.letters.run(
            partial(decode_block, block, data, result.values, result.errors),
            topics.telemetry(self.site_id, device.family, device.id),
            lambda: msgspec.json.encode({"table": block.table, "start": block.start,
                                         "registers": list(data)}))
        if isinstance(out, Letter):
            self._send_letter(out)
            return False
        return True

    def _poll_done(self, polled: PolledDevice, result: PollResult) -> None:
        device = polled.device
        own_units, unit_units = self._labels[device.id]
        base_tags = self.site.base_tags(device)
        self._publish_poll(device.id, device.family, 0, result, own_units, base_tags)
        if device.units:
            unit_tags = {**base_tags, "controller": device.id}
            for n, unit_id in enumerate(device.unit_ids(), start=1):
                if n in result.values or n in result.errors:
                    self._publish_poll(unit_id, device.units.family, n, result, unit_units,
                                       unit_tags)

    def _publish_poll(self, device_id: str, family: Family, unit: int, result: PollResult,
                      labels: dict[str, str], tags: dict[str, str]) -> None:
        values = result.values.get(unit, {})
        quality = result.quality.get(unit, Quality.GOOD)
        if not values and quality is Quality.GOOD:
            return
        if not values and unit:
            return  # a silent controller is reported once, on its own reading
        reading = Reading(site=self.site_id, family=family, device=device_id, ts=result.ts,
                          values=values, units={k: labels[k] for k in values if k in labels},
                          quality=quality, tags=tags, gateway=self.id, seq=self._next_seq(),
                          errors=result.errors.get(unit, {}))
        self.publish_reading(reading)

    def availability_changed(self, polled: PolledDevice, state: Availability, reason: str) -> None:
        self.set_status(polled.device.id, polled.device.family, state, reason)

    # --- vendor MQTT --------------------------------------------------------------------

    async def _receive(self, client: Connection) -> None:
        while True:
            batch = await client.next_batch(1000, None)
            for message in batch:
                topic, payload = message.topic, message.payload
                self._guarded(partial(self._handle, topic, payload), topic, payload)
            client.ack(batch)  # in the outbox or dead-lettered: never redelivered

    def _handle(self, topic: str, payload: bytes) -> None:
        if topics.is_kind(topic, topics.Kind.COMMAND, site=self.site_id):
            self._command(topic, payload)
            return
        decoder = next((d for d in self.decoders if d.matches(topic)), None)
        if decoder is None:
            return
        out = decoder.decode(topic, payload, self._next_seq)
        self._seen(out.device)
        if out.reading is not None:
            self.publish_reading(out.reading)
        for event in out.events:
            self.publish_event(event)

    def _command(self, topic: str, payload: bytes) -> None:
        where = topics.parse(topic)
        command = m.decode(payload, m.Command)
        executor = next((e for e in self.executors if e.handles(where.name)), None)
        if executor is None:
            return  # another gateway's device
        if (command.site, command.device) != (where.site, where.name):
            raise m.ContractError("command payload names another device")
        # Run beside the receiver: a bollard takes seconds to move.
        task = asyncio.get_running_loop().create_task(executor.execute(command),
                                                      name=f"command {command.id}")
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    def _seen(self, device: Device) -> None:
        self.last_seen[device.id] = asyncio.get_running_loop().time()
        current = self.status.get(device.id)
        if current is None or current.state is not Availability.ONLINE:
            self.set_status(device.id, device.family, Availability.ONLINE, "reporting")

    async def _watchdog(self) -> None:
        """Devices that stop reporting go offline after stale_factor x their report period."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        limits = {}
        for decoder in self.decoders:
            limit = decoder.mapping.report_period * self.settings.gateway.stale_factor
            for device in decoder.devices.values():
                limits[device.id] = (device, limit)
        step = max(1.0, min(limit for _, limit in limits.values()) / 10) if limits else 10.0
        while True:
            await asyncio.sleep(step)
            now = loop.time()
            for device_id, (device, limit) in limits.items():
                silent_for = now - self.last_seen.get(device_id, started)
                current = self.status.get(device_id)
                if silent_for > limit and (current is None
                                           or current.state is Availability.ONLINE):
                    self.set_status(device_id, device.family, Availability.OFFLINE,
                                    f"no report for {silent_for:.0f}s")
