"""`facility up`: the whole platform with simulators in one process, for the demo.

Starts (optionally) InfluxDB and Mosquitto, writes the last 35 days of simulated history
into an empty database (app/history.py), then starts ingest, the rules engine with the
simulated screens and PA zones, the control-room API, the simulators and every gateway of
the site file, and prints what runs, the message rate per device family over a window that
suits the family, and new alerts as they happen. Ctrl-C or SIGTERM stops it all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
import unicodedata
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from api.service import ApiService
from app import history, wiring
from csms.service import CentralSystem
from duty.config import DutySettings
from duty.service import DutyService
from facility import labels, topics
from facility import messages as m
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

HISTORY_DAYS = 35  # simulated history written into an empty database


# Each family's rate is counted over a window that suits how often its devices speak: the
# bollard PLC every second, meters every 10 s, fire detectors every 30 s, chargers every
# 15-60 s, LoRa drainage sensors every 5 minutes. A window shorter than a few of a family's
# periods shows 0 most of the time.
WINDOWS: dict[str, float] = {"bollard": 10.0, "energy": 60.0, "fire": 300.0,
                             "ev_charger": 300.0, "drainage": 900.0, "gas": 900.0}
DEFAULT_WINDOW = 300.0


def text_width(text: str) -> int:
    """Columns a terminal gives the text: East Asian wide and full-width characters two."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def pad(text: str, width: int, *, right: bool = False) -> str:
    space = " " * max(0, width - text_width(text))
    return space + text if right else text + space


def table(rows: list[list[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Rows in aligned columns (CJK width aware); `right`: the columns aligned right."""
    widths = [max(text_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(pad(cell, widths[i], right=i in right)
                             for i, cell in enumerate(row)).rstrip() for row in rows]


def window_text(seconds: float) -> str:
    return f"{seconds:g} 秒" if seconds < 60 else f"{seconds / 60:g} 分钟"


class RateMonitor(Service):
    """Counts canonical telemetry per family and hears new alerts (QoS 0, never in
    anyone's way)."""

    name = "monitor"

    def __init__(self, settings: Settings, windows: dict[str, float] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_alert: Callable[[m.AlertMessage], None] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.windows = dict(WINDOWS if windows is None else windows)
        self.clock = clock
        self.on_alert = on_alert
        self.totals: Counter[str] = Counter()
        self.arrivals: dict[str, deque[float]] = defaultdict(deque)
        self.dead_letters = 0
        self.started = clock()

    async def run(self) -> None:
        client_id = f"{self.settings.mqtt.client_prefix}-monitor-{time.monotonic_ns() % 10**6}"
        await run_connected(self.settings.mqtt, connector(self.settings.mqtt, client_id),
                            self._session, name="monitor", on_disconnect=self.ready.clear)

    async def _session(self, client: Connection) -> None:
        await client.subscribe([topics.subscription(Kind.TELEMETRY),
                                topics.subscription(Kind.DEADLETTER),
                                topics.subscription(Kind.ALERT)], qos=0)
        self.ready.set()
        while True:
            for message in await client.next_batch(1000, None):
                self.seen(message.topic, message.payload)

    def seen(self, topic: str, payload: bytes = b"") -> None:
        if topics.is_kind(topic, Kind.DEADLETTER):
            self.dead_letters += 1
            return
        if topics.is_kind(topic, Kind.ALERT):
            if self.on_alert is not None:
                with contextlib.suppress(m.ContractError):
                    self.on_alert(m.decode(payload, m.AlertMessage))
            return
        with contextlib.suppress(topics.TopicError):
            family = topics.parse(topic).family
            if family:
                self.count(family)

    def count(self, family: str, n: int = 1) -> None:
        now = self.clock()
        self.totals[family] += n
        self.arrivals[family].extend([now] * n)
        self._trim(family, now)

    def _trim(self, family: str, now: float) -> None:
        window = self.windows.get(family, DEFAULT_WINDOW)
        queue = self.arrivals[family]
        while queue and queue[0] <= now - window:
            queue.popleft()

    def rates(self) -> dict[str, tuple[float, int, float]]:
        """Per family: (its window, messages in the last window, per second over it). Until
        a window has passed since the start, the rate is over the time so far."""
        now = self.clock()
        out = {}
        for family in self.totals:
            self._trim(family, now)
            window = self.windows.get(family, DEFAULT_WINDOW)
            span = max(min(window, now - self.started), 1e-9)
            n = len(self.arrivals[family])
            out[family] = (window, n, n / span)
        return out


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
    """The demo until Ctrl-C or SIGTERM; either stops everything it started, the InfluxDB
    and Mosquitto of --start-servers included (the exit stacks unwind on cancellation)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        log.info("SIGTERM: stopping")
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await _run_up(args, settings, catalog)
    except asyncio.CancelledError:
        if not terminated:
            raise
        task.uncancel()
        return 0
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _run_up(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    site = catalog.site
    with contextlib.ExitStack() as servers:
        if args.start_servers:
            _start_servers(settings, servers)
        campus: Campus | None = None
        if not args.no_simulators:
            clock = SimClock(start=args.start.timestamp() if args.start else None,
                             scale=args.speed)
            campus = Campus(site, settings.mqtt, clock=clock, seed=args.seed)
            days = float(getattr(args, "history_days", HISTORY_DAYS))
            if days > 0:
                # An empty database first gets the campus's past, from the same models.
                done = await history.backfill(settings, catalog, campus, days=days)
                if done is not None:
                    print(f"已写入 {done.days:g} 天模拟历史数据：{done.lines} 条"
                          f"（含15分钟汇总），用时 {done.seconds:.1f} 秒", flush=True)
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
            monitor = RateMonitor(settings, on_alert=lambda a: print_alert(a, site))
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
            if campus is not None:
                await stack.enter_async_context(campus)
                log.info("simulators running (seed %d, speed x%g)", args.seed, args.speed)
            for spec in site.gateways:
                if spec.kind is GatewayKind.MODBUS:
                    await start(f"gateway {spec.id}", Gateway(settings, catalog, spec.id))
            wiring.freeze()  # everything is up: its long-lived objects stay out of gc
            stack.callback(wiring.thaw)
            await _report(running, monitor, args.every, site)
    return 0


def print_alert(alert: m.AlertMessage, site: SiteConfig) -> None:
    """A new alert as it happens, one line (raised, raised again, escalated)."""
    if alert.transition not in ("raised", "re_raised", "escalated"):
        return
    when = datetime.fromtimestamp(alert.ts / 1e9, ZoneInfo(site.site.timezone)).strftime(
        "%H:%M:%S")  # the campus's time, as the page and the reports show it
    severity = (alert.peak_severity or alert.severity).value
    place = next((p.name for p in site.places if p.id == alert.place), alert.place)
    word = "报警升级" if alert.transition == "escalated" else "新报警"
    parts = [f"*** {word} {when}", labels.SEVERITY.get(severity, severity),
             labels.FAMILY.get(alert.family, alert.family), place or "—",
             alert.title or alert.text]
    if alert.drill:
        parts.insert(1, labels.DRILL_PREFIX)
    print("  ".join(p for p in parts if p), flush=True)


def status_lines(running: list[tuple[str, Service]], monitor: RateMonitor,
                 site: SiteConfig) -> list[str]:
    now = datetime.now(ZoneInfo(site.site.timezone))
    lines = [f"--- facility up：{site.site.name}（{site.site.id}） {now:%H:%M:%S}"]
    rows = [["服务", "状态", "说明"]]
    for name, svc in running:
        state = "已连接" if svc.ready.is_set() else "连接中"
        extra = ""
        if isinstance(svc, Ingest):
            extra = f"收到 {svc.received}  写入 {svc.written}  死信 {svc.dead_letters}"
        elif isinstance(svc, Gateway):
            offline = sum(1 for s in svc.status.values() if s.state.value == "offline")
            extra = f"设备 {len(svc.devices)}  离线 {offline}"
        elif isinstance(svc, CentralSystem):
            extra = (f"充电桩 {len(svc.config.charge_points)}  "
                     f"在线 {len(svc.sessions)}  死信 {svc.letters.total}")
        rows.append([name, state, extra])
    lines += table(rows)
    rates = monitor.rates()
    rows = [["系统", "统计窗口", "窗口内条数", "条/秒", "累计"]]
    for family in sorted(monitor.totals):
        window, n, rate = rates[family]
        rows.append([labels.FAMILY.get(family, family), window_text(window), str(n),
                     f"{rate:.2f}", str(monitor.totals[family])])
    if len(rows) > 1:
        lines += table(rows, right=frozenset({2, 3, 4}))
    if monitor.dead_letters:
        lines.append(f"  死信 {monitor.dead_letters} 条")
    return lines


async def _report(running: list[tuple[str, Service]], monitor: RateMonitor, every: float,
                  site: SiteConfig) -> None:
    tasks = [svc.task for _, svc in running]
    while True:
        done, _ = await asyncio.wait(tasks, timeout=every, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a service that died takes the demo down with its error
        print("\n".join(status_lines(running, monitor, site)), flush=True)
