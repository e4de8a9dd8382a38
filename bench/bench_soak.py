"""Soak: the campus under mutated vendor payloads, outages and a fire a minute.

`python -m bench soak --minutes N` (default 2; `--quick` is 1) runs the demo campus for
N minutes under mutated vendor payloads, a Mosquitto restart, an InfluxDB stall, a silent
Modbus host and a fire every minute, and counts service crashes, fires that reached every
screen, readings lost on the way to InfluxDB and dead letters by reason.

Every service runs as its own process, as on the campus, under a small supervisor that
restarts it when it exits and counts each exit as a crash: the three gateways
(`facility gateway --id ...`), ingest, the rules engine, the simulated screens and PA
zones (simulators/display_player.py) and the simulated campus (its Modbus servers and
vendor MQTT devices, in a process of this module so a Modbus host can be silenced). The
broker and InfluxDB are private (free ports, own data dirs, Mosquitto with persistence).

Traffic beside the simulators' own: good vendor messages (the simulators' payloads,
captured at the start, sent again with a fresh sample time) and mutated ones, about 5 %
of what this benchmark sends. The mutations (bench/mutate.py) are every field of every
mapping in config/vendors/ broken by every rule, handed out round robin so a run covers
as many of them as it sends (the rate is chosen to cover all of them in the run, between
1 and 12 mutated messages a second).

Disturbances, each at least once in any run, repeated every 10 minutes in a longer one:
Mosquitto stopped for 3 s and started on the same port and data; InfluxDB stopped
(SIGSTOP) for 20 s; one Modbus host (the main building's meters) silent for 20 s; and a
fire every minute: a GST detector's data report with state ALARM, sent on the vendor
topic the gateway reads, timed to every screen's display message, the PA broadcast and
all 14 confirmations, then cleared and acknowledged as an operator would.

The sequence audit: a subscriber with a persistent session records every reading and
event the gateways publish (gateway, sequence number, device, time, quality). At the
end, after the traffic stopped and ingest had time to drain (bounded), each of them must
be in InfluxDB; numbers missing in a gateway's sequence never reached the broker. Both
count as lost, unless ingest refused the message with a dead letter (counted apart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter, defaultdict
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec

from bench import mutate
from bench.aioclient import connected, make_client
from bench.bench_alert_latency import Probe, Trial, percentiles
from bench.campus_load import CONFIG_DIR, ENDPOINTS_FILE, RULES_DIR, SITE_FILE, write_yaml
from bench.common import Figure, figure
from facility import messages as m
from facility import topics
from facility.configfile import read_yaml
from facility.endpoints import load_endpoints
from facility.influx import InfluxClient
from facility.localservers import InfluxServer, MosquittoServer, free_port
from facility.mqtt import run_connected
from facility.settings import Settings, load_settings
from facility.site import load_site
from facility.topics import Kind
from rules.ops import AlertOpsClient

REPO = Path(__file__).resolve().parent.parent
BROKER = "max_queued_messages 1000000\nmax_inflight_messages 0\n"
MUTATED_SHARE = 0.05
FIRE_PLACES = ["main-building", "east-annex", "west-annex", "conference-centre", "canteen"]
FIRE_TIMEOUT = 60.0  # s for a fire to reach every screen and the PA and be confirmed
CYCLE_MAX = 600.0  # s: the disturbances repeat this often in a long run
DEAD_LETTER_KINDS_SHOWN = 8  # kinds of reason listed per source and exception class
SIMULATED_HOST_INDEX = 1  # the second Modbus host of the site file (15021: the main
# building's four meters) goes silent


# --- configuration ---------------------------------------------------------------------------

def write_config(folder: Path, mqtt_url: str, influx_url: str) -> tuple[Path, str]:
    """Settings and a site file (the campus's, Modbus ports moved to free ones, plus one
    detector per building that only this benchmark reports for); returns the settings
    file and the silenced Modbus host as host:port."""
    site: dict[str, Any] = read_yaml(SITE_FILE)
    ports: dict[tuple[str, int], int] = {}
    for device in site["devices"]:
        modbus = device.get("modbus")
        if modbus:
            where = (modbus["host"], modbus["port"])
            if where not in ports:
                ports[where] = free_port()
            modbus["host"] = "127.0.0.1"
            modbus["port"] = ports[where]
    for n, place in enumerate(FIRE_PLACES, start=1):
        site["devices"].append({
            "id": f"soak-fd-{n}", "family": "fire", "kind": "smoke_detector",
            "name": f"压力测试烟感{n}", "gateway": "gw-iot", "place": place,
            "mqtt": {"vendor": "gst-fire", "key": f"SOAK/{n}/1"}})
    write_yaml(folder / "site.yaml", site)
    silenced = ports[sorted(ports)[min(SIMULATED_HOST_INDEX, len(ports) - 1)]]
    config = write_yaml(folder / "facility.yaml", {
        "site_file": str(folder / "site.yaml"),
        "mqtt": {"url": mqtt_url, "client_prefix": "soak", "keepalive": 10},
        "influx": {"url": influx_url, "database": "facility"},
        "state": {"url": f"sqlite:///{folder / 'state.sqlite'}"},
        "config_dir": str(CONFIG_DIR),  # the shipped maps, mappings, endpoints and rules
        "vendors_dir": str(mutate.VENDORS_DIR),
        "spool": {"dir": str(folder / "spool")},
        "rules": {"rules_dir": str(RULES_DIR)}})
    return config, f"127.0.0.1:{silenced}"


# --- processes under a supervisor ------------------------------------------------------------

@dataclass
class Crash:
    service: str
    code: int | None
    at: float  # s into the run
    why: str
    tail: str = ""


class Supervised:
    """A service process that is started again whenever it exits; each exit not asked
    for is a crash."""

    def __init__(self, name: str, argv: list[str], folder: Path, crashes: list[Crash],
                 started: float, metrics_port: int = 0) -> None:
        self.name = name
        self.argv = argv
        self.log = folder / f"{name}.log"
        self.crashes = crashes
        self.started = started
        self.metrics_port = metrics_port
        self.process: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.spawned = 0.0
        self.delay = 0.5
        self.crashed = asyncio.Event()  # set at each crash

    async def spawn(self) -> None:
        self.spawned = time.monotonic()
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, *self.argv, stdout=log, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, cwd=str(REPO))

    async def start(self) -> None:
        await self.spawn()
        self.task = asyncio.create_task(self._watch(), name=f"supervise {self.name}")

    async def _watch(self) -> None:
        while True:
            assert self.process is not None
            code = await self.process.wait()
            if self.stopping:
                return
            self.crashes.append(Crash(self.name, code, time.monotonic() - self.started,
                                      last_error(self.log), log_tail(self.log)))
            self.crashed.set()
            print(f"  ! {self.name} exited ({code}) at {self.crashes[-1].at:.0f} s: "
                  f"{self.crashes[-1].why}; restarting", flush=True)
            # As a supervisor would: after a pause that grows while it keeps failing.
            ran = time.monotonic() - self.spawned
            self.delay = 1.0 if ran > 30 else min(15.0, self.delay * 2)
            await asyncio.sleep(self.delay)
            await self.spawn()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /healthz answers 200 (services with a metrics port)."""
        import aiohttp

        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as reply:
                        if reply.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout:.0f} s: {last_error(self.log)}")

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def last_error(log: Path) -> str:
    """The last line of a log that names an exception, or its last line."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    for line in reversed(lines[-200:]):
        if re.match(r"^\s*[A-Za-z_.]*(Error|Exception|Exit|Interrupt)\b", line):
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "(empty log)"


async def scrape(port: int) -> dict[str, float]:
    """A service's /metrics: each sample's name (without labels) -> the sum of its values;
    empty when the service does not answer."""
    import aiohttp

    out: dict[str, float] = defaultdict(float)
    try:
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{port}/metrics",
                timeout=aiohttp.ClientTimeout(total=2)) as reply:
            text = await reply.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name.split("{")[0]] += float(value)
    return out


# --- the simulated campus, as a process of its own ------------------------------------------

async def run_simulators(config: Path, silence: str) -> None:
    """The campus's simulators, without this benchmark's own detectors; SIGUSR1 closes
    the Modbus server at `silence` (host:port), SIGUSR2 opens it again."""
    from simulators.campus import Campus
    from simulators.clock import SimClock

    settings = load_settings(config)
    site = load_site(settings.site_path)
    site = site.model_copy(update={"devices": [d for d in site.devices
                                               if not d.id.startswith("soak-")]})
    host, port = silence.rsplit(":", 1)
    where = (host, int(port))
    async with Campus(site, settings.mqtt, clock=SimClock(), seed=1) as campus:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()

        def later(coro: Any) -> None:
            task = loop.create_task(coro)
            pending.add(task)
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGUSR1, lambda: later(campus.modbus_server_down(where)))
        loop.add_signal_handler(signal.SIGUSR2, lambda: later(campus.modbus_server_up(where)))
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


# --- watching the broker: the audit and the fire probe --------------------------------------

@dataclass
class Published:
    measurement: str
    device: str
    ts: int
    good: bool
    quality: str = "good"


@dataclass
class Audit:
    """Every reading and event the gateways published, by gateway and sequence number."""

    recording: bool = True
    epochs: dict[str, list[dict[int, Published]]] = field(default_factory=dict)
    duplicates: int = 0
    undecodable: int = 0

    def take(self, kind: Kind, payload: bytes) -> None:
        if not self.recording:
            return
        try:
            if kind is Kind.TELEMETRY:
                r = m.decode(payload, m.Reading)
                gateway, seq = r.gateway, r.seq
                item = Published(r.family.value, r.device, r.ts, r.quality is m.Quality.GOOD,
                                 r.quality.value)
            else:
                e = m.decode(payload, m.Event)
                gateway, seq = e.gateway, e.seq
                item = Published("device_event", e.device,
                                 e.ts + zlib.crc32(e.id.encode()) % 1000, True)
        except (m.ContractError, msgspec.MsgspecError, ValueError):
            self.undecodable += 1
            return
        if not gateway or seq <= 0:
            return
        epochs = self.epochs.setdefault(gateway, [{}])
        current = epochs[-1]
        if seq in current:
            if current[seq].ts == item.ts and current[seq].device == item.device:
                self.duplicates += 1  # QoS 1 may bring a message twice
                return
            epochs.append({})  # the gateway started again and counts from 1
            current = epochs[-1]
        elif seq <= 10 < max(current, default=0) and len(epochs[-1]) > 10:
            epochs.append({})
            current = epochs[-1]
        current[seq] = item

    def gaps(self) -> dict[str, int]:
        """Sequence numbers never seen, per gateway (each run of it counts from 1)."""
        return {gw: sum(max(e) - len(e) for e in epochs if e)
                for gw, epochs in self.epochs.items()}

    def items(self) -> list[tuple[str, int, Published]]:
        return [(gw, seq, p) for gw, epochs in self.epochs.items() for e in epochs
                for seq, p in e.items()]


class Watcher(Probe):
    """The fire probe of the alert-latency benchmark on a persistent session that
    reconnects, plus the audit's subscriber."""

    def __init__(self, settings: Settings, site_id: str, screens: list[str]) -> None:
        super().__init__(settings.mqtt, site_id, screens)
        self.audit = Audit()
        self.connected = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        s = self.site_id
        client_id = f"soak-watch-{uuid.uuid4().hex[:6]}"

        def client() -> AbstractAsyncContextManager[aiomqtt.Client]:
            return connected(self.mqtt, client_id, session_expiry=3600,
                             receive_maximum=20000)

        async def session(c: aiomqtt.Client) -> None:
            for flt in (topics.subscription(Kind.TELEMETRY, s),
                        topics.subscription(Kind.EVENT, s),
                        topics.subscription(Kind.DISPLAY, s),
                        topics.subscription(Kind.BROADCAST, s),
                        topics.subscription(Kind.DISPLAY_ACK, s),
                        topics.subscription(Kind.ALERT, s)):
                await c.subscribe(flt, qos=1)
            ready.set()
            self.connected.set()
            try:
                async for message in c.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    topic = message.topic.value
                    kind = topics.parse(topic).kind
                    if kind in (Kind.TELEMETRY, Kind.EVENT):
                        self.audit.take(kind, payload)
                    else:
                        with contextlib.suppress(m.ContractError, msgspec.MsgspecError):
                            self.take(topic, payload, time.perf_counter_ns())
            finally:
                self.connected.clear()

        await run_connected(self.mqtt, client, session, name="soak watcher")


# --- vendor traffic: good and mutated -------------------------------------------------------

class Traffic:
    """Captures the simulators' vendor messages, then sends them again with fresh times
    (good) and mutated, the mutated ones MUTATED_SHARE of all it sends."""

    def __init__(self, settings: Settings, shapes: list[mutate.Shape], keys: dict[str, list[str]],
                 mutated_rate: float) -> None:
        self.mqtt = settings.mqtt
        self.shapes = shapes
        self.keys = keys  # vendor -> device keys of the site (not this benchmark's own)
        self.mutator = mutate.Mutator(shapes)
        self.mutated_rate = mutated_rate
        self.good_rate = mutated_rate * (1 - MUTATED_SHARE) / MUTATED_SHARE
        self.captured: dict[str, dict[str, tuple[str, dict[str, Any]]]] = defaultdict(dict)
        self.sent = Counter[str]()  # good, mutated, failed
        self.rng = random.Random(5)

    async def capture(self, seconds: float) -> None:
        """Keep the simulators' messages per shape and topic for `seconds`."""
        filters = sorted({s.topic for s in self.shapes})
        deadline = time.monotonic() + seconds
        async with make_client(self.mqtt, f"soak-capture-{uuid.uuid4().hex[:6]}") as client:
            for flt in filters:
                await client.subscribe(flt, qos=0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    async for message in client.messages:
                        shape = mutate.shape_of(self.shapes, message.topic.value)
                        if shape is None or shape.is_event or message.topic.value.startswith(
                                "gst/SOAK/"):
                            continue
                        with contextlib.suppress(ValueError):
                            body = json.loads(message.payload)
                            if isinstance(body, dict):
                                self.captured[shape.id][message.topic.value] = \
                                    (message.topic.value, body)
                        if len(self.captured) == sum(not s.is_event for s in self.shapes) \
                                and time.monotonic() > deadline - seconds / 2:
                            return

    def _base(self, shape: mutate.Shape) -> tuple[str, dict[str, Any]]:
        pool = self.captured.get(shape.id)
        if pool:
            topic, body = self.rng.choice(list(pool.values()))
            body = json.loads(json.dumps(body))
        else:
            key = self.rng.choice(self.keys.get(shape.vendor) or ["unknown"])
            if "+/+/+" in shape.topic and key.count("/") != 2:
                key = self.rng.choice([k for k in self.keys.get(shape.vendor, [])
                                       if k.count("/") == 2] or ["X/1/1"])
            elif shape.topic.count("+") == 1 and shape.topic.startswith("gst/"):
                key = key.split("/")[0]
            topic, body = mutate.synthesize(shape, key, time.time(), self.rng.randint(1, 10**6))
        mutate.refresh(shape, {"topic": topic.split("/"), "payload": body}, time.time())
        return topic, body

    def good(self) -> tuple[str, bytes]:
        shape_id = self.rng.choice(list(self.captured))
        shape = next(s for s in self.shapes if s.id == shape_id)
        topic, body = self._base(shape)
        return topic, mutate.encode(body)

    def mutated(self) -> tuple[str, bytes]:
        mutation = self.mutator.next()
        topic, body = self._base(mutation.shape)
        return mutate.apply(mutation, topic, body)

    async def run(self) -> None:
        def client() -> AbstractAsyncContextManager[aiomqtt.Client]:
            return connected(self.mqtt, f"soak-traffic-{uuid.uuid4().hex[:6]}",
                             max_inflight=1000)

        async def session(c: aiomqtt.Client) -> None:
            started = time.monotonic()
            done_good = done_mutated = 0
            while True:
                elapsed = time.monotonic() - started
                batch = []
                while done_good < int(elapsed * self.good_rate) and self.captured:
                    batch.append(("good", *self.good()))
                    done_good += 1
                while done_mutated < int(elapsed * self.mutated_rate):
                    batch.append(("mutated", *self.mutated()))
                    done_mutated += 1
                self.rng.shuffle(batch)
                try:
                    async with asyncio.timeout(15):  # a publish on a dead link never ends
                        results = await asyncio.gather(
                            *(c.publish(topic, payload, qos=1) for _, topic, payload in batch),
                            return_exceptions=True)
                except TimeoutError:
                    self.sent["failed"] += len(batch)
                    raise aiomqtt.MqttError("publishes unconfirmed for 15 s") from None
                for (what, _, _), result in zip(batch, results, strict=True):
                    if isinstance(result, aiomqtt.MqttError):
                        self.sent["failed"] += 1
                    elif isinstance(result, Exception):  # the client refused to send it
                        self.sent[f"not sent ({type(result).__name__})"] += 1
                        if self.sent[f"not sent ({type(result).__name__})"] == 1:
                            print(f"  ! the client refused a message: {result!r}",
                                  file=sys.stderr, flush=True)
                    else:
                        self.sent[what] += 1
                if any(isinstance(r, aiomqtt.MqttError) for r in results):
                    raise aiomqtt.MqttError("publish failed")
                await asyncio.sleep(0.05)

        await run_connected(self.mqtt, client, session, name="soak traffic")


# --- fires ----------------------------------------------------------------------------------

def detector_message(n: int, state: str) -> tuple[str, bytes]:
    body = {"time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 8 * 3600)),
            "smoke": 0.25 if state == "ALARM" else 0.01, "temp": 27.0, "state": state}
    return f"gst/SOAK/{n}/1/data", json.dumps(body).encode()


@dataclass
class Fire:
    n: int
    trial: Trial
    complete: bool = False
    problem: str = ""


async def fire(watcher: Watcher, settings: Settings, site_id: str, n: int) -> Fire:
    """One fire at soak detector n (1..5): alarm, every screen and the PA confirmed,
    then clear, acknowledge, screens back from the emergency (all bounded)."""
    device = f"soak-fd-{(n - 1) % len(FIRE_PLACES) + 1}"
    index = (n - 1) % len(FIRE_PLACES) + 1
    trial = Trial(device)
    result = Fire(n, trial)
    watcher.trial = trial
    try:
        async with make_client(settings.mqtt, f"soak-fire-{uuid.uuid4().hex[:6]}") as client:
            trial.published = time.perf_counter_ns()
            await client.publish(*detector_message(index, "ALARM"), qos=1)
            await watcher.until(f"fire {n}: every screen, the PA and their confirmations",
                                lambda: trial.confirmed, timeout=FIRE_TIMEOUT)
            result.complete = True
            await watcher.until(f"fire {n}: the alert message",
                                lambda: device in watcher.raised, timeout=20)
            trial.alert = watcher.raised.pop(device)
            await client.publish(*detector_message(index, "NORMAL"), qos=1)
        async with AlertOpsClient(settings.mqtt, site_id) as ops:
            for _ in range(40):
                answer = await ops.request(m.AlertAction.ACKNOWLEDGE, trial.alert, "值班员",
                                           comment="压力测试")
                if answer.ok:
                    break
                await asyncio.sleep(0.25)  # the clear may not be taken in yet
        await watcher.until(f"fire {n}: the screens back from the evacuation", lambda: all(
            watcher.shown.get(s) != "emergency" for s in watcher.screens), timeout=50)
    except (RuntimeError, aiomqtt.MqttError, TimeoutError) as exc:
        result.problem = str(exc)[:200]
        print(f"  ! fire {n}: {result.problem}", flush=True)
    finally:
        watcher.trial = None
    return result


# --- InfluxDB at the end --------------------------------------------------------------------

async def stored_points(db: InfluxClient, measurements: set[str]) -> set[tuple[str, str, int]]:
    out: set[tuple[str, str, int]] = set()
    for name in sorted(measurements):
        column = "id" if name == "device_event" else "quality"
        result = await db.query(f'SELECT "{column}" FROM "{name}" GROUP BY "device"')
        for series in result[0] if result else []:
            device = series.tags.get("device", "")
            out.update((name, device, int(row[0])) for row in series.values)
    return out


async def refused_by_ingest(db: InfluxClient) -> set[tuple[str, int]]:
    """(gateway, seq) of the gateways' messages that ingest refused with a dead letter."""
    result = await db.query("SELECT \"payload\", \"encoding\" FROM \"dead_letter\" "
                            "WHERE \"source\" = 'ingest'")
    out = set()
    for series in result[0] if result else []:
        for _, payload, encoding in series.values:
            if encoding != "utf-8":
                continue
            with contextlib.suppress(ValueError, TypeError, msgspec.MsgspecError):
                body = msgspec.json.decode(payload)
                if isinstance(body, dict) and body.get("gateway") and body.get("seq"):
                    out.add((str(body["gateway"]), int(body["seq"])))
    return out


_CLASS = re.compile(r"\s*([A-Z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*): ")


def reason_class(reason: str) -> str:
    """The exception class a reason starts with ('MappingError: ...'), if it names one."""
    match = _CLASS.match(reason)
    return match.group(1) if match else "(no class named)"


def reason_detail(reason: str) -> str:
    """The reason without its class, the value's name and the values in it, so letters
    of one kind group together ('…: … is a str, not a number')."""
    text = _CLASS.sub("", reason, count=1)
    text = re.sub(r"^[a-z_][a-z0-9_]*: ", "…: ", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"|-?\d[\d.e+-]*|<[^<>]*>", "…", text)
    text = re.sub(r"\(at [^)]*\)", "(at …)", text)
    return text[:70]


async def dead_letters(db: InfluxClient) -> dict[tuple[str, str], Counter[str]]:
    """(source, class) -> letters by kind of reason, commonest first."""
    result = await db.query('SELECT "reason" FROM "dead_letter" GROUP BY "source"')
    counts: Counter[tuple[str, str]] = Counter()
    details: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for series in result[0] if result else []:
        source = series.tags.get("source", "?")
        for _, reason in series.values:
            key = (source, reason_class(str(reason)))
            counts[key] += 1
            details[key][reason_detail(str(reason))] += 1
    return {key: details[key] for key, _ in counts.most_common()}


# --- the run --------------------------------------------------------------------------------

@dataclass
class Plan:
    seconds: float
    fires: list[float]
    restarts: list[float]
    stalls: list[float]
    silences: list[float]
    outage: float  # s an InfluxDB stall and a Modbus silence last


def plan(minutes: float) -> Plan:
    seconds = minutes * 60
    cycle = min(seconds, CYCLE_MAX)
    starts = [c * cycle for c in range(int(seconds // cycle))]
    outage = min(20.0, 0.2 * cycle)
    return Plan(seconds, [20 + 60 * k for k in range(max(1, int((seconds - 20) // 60) + 1))
                          if 20 + 60 * k < seconds],
                [s + 0.35 * cycle for s in starts], [s + 0.5 * cycle for s in starts],
                [s + 0.75 * cycle for s in starts], outage)


def _quiet_lost_links(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """aiomqtt leaves a future with the broken link's error unread when the broker goes
    away; that is the restart this benchmark makes, not news."""
    if isinstance(context.get("exception"), aiomqtt.MqttError):
        return
    loop.default_exception_handler(context)


def _report_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        print(f"  ! {task.get_name()} failed: {task.exception()!r}", file=sys.stderr, flush=True)


async def at(t0: float, offset: float) -> None:
    await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))


async def run(quick: bool, minutes: float | None = None) -> list[Figure]:
    minutes = minutes if minutes is not None else (1.0 if quick else 2.0)
    asyncio.get_running_loop().set_exception_handler(_quiet_lost_links)
    schedule = plan(minutes)
    folder = Path(tempfile.mkdtemp(prefix="facility-soak-"))
    broker = MosquittoServer(folder / "mosquitto", extra_config=BROKER)
    influx = InfluxServer(folder / "influxdb")
    services: list[Supervised] = []
    crashes: list[Crash] = []
    tasks: list[asyncio.Task[Any]] = []
    events: list[str] = []
    try:
        await asyncio.to_thread(broker.start)
        await asyncio.to_thread(influx.start)
        config, silenced = write_config(folder, broker.url, influx.url)
        settings = load_settings(config)
        site = load_site(settings.site_path)
        site_id = site.site.id
        screens = [e.id for e in load_endpoints(ENDPOINTS_FILE, site).endpoints if not e.is_pa]
        watcher = Watcher(settings, site_id, screens)
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(watcher.run(ready), name="watcher"))
        await asyncio.wait_for(ready.wait(), 30)

        started = time.monotonic()
        base = ["-m", "app", "--config", str(config), "--log-level", "WARNING"]

        def service(name: str, argv: list[str], metrics: bool = True) -> Supervised:
            port = free_port() if metrics else 0
            extra = ["--metrics", f"127.0.0.1:{port}"] if metrics else []
            s = Supervised(name, argv + extra, folder, crashes, started, port)
            services.append(s)
            return s

        ingest = service("ingest", [*base, "ingest"])
        gateways = [service(g.id, [*base, "gateway", "--id", g.id]) for g in site.gateways]
        rules = service("rules", [*base, "rules", "run"])
        player = service("screens", ["-m", "simulators.display_player", "--config",
                                     str(config), "--journal", str(folder / "screens.jsonl")],
                         metrics=False)
        sim = service("simulators", ["-m", "bench.bench_soak", "sim", str(config), silenced],
                      metrics=False)
        # Ingest first: until its persistent session exists, the broker keeps nothing
        # for it, and a gateway's first readings would be lost at start, not in the soak.
        await ingest.start()
        await ingest.wait_ready()
        for s in (*gateways, rules, player):
            await s.start()
        for s in gateways:
            await s.wait_ready()
        await watcher.until("the rules engine's normal content on every screen",
                            lambda: all(watcher.shown.get(s) == "normal" for s in screens),
                            timeout=120)
        await sim.start()

        shapes = mutate.load_shapes(settings.resolve(settings.vendors_dir))
        keys: dict[str, list[str]] = defaultdict(list)
        for d in site.devices:
            if d.mqtt is not None and not d.id.startswith("soak-"):
                keys[d.mqtt.vendor].append(d.mqtt.key)
        total = len(mutate.all_mutations(shapes))
        mutated_rate = min(12.0, max(1.0, total / (schedule.seconds * 0.9)))
        traffic = Traffic(settings, shapes, keys, mutated_rate)
        await traffic.capture(15.0)
        print(f"  soak: {minutes:g} min; {total} mutations at {mutated_rate:.1f}/s beside "
              f"{traffic.good_rate:.0f} good vendor messages/s; captured "
              f"{sum(len(v) for v in traffic.captured.values())} simulator messages of "
              f"{len(traffic.captured)} shapes; services up in "
              f"{time.monotonic() - started:.0f} s", flush=True)

        t0 = time.monotonic()
        spooled_max = 0.0

        async def sample_ingest() -> None:
            nonlocal spooled_max
            while True:
                sample = await scrape(ingest.metrics_port)
                spooled_max = max(spooled_max, sample.get("facility_ingest_spooled_points", 0))
                await asyncio.sleep(1.0)

        tasks.append(asyncio.create_task(sample_ingest(), name="sample ingest"))
        traffic_task = asyncio.create_task(traffic.run(), name="traffic")
        traffic_task.add_done_callback(_report_failure)
        tasks.append(traffic_task)
        fires: list[Fire] = []

        def log_event(text: str) -> None:
            events.append(f"{time.monotonic() - t0:5.0f} s {text}")
            print(f"  {events[-1]}", flush=True)

        async def fires_task() -> None:
            for n, offset in enumerate(schedule.fires, start=1):
                await at(t0, offset)
                log_event(f"fire {n}")
                fires.append(await fire(watcher, settings, site_id, n))

        async def restarts_task() -> None:
            for offset in schedule.restarts:
                await at(t0, offset)
                log_event("Mosquitto stopped")
                await asyncio.to_thread(broker.stop)
                await asyncio.sleep(3.0)  # the outage itself
                await asyncio.to_thread(broker.start)
                log_event("Mosquitto started again")

        async def stalls_task() -> None:
            for offset in schedule.stalls:
                await at(t0, offset)
                log_event("InfluxDB stopped (SIGSTOP)")
                influx.pause()
                try:
                    await asyncio.sleep(schedule.outage)
                finally:
                    influx.resume()
                log_event("InfluxDB continued (SIGCONT)")

        async def silences_task() -> None:
            for offset in schedule.silences:
                await at(t0, offset)
                log_event(f"Modbus host {silenced} silent")
                sim.signal(signal.SIGUSR1)
                await asyncio.sleep(schedule.outage)
                sim.signal(signal.SIGUSR2)
                log_event(f"Modbus host {silenced} back")

        scenario = [asyncio.create_task(c(), name=c.__name__) for c in
                    (fires_task, restarts_task, stalls_task, silences_task)]
        tasks += scenario
        await at(t0, schedule.seconds)
        await asyncio.gather(*scenario)
        soak_seconds = time.monotonic() - t0
        if traffic_task.done() and traffic_task.exception() is not None:
            raise RuntimeError("the vendor traffic stopped") from traffic_task.exception()
        traffic_task.cancel()
        await asyncio.gather(traffic_task, return_exceptions=True)
        # What the gateways published from here on is not audited; what they published
        # before must reach InfluxDB.
        await asyncio.sleep(1.0)  # the last messages in flight to the watcher
        watcher.audit.recording = False
        items = watcher.audit.items()
        measurements = {p.measurement for _, _, p in items}
        drain_started = time.monotonic()
        async with InfluxClient(settings.influx) as db:
            missing: list[tuple[str, int, Published]] = items
            refused: set[tuple[str, int]] = set()
            while True:
                stored = await stored_points(db, measurements)
                refused = await refused_by_ingest(db)
                missing = [(gw, seq, p) for gw, seq, p in items
                           if (p.measurement, p.device, p.ts) not in stored
                           and (gw, seq) not in refused]
                if not missing or time.monotonic() - drain_started > 90:
                    break
                await asyncio.sleep(2.0)
            letters = await dead_letters(db)
        ingest_lost = (await scrape(ingest.metrics_port)).get(
            "facility_ingest_sequence_lost_total", 0.0)
        drained = time.monotonic() - drain_started
    except BaseException:
        for s in services:
            if s.log.exists():
                print(f"--- {s.name}.log ---\n{s.log.read_text(errors='replace')[-2000:]}",
                      file=sys.stderr)
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in reversed(services):
            await s.stop()
        await asyncio.to_thread(influx.stop)
        await asyncio.to_thread(broker.stop)
        shutil.rmtree(folder, ignore_errors=True)

    share = traffic.sent["mutated"] / max(1, traffic.sent["mutated"] + traffic.sent["good"]) * 100
    silent = {d.id for d in site.devices
              if d.modbus is not None and f"127.0.0.1:{d.modbus.port}" == silenced}
    seen_silent = Counter(p.quality for _, _, p in items if p.device in silent and not p.good)
    gaps = watcher.audit.gaps()
    lost_gaps = sum(gaps.values())
    lost_good = sum(1 for _, _, p in missing if p.good)
    by_gateway = Counter(gw for gw, _, _ in missing)
    complete = [f for f in fires if f.complete]
    ms = 1e-6
    out_ms = [(max([*f.trial.displays.values(), f.trial.broadcast]) - f.trial.published) * ms
              for f in complete]
    confirmed_ms = [(max(f.trial.acks.values()) - f.trial.published) * ms for f in complete]
    crash_note = "; ".join(f"{c.service} exit {c.code} at {c.at:.0f} s: {c.why}"
                           for c in crashes[:5]) or "none"
    figures = [
        figure("service crashes (exits, each restarted)", len(crashes), "exits", at_most=0,
               note=crash_note),
        figure("fires that reached all 13 screens and the PA, confirmed", len(complete),
               "fires", at_least=len(schedule.fires),
               note="; ".join([f"of {len(schedule.fires)}"]
                              + [f"fire {f.n}: {f.problem}" for f in fires if f.problem])),
    ]
    if complete:
        for name, values in (("fire -> all 13 screens and the PA zone", out_ms),
                             ("fire -> all 14 confirmed", confirmed_ms)):
            p50, p99, worst = percentiles(values)
            figures += [figure(f"{name}, p50", p50, "ms"),
                        figure(f"{name}, p99", p99, "ms", note=f"max {worst:.0f} ms")]
    figures += [
        figure("readings and events lost (sequence audit)", len(missing) + lost_gaps,
               "msgs", at_most=0,
               note=f"of {len(items):,} the gateways published: {lost_good} good ones not "
                    f"in InfluxDB, {len(missing) - lost_good} others, {lost_gaps} sequence "
                    f"numbers never seen ({dict(gaps) if lost_gaps else 'none'}); "
                    f"by gateway {dict(by_gateway) or 'none'}; refused by ingest "
                    f"{len(refused)}; duplicates {watcher.audit.duplicates}; drained in "
                    f"{drained:.0f} s"),
        figure("good readings lost (in the audit above)", lost_good, "msgs", at_most=0),
        figure("ingest's own count of gateway messages never arrived", ingest_lost, "msgs",
               note="facility_ingest_sequence_lost_total at the end (since its last start)"),
        figure("ingest's disk spool at its fullest (InfluxDB stalled)", spooled_max, "points",
               note="facility_ingest_spooled_points, sampled every second"),
        figure("vendor messages sent: good", traffic.sent["good"], "msgs",
               note=f"failed while the broker was away: {traffic.sent['failed']}"),
        figure("vendor messages sent: mutated", traffic.sent["mutated"], "msgs",
               note=f"{share:.1f} % of sent"),
        figure("mutations covered (shape, field, rule)", len(traffic.mutator.covered), "kinds",
               note=f"of {total}"),
        figure("readings of the silenced Modbus host's devices, not good", sum(
            seen_silent.values()), "msgs", note=f"{len(silent)} devices at {silenced}: "
            f"{dict(seen_silent) or 'none: the silence was not seen'}"),
        figure("soak duration", soak_seconds, "s", note="; ".join(events)),
    ]
    for (source, reason), kinds in letters.items():
        figures.append(figure(f"dead letters: {source}: {reason}", kinds.total(), "letters",
                              note=f"{len(kinds)} kinds of reason"))
        shown = kinds.most_common(DEAD_LETTER_KINDS_SHOWN)
        for detail, n in shown:
            figures.append(figure(f"  {detail}", n, "letters"))
        rest = kinds.total() - sum(n for _, n in shown)
        if rest:
            figures.append(figure("  (other reasons)", rest, "letters"))
    for gw, seq, p in missing[:10]:
        print(f"  lost: {gw} seq {seq}: {p.measurement} {p.device} ts {p.ts} {p.quality}",
              file=sys.stderr)
    for crash in crashes:
        print(f"--- {crash.service} exited ({crash.code}) at {crash.at:.0f} s; its log "
              f"before:\n{crash.tail}", file=sys.stderr)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="the soak benchmark's simulator process")
    parser.add_argument("role", choices=["sim"])
    parser.add_argument("config", type=Path)
    parser.add_argument("silence", help="host:port of the Modbus server SIGUSR1 silences")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_simulators(args.config, args.silence))


if __name__ == "__main__":
    main()
