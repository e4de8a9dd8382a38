"""`facility up`: the whole platform with simulators in one process, for the demo.

Starts (optionally) InfluxDB and Mosquitto, then ingest, the rules engine with the
simulated screens and PA zones, the control-room API, the simulators and every gateway of
the site file, and prints what runs and the live message rate per device family.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from pathlib import Path
from urllib.parse import urlsplit

from api.service import ApiService
from app import wiring
from duty.config import DutySettings
from duty.service import DutyService
from facility import topics
from facility.catalog import Catalog
from facility.localservers import InfluxServer, MosquittoServer, port_open
from facility.mqtt import Connection, parse_url, run_connected
from facility.mqttlink import connector
from facility.service import Service
from facility.settings import Settings
from facility.site import GatewayKind, SiteConfig
from facility.topics import Kind
from gateway.service import Gateway
from ingest.service import Ingest
from rules.service import RulesService
from simulators.campus import Campus
from simulators.clock import SimClock

log = logging.getLogger("facility.up")


class RateMonitor(Service):
    """Counts canonical telemetry per family (QoS 0, never in anyone's way)."""

    name = "monitor"

    def __init__(self, settings: Settings, window: float = 10.0) -> None:
        super().__init__()
        self.settings = settings
        self.window = window
        self.totals: Counter[str] = Counter()
        self.samples: deque[tuple[float, Counter[str]]] = deque()
        self.dead_letters = 0

    async def run(self) -> None:
        client_id = f"{self.settings.mqtt.client_prefix}-monitor-{time.monotonic_ns() % 10**6}"
        await run_connected(self.settings.mqtt, connector(self.settings.mqtt, client_id),
                            self._session, name="monitor", on_disconnect=self.ready.clear)

    async def _session(self, client: Connection) -> None:
        await client.subscribe([topics.subscription(Kind.TELEMETRY),
                                topics.subscription(Kind.DEADLETTER)], qos=0)
        self.ready.set()
        while True:
            for message in await client.next_batch(1000, None):
                topic = message.topic
                if topics.is_kind(topic, Kind.DEADLETTER):
                    self.dead_letters += 1
                    continue
                with contextlib.suppress(topics.TopicError):
                    family = topics.parse(topic).family
                    if family:
                        self.totals[family] += 1

    def rates(self) -> dict[str, float]:
        now = time.monotonic()
        self.samples.append((now, Counter(self.totals)))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        then, old = self.samples[0]
        span = max(now - then, 1e-9)
        return {family: (count - old.get(family, 0)) / span
                for family, count in self.totals.items()}


def _start_servers(settings: Settings, stack: contextlib.ExitStack) -> None:
    """Start InfluxDB and Mosquitto on the configured ports if nothing answers there."""
    var = settings.resolve(settings.spool.dir).parent  # beside the spools: var/ in the demo
    influx = urlsplit(settings.influx.url)
    host, port = influx.hostname or "127.0.0.1", influx.port or 8086
    if not port_open(host, port):
        server = InfluxServer(var / "influxdb", host=host, port=port)
        log.info("starting InfluxDB on %s:%d (data in %s)", host, port, server.data_dir)
        server.start()
        stack.callback(server.stop)
    broker = parse_url(settings.mqtt.url.get_secret_value())
    if not port_open(broker.host, broker.port):
        mqtt = MosquittoServer(var / "mosquitto", host=broker.host, port=broker.port,
                               extra_config=settings.resolve(Path("mosquitto/demo.conf"))
                               .read_text(encoding="utf-8"))
        log.info("starting Mosquitto on %s:%d", broker.host, broker.port)
        mqtt.start()
        stack.callback(mqtt.stop)


async def run_up(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    site = catalog.site
    with contextlib.ExitStack() as servers:
        if args.start_servers:
            _start_servers(settings, servers)
        async with contextlib.AsyncExitStack() as stack:
            running: list[tuple[str, Service]] = []

            async def start(name: str, svc: Service) -> None:
                await stack.enter_async_context(svc)
                running.append((name, svc))
                await svc.wait_ready(60)

            # Everything that listens starts before the simulated devices speak: they send
            # one report each at start, and a subscriber that is not there yet misses it.
            ingest = Ingest(settings)
            await start("ingest", ingest)
            monitor = RateMonitor(settings)
            await stack.enter_async_context(monitor)
            engine = RulesService(settings, catalog)
            engine.on_reload = wiring.freeze
            for svc in (wiring.display_player(settings, engine), engine,
                        ApiService(settings, catalog)):
                await start(svc.name, svc)
            # People in the loop: notifications that escalate, acknowledge links, work
            # orders (channels only where FACILITY_DUTY_*_URL are set; docs/duty.md).
            await start("duty", DutyService(settings, DutySettings().site or site.site.id,
                                            places={p.id: p.name for p in site.places}))
            for spec in site.gateways:
                if spec.kind is GatewayKind.MQTT:
                    await start(f"gateway {spec.id}", Gateway(settings, catalog, spec.id))
            if any(spec.kind is GatewayKind.OCPP for spec in site.gateways):
                central, fleet = wiring.ocpp(settings, catalog, simulate=not args.no_simulators)
                await start(central.name, central)
                if fleet is not None:  # the OCPP chargers, simulated on the library's client
                    await stack.enter_async_context(fleet)
            if not args.no_simulators:
                clock = SimClock(start=args.start.timestamp() if args.start else None,
                                 scale=args.speed)
                campus = Campus(site, settings.mqtt, clock=clock, seed=args.seed)
                await stack.enter_async_context(campus)
                log.info("simulators running (seed %d, speed x%g)", args.seed, args.speed)
            for spec in site.gateways:
                if spec.kind is GatewayKind.MODBUS:
                    await start(f"gateway {spec.id}", Gateway(settings, catalog, spec.id))
            wiring.freeze()  # everything is up: its long-lived objects stay out of gc
            stack.callback(wiring.thaw)
            await _report(running, monitor, args.every, site)
    return 0


async def _report(running: list[tuple[str, Service]], monitor: RateMonitor, every: float,
                  site: SiteConfig) -> None:
    tasks = [svc.task for _, svc in running]
    while True:
        done, _ = await asyncio.wait(tasks, timeout=every, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a service that died takes the demo down with its error
        lines = [f"--- facility up: {site.site.name} ({site.site.id}) "
                 f"{time.strftime('%H:%M:%S')}"]
        for name, svc in running:
            state = "connected" if svc.ready.is_set() else "connecting"
            extra = ""
            if isinstance(svc, Ingest):
                extra = (f"  received {svc.received}  written {svc.written}"
                         f"  dead letters {svc.dead_letters}")
            elif isinstance(svc, Gateway):
                offline = sum(1 for s in svc.status.values() if s.state.value == "offline")
                extra = f"  devices {len(svc.devices)}  offline {offline}"
            lines.append(f"  {name:<24} {state:<11}{extra}")
        rates = monitor.rates()
        lines.append("  family         msg/s   total")
        for family in sorted(monitor.totals):
            rate, total = rates.get(family, 0.0), monitor.totals[family]
            lines.append(f"  {family:<12} {rate:7.1f} {total:7d}")
        print("\n".join(lines), flush=True)


