"""Alert latency: a fire detector's reading published -> the evacuation message published
to every LED screen, terminal and the PA zone -> each of them confirmed, idle and under
10,000 readings/s of background telemetry on the same broker.

Four processes besides the benchmark's own, as on the campus: Mosquitto (private, on a
free port), the rules engine (`facility rules run`, with the campus rules, 1,000
generated rules and the site file plus generated devices, about 2,100 sources), the
simulated screens and PA zones (simulators/display_player.py), and a load generator
publishing realistic canonical readings of every device round robin, QoS 1, at a fixed
rate. The benchmark is the fire: it publishes a detector's reading with state ALARM
(fire-detector-alarm raises on it), times the 13 display messages and the PA broadcast it
causes and their confirmations, then clears the alert (state normal), acknowledges it as
an operator would (AlertOpsClient) and waits for the screens' normal content before the
next trial. Every trial must produce its alert, all 14 messages and all 14 confirmations.

The state store is SQLite by default; `python -m bench alert_latency --state postgresql`
puts it in a new database on the machine's PostgreSQL (127.0.0.1:5432, dropped after),
and `--state postgresql-leased` runs the engine as a leased worker (`facility rules
workers`, every write fenced by its lease, docs/rules.md); that one serves no metrics, so
the in-engine step figures are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import mqtt5
import msgspec

from bench.aioclient import make_client
from bench.campus_load import (
    CONFIG_DIR,
    ENDPOINTS_FILE,
    RULES_DIR,
    Readings,
    catalog_of,
    generated_rules,
    scaled_site,
    write_yaml,
)
from bench.common import Figure, figure, servers
from facility import messages as m
from facility import topics
from facility.endpoints import load_endpoints
from facility.localservers import free_port, postgres_database
from facility.mqttlink import MqttLink
from facility.settings import MqttSettings, load_settings
from facility.site import load_site
from facility.topics import Kind
from facility.topology import Topology
from rules.ops import AlertOpsClient

REPO = Path(__file__).resolve().parent.parent
# The broker as the campus should run it: without set_tcp_nodelay Mosquitto holds back
# the second and later of a burst of small messages to one client until that client's
# delayed TCP acknowledgement, up to 40 ms (measured: 45 ms instead of 7 ms to all screens).
BROKER = "max_queued_messages 10000000\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
RATE = 10_000  # background readings per second
SCREENS = 13  # 7 outdoor LED, 2 indoor LED walls, 4 terminals: all get the evacuation
TRIAL_TIMEOUT = 30.0  # s for one trial's messages (a trial that takes this long has failed)
# Pause between fires. Back to back (20 a second), the fires' own traffic (an alarm, 14
# messages out, 14 confirmations, a clear, an acknowledgement, 14 more out and back, the
# alert messages and their commits) was most of the engine's work; the campus sees a few
# alarms an hour. Half a second keeps the measured load the background telemetry.
TRIAL_GAP = 0.5
STATES = ("sqlite", "postgresql", "postgresql-leased")  # where the rules engine's state is


# --- the processes ---------------------------------------------------------------------------

@contextlib.contextmanager
def state_store(folder: Path, state: str) -> Iterator[str]:
    """The state store's URL: an SQLite file in `folder`, or a new database on the
    machine's PostgreSQL, dropped afterwards."""
    if state not in STATES:
        raise ValueError(f"--state: one of {', '.join(STATES)}, not {state!r}")
    if state == "sqlite":
        yield f"sqlite:///{folder / 'state.sqlite'}"
        return
    with postgres_database("facility_bench") as url:
        yield url


def write_config(folder: Path, mqtt_url: str, state_url: str = "") -> Path:
    """Settings, site and rules for the rules engine and the screens, in `folder`."""
    site = load_site(write_yaml(folder / "site.yaml", scaled_site()))
    rules = folder / "rules"
    rules.mkdir()
    for path in RULES_DIR.glob("*.yaml"):
        shutil.copy(path, rules / path.name)
    write_yaml(rules / "generated.yaml", generated_rules(Topology(catalog_of(site))))
    return write_yaml(folder / "facility.yaml", {
        "config_dir": str(CONFIG_DIR),  # the shipped maps, mappings and endpoints
        "site_file": str(folder / "site.yaml"),
        "mqtt": {"url": mqtt_url, "client_prefix": "bench"},
        "state": {"url": state_url or f"sqlite:///{folder / 'state.sqlite'}"},
        "spool": {"dir": str(folder / "spool")},
        # Trials one after another: no anti-flap hold keeping the last one's evacuation up.
        "rules": {"rules_dir": str(rules), "incident_hold": 0}})


def log_file(folder: Path, name: str) -> Any:
    return open(folder / f"{name}.log", "wb")


async def start(folder: Path, name: str, *argv: str) -> asyncio.subprocess.Process:
    with log_file(folder, name) as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdout=log, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, cwd=str(REPO))


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the background load (a process of its own) ---------------------------------------------

class CountingLink(MqttLink):
    """An MqttLink that counts the broker's acknowledgements of what it published."""

    acked = 0

    def _control(self, packet: object) -> None:
        if isinstance(packet, mqtt5.PubAckPacket):
            self.acked += 1
        else:
            super()._control(packet)


async def run_load(config: Path, rate: float, skip: set[str], status: Path) -> None:
    """Publish readings of every device but `skip` round robin at `rate`, QoS 1, until
    stopped; write 'sent acked' to `status` every second."""
    settings = load_settings(config)
    site = load_site(settings.site_path)
    readings = Readings(site, Topology(catalog_of(site)), seed=7)
    devices = [d for d in readings.devices if d.id not in skip]
    # A few sets of normal values per device, so values change from one reading to the
    # next as they do; time and sequence number are fresh in every message.
    pool = [[readings.values(d) for _ in range(6)] for d in devices]
    envelopes = [{"site": readings.site_id, "family": d.family, "device": d.id,
                  "tags": d.tags, "gateway": "gw-load", "v": 1} for d in devices]
    encode = msgspec.json.Encoder().encode
    link = await CountingLink.open(settings.mqtt, f"bench-load-{uuid.uuid4().hex[:6]}")
    assert isinstance(link, CountingLink)
    assert link.transport is not None
    sent = 0
    started = time.monotonic()
    last_report = started
    packet_id = 0
    slice_s = 0.01
    while True:
        due = int((time.monotonic() - started) * rate)
        now = time.time_ns()
        chunks = []
        while sent < due:
            n = sent % len(devices)
            body = dict(envelopes[n], ts=now, seq=sent + 1,
                        values=pool[n][(sent // len(devices)) % len(pool[n])])
            packet_id = packet_id % 65535 + 1
            chunks.append(mqtt5.PublishPacket(
                topic=readings.topics[devices[n].id], payload=encode(body),
                qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=packet_id).write())
            sent += 1
        if chunks:
            link.transport.write(b"".join(chunks))
        if link.closed.done():
            raise RuntimeError("the broker closed the load generator's connection")
        if time.monotonic() - last_report >= 1:
            last_report = time.monotonic()
            report(status, f"{sent} {link.acked} {last_report - started:.3f}")
        await asyncio.sleep(slice_s)


def report(status: Path, line: str) -> None:
    partial = status.with_suffix(".partial")
    partial.write_text(line)
    partial.replace(status)  # a reader never sees half a line


def _load_seconds(status: Path) -> float:
    return float(status.read_text().split()[2]) if status.exists() else 0.0


async def load_running(status: Path, load: asyncio.subprocess.Process, folder: Path,
                       settle: float, timeout: float = 120.0) -> None:
    """Wait until the load generator has published for `settle` s (the engine has then
    seen every device); it takes a while to start on a slow machine."""
    deadline = time.monotonic() + timeout
    while _load_seconds(status) < settle:
        if load.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError("the load generator did not start: "
                               + (folder / "load.log").read_text()[-2000:])
        await asyncio.sleep(0.1)


# --- the probe: the fire, and what it causes -------------------------------------------------

@dataclass
class Trial:
    device: str
    published: int = 0  # perf_counter_ns
    displays: dict[str, int] = field(default_factory=dict)  # screen -> arrival
    broadcast: int = 0
    message_ids: set[str] = field(default_factory=set)
    acks: dict[str, int] = field(default_factory=dict)  # message id -> arrival
    alert: str = ""
    normal: set[str] = field(default_factory=set)  # screens back to normal content

    @property
    def out(self) -> bool:
        return len(self.displays) == SCREENS and self.broadcast > 0

    @property
    def confirmed(self) -> bool:
        return self.out and len(self.acks) == SCREENS + 1


class Probe:
    """Subscribes to what the engine publishes and times it against the current trial."""

    def __init__(self, mqtt: MqttSettings, site_id: str, screens: list[str]) -> None:
        self.mqtt = mqtt
        self.site_id = site_id
        self.screens = set(screens)
        self.trial: Trial | None = None
        self.changed = asyncio.Event()
        self.raised: dict[str, str] = {}  # device -> alert id of fire-detector-alarm
        self.raised_count = 0
        self.shown: dict[str, str] = {}  # screen -> kind it shows now

    async def run(self, ready: asyncio.Event) -> None:
        s = self.site_id
        async with make_client(self.mqtt, f"bench-probe-{uuid.uuid4().hex[:6]}") as client:
            for flt in (topics.subscription(Kind.DISPLAY, s),
                        topics.subscription(Kind.BROADCAST, s),
                        topics.subscription(Kind.DISPLAY_ACK, s),
                        topics.subscription(Kind.ALERT, s)):
                await client.subscribe(flt, qos=1)
            ready.set()
            async for message in client.messages:
                self.take(message.topic.value, message.payload, time.perf_counter_ns())

    def take(self, topic: str, payload: Any, at: int) -> None:
        where = topics.parse(topic)
        trial = self.trial
        if where.kind is Kind.DISPLAY:
            shown = m.decode(payload, m.DisplayMessage)
            self.shown[where.name] = shown.kind.value
            if trial is not None:
                if shown.kind is m.DisplayKind.EMERGENCY and where.name not in trial.displays:
                    trial.displays[where.name] = at
                    trial.message_ids.add(shown.id)
                elif shown.kind is m.DisplayKind.NORMAL:
                    trial.normal.add(where.name)
        elif where.kind is Kind.BROADCAST and trial is not None:
            said = m.decode(payload, m.Broadcast)
            if said.kind is m.DisplayKind.EMERGENCY and not trial.broadcast:
                trial.broadcast = at
                trial.message_ids.add(said.id)
        elif where.kind is Kind.DISPLAY_ACK and trial is not None:
            ack = m.decode(payload, m.DisplayAck)
            if ack.message in trial.message_ids and ack.message not in trial.acks:
                trial.acks[ack.message] = at
        elif where.kind is Kind.ALERT:
            alert = m.decode(payload, m.AlertMessage)
            if alert.rule == "fire-detector-alarm" and alert.transition == "raised":
                self.raised[alert.source] = alert.id
                self.raised_count += 1
        self.changed.set()

    async def until(self, what: str, done: Any, timeout: float = TRIAL_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timed out waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


async def fire_trials(probe: Probe, mqtt: MqttSettings, readings: Readings,
                      detectors: list[str], count: int,
                      site: MqttSettings | None = None) -> list[Trial]:
    """Fires one after another, each alarm published where the site's devices publish
    (`site`: its own broker, bridged; default `mqtt`) and acknowledged where the rules
    engine is (`mqtt`)."""
    done: list[Trial] = []
    async with make_client(site or mqtt, f"bench-fire-{uuid.uuid4().hex[:6]}") as client, \
            AlertOpsClient(mqtt, readings.site_id) as ops:
        for n in range(count):
            device = readings.by_id[detectors[n % len(detectors)]]
            trial = Trial(device.id)
            probe.trial = trial
            alarm = readings.message(device, time.time_ns(),
                                     {"state": "alarm", "smoke": 0.25, "temperature": 27.0})
            trial.published = time.perf_counter_ns()
            await client.publish(*alarm, qos=1)
            await probe.until(f"trial {n}: the evacuation on every screen, the PA and their "
                              "confirmations", lambda t=trial: t.confirmed)
            await probe.until(f"trial {n}: the alert message",
                              lambda d=device.id: d in probe.raised)
            trial.alert = probe.raised.pop(device.id)
            # Over: the detector is normal again, the operator acknowledges, the screens
            # go back to their normal content.
            trial.normal.clear()
            await client.publish(*readings.message(device, time.time_ns(), {
                "state": "normal", "smoke": 0.01, "temperature": 27.0}), qos=1)
            for _ in range(20):
                result = await ops.request(m.AlertAction.ACKNOWLEDGE, trial.alert, "值班员",
                                           comment="演练")
                if result.ok:
                    break
                await asyncio.sleep(0.05)  # the clear may not be taken in yet
            await probe.until(f"trial {n}: the screens back to normal", lambda t=trial: all(
                probe.shown.get(s) == "normal" for s in probe.screens))
            done.append(trial)
            await asyncio.sleep(TRIAL_GAP)
    return done


async def step_buckets(url: str) -> dict[float, float]:
    """The engine's own histogram of urgent steps on the telemetry link: bound -> count."""
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        text = await reply.text()
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("facility_rules_urgent_step_seconds_bucket") and \
                'link="telemetry"' in line:
            bound = line.split('le="')[1].split('"')[0]
            out[float(bound)] = float(line.rsplit(" ", 1)[1])
    return out


def delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def bucket_quantile(buckets: dict[float, float], q: float) -> float:
    """The smallest bucket bound (ms) below which a share q of the observations lies."""
    total = buckets.get(float("inf"), 0.0)
    for bound in sorted(buckets):
        if total and buckets[bound] >= q * total:
            return bound * 1000
    return float("nan")


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, ordered[-1]


def trial_figures(label: str, trials: list[Trial], note: str, target: bool) -> list[Figure]:
    ms = 1e-6
    first = [(min(t.displays.values()) - t.published) * ms for t in trials]
    out = [(max([*t.displays.values(), t.broadcast]) - t.published) * ms for t in trials]
    confirmed = [(max(t.acks.values()) - t.published) * ms for t in trials]
    figures = []
    for name, values, limit in (("first screen's message", first, 20.0),
                                ("all 13 screens and the PA zone", out, 20.0 if target else None),
                                ("all 14 confirmed", confirmed, None)):
        p50, p99, worst = percentiles(values)
        figures += [
            figure(f"{label}: reading -> {name}, p50", p50, "ms"),
            figure(f"{label}: reading -> {name}, p99", p99, "ms",
                   at_most=limit if target else None, note=note if limit else ""),
            figure(f"{label}: reading -> {name}, max", worst, "ms")]
    return figures


async def run(quick: bool, state: str = "sqlite") -> list[Figure]:
    idle_trials, load_trials = (20, 40) if quick else (100, 300)
    leased = state == "postgresql-leased"
    where = "" if state == "sqlite" else f", state in {state}"
    with servers(BROKER) as (broker, _influx, folder), state_store(folder, state) as url:
        config = write_config(folder, broker.url, url)
        settings = load_settings(config)
        site = load_site(settings.site_path)
        readings = Readings(site, Topology(catalog_of(site)))
        screens = [e.id for e in load_endpoints(ENDPOINTS_FILE, site).endpoints
                   if not e.is_pa]
        # Smoke detectors of buildings: each fire is one detector, so neither correlation
        # rule (two detectors of a shed or plant room within 2 min; smoke and heat
        # together) joins in and each trial ends when its detector's alert is handled.
        buildings = {"main-building", "east-annex", "west-annex", "conference-centre",
                     "canteen"}
        detectors = [s.id for s in Topology(catalog_of(site)).sources.values()
                     if s.kind == "smoke_detector" and s.place in buildings][:60]
        probe = Probe(settings.mqtt, site.site.id, screens)
        probe_ready = asyncio.Event()
        probe_task = asyncio.create_task(probe.run(probe_ready), name="probe")
        processes: list[asyncio.subprocess.Process] = []
        try:
            await asyncio.wait_for(probe_ready.wait(), 20)
            # No speech: a real PA renders its own audio; espeak-ng on these two cores
            # would be measured as the platform's latency (29 % of a core for 400 fires).
            player = await start(folder, "player", "-m", "simulators.display_player",
                                 "--config", str(config), "--no-speech")
            processes.append(player)
            metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
            command = ["rules", "workers"] if leased else \
                ["rules", "run", "--metrics", metrics_url.split("//")[1].split("/")[0]]
            rules = await start(folder, "rules", "-m", "app", "--config", str(config),
                                "--log-level", "WARNING", *command)
            processes.append(rules)
            await probe.until("the rules engine's normal content on every screen",
                              lambda: all(probe.shown.get(s) == "normal" for s in screens),
                              timeout=120)
            steps_start = {} if leased else await step_buckets(metrics_url)
            idle = await fire_trials(probe, settings.mqtt, readings, detectors, idle_trials)
            steps_idle = {} if leased else delta(await step_buckets(metrics_url), steps_start)

            status = folder / "load.status"
            load = await start(folder, "load", "-m", "bench.bench_alert_latency", "load",
                               str(config), str(RATE), ",".join(detectors), str(status))
            processes.append(load)
            await load_running(status, load, folder, settle=5.0)
            steps_start = {} if leased else await step_buckets(metrics_url)  # after its start
            broker_pid = broker.pid
            before = {p.pid: cpu_seconds(p.pid) for p in (rules, load, player)}
            before[broker_pid] = cpu_seconds(broker_pid)
            load_start = status.read_text().split()
            t0 = time.monotonic()
            loaded = await fire_trials(probe, settings.mqtt, readings, detectors, load_trials)
            seconds = time.monotonic() - t0
            steps_loaded = {} if leased else delta(await step_buckets(metrics_url),
                                                   steps_start)
            load_end = status.read_text().split()
            cpu = {pid: (cpu_seconds(pid) - before[pid]) / seconds * 100 for pid in before}
            if load.returncode is not None:
                raise RuntimeError("the load generator stopped: "
                                   + (folder / "load.log").read_text()[-2000:])
            rate = (int(load_end[0]) - int(load_start[0])) / \
                (float(load_end[2]) - float(load_start[2]))
            acked = int(load_end[1]) >= int(load_end[0]) - RATE  # within a second's worth
        except BaseException:
            for name in ("rules", "player", "load"):
                log = folder / f"{name}.log"
                if log.exists():
                    print(f"--- {name}.log ---\n{log.read_text(errors='replace')[-3000:]}",
                          file=sys.stderr)
            raise
        finally:
            for process in reversed(processes):
                await stop(process)
            probe_task.cancel()
            await asyncio.gather(probe_task, return_exceptions=True)

    load_note = (f"{rate:,.0f} readings/s background, broker acked them: {acked}; CPU: rules "
                 f"{cpu[rules.pid]:.0f}%, mosquitto {cpu[broker_pid]:.0f}%, load generator "
                 f"{cpu[load.pid]:.0f}%, screens {cpu[player.pid]:.0f}% of one core")
    trials = idle + loaded
    complete = sum(1 for t in trials if t.confirmed and t.alert)
    inside = [] if leased else [
        figure(f"inside the engine, idle{where}: batch taken -> stored, sent; p50 <=",
               bucket_quantile(steps_idle, 0.5), "ms",
               note=f"p99 <= {bucket_quantile(steps_idle, 0.99):g} ms; bucket bounds of "
                    "facility_rules_urgent_step_seconds"),
        figure(f"inside the engine, loaded{where}: batch taken -> stored, sent; p50 <=",
               bucket_quantile(steps_loaded, 0.5), "ms",
               note=f"p99 <= {bucket_quantile(steps_loaded, 0.99):g} ms")]
    return [
        *inside,
        *trial_figures(f"idle ({len(idle)} fires{where})", idle, "no background load", False),
        *trial_figures(f"loaded ({len(loaded)} fires{where})", loaded, load_note, True),
        figure("background readings per second during the loaded trials", rate, "/s",
               at_least=RATE * 0.95, note=load_note),
        figure("fires whose alert, 14 messages and 14 confirmations all arrived", complete,
               "fires", at_least=len(trials), note=f"of {len(trials)}; alert messages "
               f"raised: {probe.raised_count}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="the alert-latency benchmark's load")
    parser.add_argument("role", choices=["load"])
    parser.add_argument("config", type=Path)
    parser.add_argument("rate", nargs="?", type=float, default=RATE)
    parser.add_argument("skip", nargs="?", default="")
    parser.add_argument("status", nargs="?", type=Path)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(run_load(args.config, args.rate, set(args.skip.split(",")), args.status))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
