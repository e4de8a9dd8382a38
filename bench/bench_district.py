"""District: 20 synthetic sites on one machine, 3 ingest workers on a shared subscription,
rules workers on PostgreSQL; latency device -> InfluxDB and device -> screens, and how
ingest and rules grow from 1 to 2 workers.

Everything is a process of its own on this machine: Mosquitto and InfluxDB (private, free
ports), a fresh PostgreSQL database on the machine's server (127.0.0.1:5432), the
district's devices (bench/district_load.py: the synthetic site of simulators/site_profile.py
under 20 ids, every device at its report period / SPEED), `facility ingest` x 3 with
`ingest.shared_group`, 2 rules workers (`facility rules workers`: sites held by leases in
PostgreSQL, see `rules_commands`), and the simulated screens and PA zones of two sites
(simulators/display_player.py).

Three parts:
1. The district at SPEED x the profile's rate, twice: every site on the central broker,
   then each site on a broker of its own (Mosquitto with the bridge `facility broker
   bridge` generates) bridged to the central one, where the workers are. 20 sites x 5.2
   msg/s x 30 = 3,112 msg/s, the message rate of 300 sites of 2,000 points
   (docs/scaling.md), less what the probes publish themselves. Probes: a meter reading of
   each site in turn every 0.1 s, its arrival in InfluxDB polled every 20 ms (device ->
   InfluxDB, within the poll); fires at two sites as the alert-latency benchmark makes
   them (device -> all 13 screens and the PA zone, and their confirmations).
2. Ingest, 1 then 2 workers on one shared subscription: 300,000 readings published as
   fast as the broker takes them (more than one worker stores), points stored per second
   first to last, and every process's CPU; the broker's own rate to a C client beside.
3. Rules, 1 then 2 workers, each serving a site: the workers paused (SIGSTOP) while a
   burst of readings of their sites is published, then resumed together; readings per
   second until each site's closing alarm raised its alert, and every process's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgspec
import yaml
from pydantic import SecretStr

from bench.aioclient import make_client
from bench.bench_alert_latency import Probe, Trial, fire_trials, percentiles
from bench.bench_ingest import c_subscriber_rate
from bench.campus_load import catalog_of
from bench.common import Figure, figure, servers
from bench.district_load import gateway_of, readings_of
from bench.procs import REPO, Service, cpu_seconds, loadgen, loadgen_result, peak_rss_mb
from facility import bridge
from facility import messages as m
from facility.catalog import load_district
from facility.influx import InfluxClient
from facility.localservers import InfluxServer, MosquittoServer, postgres_database
from facility.settings import MqttSettings, load_settings
from facility.site import load_site
from facility.topology import Topology
from simulators.site_profile import site_ids, write_site, write_sites

# The broker as bench_alert_latency runs it (set_tcp_nodelay: no 40 ms delayed-ACK stalls).
BROKER = "max_queued_messages 10000000\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
# A site's broker: the same, plus what the generated bridge file asks of the file that
# includes it (persistence; facility/bridge.py). Its queue limits come from the bridge file.
SITE_BROKER = "max_inflight_messages 0\nset_tcp_nodelay true\npersistence false\n"
SITES = 20
INGEST_WORKERS = 3
RULES_WORKERS = 2
SPEED = 30.0  # 20 sites at 30 x their rate = the message rate of the 300-site district
PROBE_DEVICE = "em-001"  # each site's first profile meter: the device -> InfluxDB probe
FIRE_SITES = ("site-01", "site-02")  # screens and PA zones simulated: one per rules worker
BUILDINGS = ("main-building", "east-annex", "west-annex", "conference-centre", "canteen")


# --- configuration ---------------------------------------------------------------------------

def rules_folder(folder: Path) -> Path:
    """The campus's rule files for a site without rising bollards: bollards.yaml left out
    and its rules taken out of the inhibitions that name them."""
    out = folder / "rules"
    out.mkdir()
    bollard_rules = {r["id"] for r in
                     yaml.safe_load((REPO / "config/rules/bollards.yaml").read_text())["rules"]}
    for path in sorted((REPO / "config" / "rules").glob("*.yaml")):
        if path.name == "bollards.yaml":
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        kept = []
        for rule in data.get("inhibit") or []:
            rule["target"] = [t for t in rule["target"] if t not in bollard_rules]
            rule["source"] = [s for s in rule["source"] if s not in bollard_rules]
            if rule["target"] and rule["source"]:
                kept.append(rule)
        if "inhibit" in data:
            data["inhibit"] = kept
        (out / path.name).write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False),
                                     encoding="utf-8")
    return out


def write_config(folder: Path, broker: MosquittoServer, influx: InfluxServer,
                 state_url: str) -> Path:
    """Settings with a sites folder of SITES synthetic sites (what the services serve),
    and the profile's own site file beside it (what the load and the probes read: the same
    devices under any site id)."""
    write_sites(folder / "sites", SITES)
    config = folder / "facility.yaml"
    config.write_text(yaml.safe_dump({
        "config_dir": str(REPO / "config"),  # the shipped maps, mappings and endpoints
        "site_file": str(write_site(folder / "site.yaml")),
        "sites_dir": str(folder / "sites"),
        "mqtt": {"url": broker.url, "client_prefix": "district"},
        "influx": {"url": influx.url, "database": "district"},
        "state": {"url": state_url},
        "spool": {"dir": str(folder / "spool")},
        # Fires one after another: no anti-flap hold keeping the last one's evacuation up.
        "rules": {"rules_dir": str(rules_folder(folder)), "incident_hold": 0},
        # Sessions end with the connection: a stopped part's session would otherwise keep
        # taking its share of the next part's messages.
        "ingest": {"session_expiry": 0},
    }, allow_unicode=True), encoding="utf-8")
    return config


def pg_writes(state_url: str) -> tuple[float, float]:
    """(transactions committed, rows inserted + updated + deleted) so far in the database."""
    name = state_url.rsplit("/", 1)[1]
    out = subprocess.run(["psql", "-At", "-F", " ", state_url, "-c",
                          "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM "
                          f"pg_stat_database WHERE datname = '{name}'"],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


# --- the workers -----------------------------------------------------------------------------

def rules_commands(config: Path, sites: list[str], workers: int
                   ) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, environment) of each rules worker: `workers` processes of
    `facility --sites ... rules workers` (rules/workers.py), each offered every site; the
    leases in PostgreSQL deal them out (a fair share each, ceil(sites / workers))."""
    return [(["--config", str(config), "--log-level", "WARNING", "--sites", ",".join(sites),
              "rules", "workers", "--owner", f"worker-{n + 1}"], {})
            for n in range(workers)]


class LeaseWorker(Service):
    """`python -m app ... rules workers`: like Service, without a metrics endpoint (the
    command had none when this was written); ready when the leases are dealt out
    (wait_leases), which the database says."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.metrics_port = 0
        self.log = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "app", *command], cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def metric(self, name: str) -> float:
        raise NotImplementedError("started without --metrics")


def start_rules(config: Path, sites: list[str], workers: int, folder: Path,
                tag: str) -> list[Service]:
    """The lease workers, once every site is held and shared fairly."""
    started: list[Service] = []
    state_url = load_settings(config).state_url
    try:
        for n, (argv, _) in enumerate(rules_commands(config, sites, workers)):
            started.append(LeaseWorker(argv, folder / f"rules-{tag}-{n}.log"))
            # The first creates the lease tables; two workers that both start on an empty
            # database race to create them and one exits (UniqueViolation, seen here).
            _until_leased(started, state_url, sites, 1)
        _until_leased(started, state_url, sites, workers)
    except BaseException:
        stop_all(started)
        raise
    return started


def _until_leased(started: list[Service], state_url: str, sites: list[str],
                  workers: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            wait_leases(state_url, sites, workers, timeout=1.0)
            return
        except RuntimeError:
            for worker in started:
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"a rules worker exited: see {worker.log.name}"
                                       ) from None
            if time.monotonic() > deadline:
                raise


def start_engines(config: Path, groups: list[list[str]], folder: Path,
                  tag: str) -> list[Service]:
    """`facility --sites ... rules run` per group of sites: the same engines as the lease
    workers run, with a metrics endpoint (readings taken in) for the scaling part."""
    started: list[Service] = []
    try:
        for n, group in enumerate(groups):
            started.append(Service(["--config", str(config), "--log-level", "WARNING",
                                    "--sites", ",".join(group), "rules", "run"], {},
                                   folder / f"rules-{tag}-{n}.log"))
            if n == 0:
                started[0].wait_ready(60)  # its tables exist before the next starts
        for service in started:
            service.wait_ready(120)
    except BaseException:
        stop_all(started)
        raise
    return started


def lease_owners(state_url: str, sites: list[str]) -> dict[str, int]:
    """Owner -> how many of `sites` it holds (rules/lease.py's rules_leases)."""
    listed = ",".join(f"'{s}'" for s in sites)
    out = subprocess.run(["psql", "-At", "-F", " ", state_url, "-c",
                          "SELECT owner, count(*) FROM rules_leases WHERE owner <> '' AND "
                          f"expires_at > now() AND site IN ({listed}) GROUP BY owner"],
                         capture_output=True, text=True)
    return {line.split()[0]: int(line.split()[1]) for line in out.stdout.splitlines()
            if line.strip()}


def wait_leases(state_url: str, sites: list[str], workers: int, timeout: float = 120) -> None:
    """Until every site is held and each worker holds its fair share."""
    share = -(-len(sites) // workers)
    deadline = time.monotonic() + timeout
    while True:
        owners = lease_owners(state_url, sites)
        if sum(owners.values()) == len(sites) and len(owners) == workers and \
                max(owners.values()) <= share:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"leases not dealt out in {timeout:g} s: {owners}")
        time.sleep(0.2)


def start_ingest(config: Path, workers: int, group: str, folder: Path,
                 database: str, **options: str) -> list[Service]:
    env = {"FACILITY_INGEST_SHARED_GROUP": group, "FACILITY_INFLUX_DATABASE": database,
           **{f"FACILITY_INGEST_{k.upper()}": v for k, v in options.items()}}
    started = [Service(["--config", str(config), "--log-level", "WARNING", "ingest",
                        "--client-id", f"{group}-{n}"], env, folder / f"{group}-{n}.log")
               for n in range(workers)]
    try:
        for service in started:
            service.wait_ready(60)
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(services: list[Service]) -> None:
    for service in services:
        if service.proc.poll() is None:
            service.proc.terminate()
    for service in services:
        service.stop()


def total(services: list[Service], metric: str) -> float:
    return sum(s.metric(metric) for s in services)


def lost_numbers(services: list[Service]) -> float:
    """Gateway sequence numbers the ingest workers counted lost, but the fire trials'
    gateway (bench_alert_latency numbers its readings per detector, not per gateway)."""
    out = 0.0
    for service in services:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics",
                                        timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("facility_ingest_sequence_lost_total{") and \
                    'gateway="gw-bench"' not in line:
                out += float(line.rsplit(" ", 1)[1])
    return out


# --- part 1: the district --------------------------------------------------------------------

class InfluxProbe:
    """Publishes a reading of PROBE_DEVICE of each site in turn every 0.1 s and polls
    InfluxDB every 20 ms for its arrival: device -> InfluxDB, within the poll."""

    def __init__(self, config: Path, sites: list[str],
                 brokers: dict[str, MqttSettings] | None = None) -> None:
        self.settings = load_settings(config)
        site = load_site(self.settings.site_path)
        self.feeds = [readings_of(site, s) for s in sites]
        self.brokers = brokers or {}  # a site's own broker, where it has one
        self.sent: dict[int, int] = {}  # ts -> perf_counter_ns at publish
        self.latency_ms: list[float] = []

    async def run(self, seconds: float) -> None:
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            influx = await stack.enter_async_context(InfluxClient(self.settings.influx))
            clients = {}
            for feed in self.feeds:
                mqtt = self.brokers.get(feed.site_id, self.settings.mqtt)
                key = mqtt.url.get_secret_value()
                if key not in clients:
                    clients[key] = await stack.enter_async_context(
                        make_client(mqtt, f"district-probe-{uuid.uuid4().hex[:6]}"))
            poller = asyncio.create_task(self._poll(influx, stop), name="influx-poll")
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                feed = self.feeds[n % len(self.feeds)]
                ts = time.time_ns()
                device = feed.by_id[PROBE_DEVICE]
                # Unnumbered (seq 0): the probe is no gateway whose numbers ingest judges.
                reading = msgspec.structs.replace(feed.reading(device, ts), seq=0,
                                                  gateway=gateway_of(feed.site_id, device))
                topic, payload = feed.topics[device.id], m.encode(reading)
                self.sent[ts] = time.perf_counter_ns()
                mqtt = self.brokers.get(feed.site_id, self.settings.mqtt)
                await clients[mqtt.url.get_secret_value()].publish(topic, payload, qos=1)
                n += 1
                await asyncio.sleep(0.1)
            await asyncio.sleep(3)  # the last ones' way in
            stop.set()
            await poller

    async def _poll(self, influx: InfluxClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            pending = [ts for ts in self.sent if ts > 0]
            if pending:
                result = await influx.query(
                    f"SELECT \"power_total\" FROM \"energy\" WHERE \"device\" = "
                    f"'{PROBE_DEVICE}' AND time >= {min(pending)}")
                now = time.perf_counter_ns()
                for series in result[0] if result else []:
                    for row in series.values:
                        published = self.sent.pop(int(row[0]), None)
                        if published is not None:
                            self.latency_ms.append((now - published) / 1e6)
            await asyncio.sleep(0.02)


def start_site_brokers(folder: Path, config: Path, centre: MosquittoServer,
                       sites: list[str]) -> dict[str, MosquittoServer]:
    """A Mosquitto per site, bridged to the centre with the configuration `facility broker
    bridge` generates (facility/bridge.py; no TLS on loopback)."""
    settings = load_settings(config)
    options = settings.bridge.model_copy(update={"remote": f"{centre.host}:{centre.port}",
                                                 "tls": False})
    settings = settings.model_copy(update={"bridge": options})
    district = load_district(settings)
    started: dict[str, MosquittoServer] = {}
    try:
        for site in sites:
            server = MosquittoServer(folder / f"broker-{site}",
                                     extra_config=SITE_BROKER + bridge.config(
                                         district[site], settings, site))
            server.start()
            started[site] = server
    except BaseException:
        for server in started.values():
            server.stop()
        raise
    return started


async def wait_screens(probe: Probe, timeout: float = 180) -> None:
    await probe.until("the rules worker's normal content on every screen",
                      lambda: all(probe.shown.get(s) == "normal" for s in probe.screens),
                      timeout=timeout)


async def district(folder: Path, config: Path, broker: MosquittoServer,
                   influx: InfluxServer, quick: bool, bridged: bool = False) -> list[Figure]:
    """Part 1. `bridged`: each site's devices, screens and PA zones on a broker of the
    site's own, bridged to the central broker where the workers are."""
    settings = load_settings(config)
    site = load_site(settings.site_path)
    sites = site_ids(SITES)
    catalog = catalog_of(site)
    catalog_screens = [e.id for e in catalog.endpoints.endpoints if not e.is_pa]
    feeds = {s: readings_of(site, s) for s in FIRE_SITES}
    # Smoke detectors of buildings: each fire is one detector (no correlation rule joins).
    detectors = [s.id for s in Topology(catalog).sources.values()
                 if s.kind == "smoke_detector" and s.place in BUILDINGS]
    probes = {s: Probe(settings.mqtt, s, catalog_screens) for s in FIRE_SITES}
    ready = {s: asyncio.Event() for s in FIRE_SITES}
    tasks = [asyncio.create_task(probes[s].run(ready[s]), name=f"probe-{s}")
             for s in FIRE_SITES]
    procs: list[subprocess.Popen[bytes]] = []
    ingest: list[Service] = []
    rules: list[Service] = []
    logs: list[Any] = []
    site_brokers: dict[str, MosquittoServer] = {}
    tag = "bridged" if bridged else "district"
    try:
        if bridged:
            site_brokers = await asyncio.to_thread(start_site_brokers, folder, config,
                                                   broker, sites)
        where = {s: MqttSettings(url=SecretStr(b.url)) for s, b in site_brokers.items()}
        for s in FIRE_SITES:
            await asyncio.wait_for(ready[s].wait(), 20)
        for s in FIRE_SITES:
            log = (folder / f"player-{tag}-{s}.log").open("wb")  # closed below
            logs.append(log)
            env = {**os.environ, **({"FACILITY_MQTT_URL": site_brokers[s].url}
                                    if bridged else {})}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "simulators.display_player", "--config", str(config),
                 "--site", s, "--no-speech"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env=env))
        started = time.monotonic()
        ingest = await asyncio.to_thread(start_ingest, config, INGEST_WORKERS, tag,
                                         folder, "district")
        rules = await asyncio.to_thread(start_rules, config, sites, RULES_WORKERS, folder,
                                        tag)
        for s in FIRE_SITES:
            await wait_screens(probes[s])
        start_seconds = time.monotonic() - started
        status = folder / f"{tag}-load.status"
        load_log = (folder / f"{tag}-load.log").open("wb")  # closed below
        logs.append(load_log)
        urls = ",".join(site_brokers[s].url for s in sites) if bridged else broker.url
        load = subprocess.Popen(
            [sys.executable, "-m", "bench.district_load", "steady", str(settings.site_path),
             "--url", urls, "--sites", ",".join(sites), "--speed", str(SPEED),
             "--skip", ",".join([PROBE_DEVICE, *detectors]), "--status", str(status)],
            cwd=REPO, stdout=load_log, stderr=subprocess.STDOUT)
        procs.append(load)
        deadline = time.monotonic() + 120
        while not status.exists() or float(status.read_text().split()[2]) < 5:
            if load.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the district load did not start: "
                                   + (folder / f"{tag}-load.log").read_text()[-2000:])
            await asyncio.sleep(0.2)
        seconds = 20.0 if quick else 120.0
        pids = {"ingest": [s.proc.pid for s in ingest], "rules": [s.proc.pid for s in rules],
                "mosquitto": [broker.pid], "influxd": [influx.pid], "load": [load.pid],
                "screens": [p.pid for p in procs[:len(FIRE_SITES)]],
                "site brokers": [b.pid for b in site_brokers.values()]}
        cpu0 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        written0 = total(ingest, "facility_ingest_points_written_total")
        pg0 = pg_writes(settings.state_url)
        sent0 = status.read_text().split()
        t0 = time.monotonic()
        probe = InfluxProbe(config, sites, where)
        trials = 10 if quick else 60
        probing = asyncio.create_task(probe.run(seconds), name="influx-probe")
        # A site's trials that fail (a step not done within its bound) are counted, not
        # fatal: the other site's go on, and the figures say how many were complete.
        results = await asyncio.gather(
            *(fire_trials(probes[s], settings.mqtt, feeds[s], detectors, trials,
                          site=where.get(s)) for s in FIRE_SITES),
            return_exceptions=True)
        await probing
        wall = time.monotonic() - t0
        fires: list[Trial] = [t for r in results if isinstance(r, list) for t in r]
        failed = [f"{s}: {r!r}"[:300] for s, r in zip(FIRE_SITES, results, strict=True)
                  if isinstance(r, BaseException)]
        sent1 = status.read_text().split()
        written = total(ingest, "facility_ingest_points_written_total") - written0
        cpu = {k: (sum(cpu_seconds(p) for p in v) - cpu0[k]) / wall for k, v in pids.items()}
        pg = [(b - a) / wall for a, b in zip(pg0, pg_writes(settings.state_url), strict=True)]
        lost = lost_numbers(ingest)
        offered = (int(sent1[0]) - int(sent0[0])) / (float(sent1[2]) - float(sent0[2]))
        rss = {"ingest": max(peak_rss_mb(s.proc.pid) for s in ingest),
               "rules": max(peak_rss_mb(s.proc.pid) for s in rules)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        await asyncio.to_thread(stop_all, rules + ingest)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(20)
        for log in logs:
            log.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in site_brokers.values():
            await asyncio.to_thread(server.stop)
    cores = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
    p50, p99, worst = percentiles(probe.latency_ms) if probe.latency_ms else (0, 0, 0)
    ms = 1e-6
    screens = [(max([*t.displays.values(), t.broadcast]) - t.published) * ms for t in fires]
    confirmed = [(max(t.acks.values()) - t.published) * ms for t in fires if t.confirmed]
    s50, s99, smax = percentiles(screens) if screens else (0, 0, 0)
    c50, c99, cmax = percentiles(confirmed) if confirmed else (0, 0, 0)
    label = f"district{' bridged' if bridged else ''}, {SITES} sites x {SPEED:g} speed"
    return [
        figure(f"{label}: workers started, leases dealt out (3 ingest, {len(rules)} rules)",
               start_seconds, "s"),
        figure(f"{label}: readings offered", offered, "msg/s",
               note=f"{wall:.0f} s; the 300-site district's rate (docs/scaling.md)"),
        figure(f"{label}: points stored by the 3 ingest workers", written / wall, "points/s"),
        figure(f"{label}: CPU, cores busy", sum(cpu.values()), "cores", note=cores),
        *(figure(f"{label}: CPU per 1,000 msg/s, {name}", cpu[name] / offered * 1e6,
                 "millicores")
          for name in ("ingest", "rules", "mosquitto", "influxd")),
        figure(f"{label}: readings the ingest workers counted lost", lost, "msgs", at_most=0,
               note="sequence numbers per gateway, judged together by the workers"),
        figure(f"{label}: PostgreSQL transactions committed", pg[0], "/s",
               note=f"rows inserted, updated or deleted {pg[1]:,.1f}/s"),
        figure(f"{label}: peak RSS of an ingest / rules process", rss["ingest"], "MB",
               note=f"rules {rss['rules']:.0f} MB"),
        figure(f"{label}: device -> InfluxDB, p50", p50, "ms",
               note=f"{len(probe.latency_ms)} probes, polled every 20 ms"),
        figure(f"{label}: device -> InfluxDB, p99", p99, "ms", note=f"max {worst:.0f} ms"),
        figure(f"{label}: probes not seen in InfluxDB", len(probe.sent), "probes", at_most=0),
        figure(f"{label}: fire -> 13 screens + PA zone, p50", s50, "ms",
               note=f"{len(fires)} fires at {', '.join(FIRE_SITES)}"),
        figure(f"{label}: fire -> 13 screens + PA zone, p99", s99, "ms",
               note=f"max {smax:.0f} ms"),
        figure(f"{label}: fire -> all 14 confirmed, p50 / p99", c50, "ms",
               note=f"p99 {c99:.0f} ms, max {cmax:.0f} ms"),
        figure(f"{label}: fires complete (alert, 14 messages, 14 confirmations)",
               sum(1 for t in fires if t.confirmed and t.alert), "fires",
               at_least=2 * trials, note="; ".join(failed)),
    ]


# --- parts 2 and 3: 1 -> 2 workers -----------------------------------------------------------

def ingest_scaling(folder: Path, config: Path, broker: MosquittoServer, influx: InfluxServer,
                   workers: int, n: int, run: int) -> dict[str, float]:
    """Points stored per second, first to last, with `workers` on one shared subscription;
    and each kind of process's CPU (cores) over that time."""
    group = f"scale{workers}r{run}"
    # Batches as the ingest benchmark takes them (5,000 or 0.05 s): throughput, not the
    # district part's latency at the shipped 0.25 s.
    services = start_ingest(config, workers, group, folder, group, batch_interval="0.05")
    try:
        pids = {"workers": [s.proc.pid for s in services], "mosquitto": [broker.pid],
                "influxd": [influx.pid]}
        before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        pub = loadgen(broker.url, n, qos=1, site=group)
        pids["load"] = [pub.pid]
        before["load"] = cpu_seconds(pub.pid)
        first = last = 0.0
        deadline = time.monotonic() + 600
        load_cpu = 0.0
        while time.monotonic() < deadline:
            written = total(services, "facility_ingest_points_written_total")
            now = time.monotonic()
            if written and not first:
                first = now
                before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
            if pub.poll() is None:
                load_cpu = cpu_seconds(pub.pid) - before["load"]
            if written >= n:
                last = now
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"ingest x{workers}: {written:,.0f} of {n:,} stored in 600 s")
        wall = max(last - first, 1e-9)
        out = {k: (sum(cpu_seconds(p) for p in v) - before[k]) / wall
               for k, v in pids.items() if k != "load"}
        out["load"] = load_cpu / wall
        loadgen_result(pub)
        out["rate"] = n / wall
        out["us"] = out["workers"] / out["rate"] * 1e6
        out["loadavg"] = os.getloadavg()[0]
    finally:
        stop_all(services)
    return out


def rules_scaling(folder: Path, config: Path, broker: MosquittoServer, workers: int,
                  n: int, run: int) -> dict[str, float]:
    """Readings taken per second by `workers` rules workers, each owning a site whose n
    readings wait at the broker when the workers resume: the drain is the workers' own
    pace (the publisher takes no CPU then; live, it could not outrun one worker here).
    The end: each site's last message is a smoke detector's alarm, and its alert says
    the worker has taken all before it (in order on its connection; the alarm may jump
    ahead of at most one batch, 500 readings)."""
    # Sites of their own (a session left with a burst's remainder takes no part again),
    # from the end of the district: site-12 ... site-20, none with fires in part 1.
    first = SITES - 3 * run - 2 + (workers - 1)
    sites = [f"site-{n:02d}" for n in range(first, first + workers)]
    tag = f"scale{run}-{workers}"
    site_file = str(load_settings(config).site_path)

    def burst(count: int, marker: bool = False) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.district_load", "burst", site_file, "--url",
             broker.url, "--sites", ",".join(sites), "--count", str(count),
             *(["--marker"] if marker else [])],
            cwd=REPO, stdout=subprocess.PIPE, text=True)

    metric = "facility_rules_inputs_total"
    # An engine per worker, each with its site: `rules run`, the engine the lease workers
    # run, without a lease to lapse in the pause below.
    services = start_engines(config, [[site] for site in sites], folder, tag)
    watchers: list[subprocess.Popen[str]] = []
    try:
        # Once each worker has taken a reading its telemetry subscription is there.
        deadline = time.monotonic() + 60
        while not all(s.metric(metric) for s in services):
            if time.monotonic() > deadline:
                raise RuntimeError("the rules workers took no reading in 60 s")
            loadgen_result(burst(50 * workers), 60)
            time.sleep(1.0)
        done: dict[str, float] = {}
        for site in sites:
            watcher = subprocess.Popen(
                ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                 "-t", f"facility/v1/{site}/alert/#"], stdout=subprocess.PIPE, text=True)
            watchers.append(watcher)
            threading.Thread(target=_watch_alarm, args=(watcher, site, done),
                             daemon=True).start()
        # The workers paused (SIGSTOP, well within the MQTT keepalive) while the readings
        # are published: they wait at the broker, and all workers start on them together.
        for s in services:
            s.proc.send_signal(signal.SIGSTOP)
        try:
            loadgen_result(burst(n * workers, marker=True), 900)  # all acked by the broker
        finally:
            for s in services:
                s.proc.send_signal(signal.SIGCONT)
        t0 = time.monotonic()
        pids = {"workers": [s.proc.pid for s in services], "mosquitto": [broker.pid]}
        c0 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        c1 = dict(c0)
        while len(done) < len(sites):
            if time.monotonic() - t0 > 900:
                raise RuntimeError(f"rules x{workers}: alarms of {sorted(done)} only in 900 s")
            c1 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
            time.sleep(0.02)
        wall = max(max(done.values()) - t0, 1e-9)
        out = {k: (c1[k] - c0[k]) / wall for k in pids}
        out["rate"] = n * workers / wall
        out["us"] = out["workers"] / out["rate"] * 1e6
        out["loadavg"] = os.getloadavg()[0]
    finally:
        for watcher in watchers:
            watcher.terminate()
        stop_all(services)
    return out


def _watch_alarm(watcher: subprocess.Popen[str], site: str, done: dict[str, float]) -> None:
    """Note when the site's fire-detector-alarm alert is raised."""
    assert watcher.stdout is not None
    for line in watcher.stdout:
        if '"fire-detector-alarm"' in line and '"raised"' in line:
            done[site] = time.monotonic()
            return


def scaling_figures(name: str, runs: dict[int, list[dict[str, float]]]) -> list[Figure]:
    def med(k: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[k])

    ratio = med(2, "rate") / med(1, "rate")
    out = []
    for k in (1, 2):
        busy = ", ".join(f"{key} {med(k, key):.2f}" for key in runs[k][0]
                         if key not in ("rate", "us", "loadavg"))
        each = ", ".join(f"{r['rate']:,.0f}" for r in runs[k])
        loads = ", ".join(f"{r['loadavg']:.1f}" for r in runs[k])
        out.append(figure(f"{name}, {k} worker{'s' if k > 1 else ''}", med(k, "rate"), "msg/s",
                          note=f"median of {len(runs[k])} ({each}); "
                               f"{med(k, 'us'):.1f} us CPU a message in the workers; "
                               f"cores busy: {busy}; load average {loads}"))
    out.append(figure(f"{name}, 1 -> 2 workers", ratio, "x", at_least=1.7))
    return out


async def run(quick: bool = False) -> list[Figure]:
    figures: list[Figure] = []
    # The bridged part's own database: on the first part's ledger, the load numbering
    # every gateway from 1 again reads as 40 gateways restarting, and the shared check
    # counted 46 lost against their old numbers (0 on a fresh one; BENCHMARKS.md).
    with postgres_database("facility_district") as state_url, \
            postgres_database("facility_district") as bridged_url, \
            servers(BROKER) as (broker, influx, folder):
        config = write_config(folder, broker, influx, state_url)
        bridged_config = folder / "facility-bridged.yaml"
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
        data["state"] = {"url": bridged_url}
        bridged_config.write_text(yaml.safe_dump(data, allow_unicode=True),
                                  encoding="utf-8")
        try:
            figures += await district(folder, config, broker, influx, quick)
            print("  (district part done)", file=sys.stderr, flush=True)
            figures += await district(folder, bridged_config, broker, influx, quick,
                                      bridged=True)
            print("  (bridged district part done)", file=sys.stderr, flush=True)
            repeats = 1 if quick else 3
            ingest_runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
            rules_runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
            for r in range(repeats):  # 1 and 2 workers alternately
                for k in (1, 2):
                    ingest_runs[k].append(await asyncio.to_thread(
                        ingest_scaling, folder, config, broker, influx, k,
                        60_000 if quick else 300_000, r))
                for k in (1, 2):
                    rules_runs[k].append(await asyncio.to_thread(
                        rules_scaling, folder, config, broker, k,
                        30_000 if quick else 200_000, r))
            # The ceiling both kinds of worker share: one Mosquitto's QoS 1 delivery.
            ceiling = [await asyncio.to_thread(c_subscriber_rate, broker,
                                               60_000 if quick else 300_000)
                       for _ in range(repeats)]
            figures.append(figure(
                "broker QoS 1 to a C client (mosquitto_sub), the workers' ceiling",
                statistics.median(ceiling), "msg/s",
                note=f"median of {len(ceiling)} "
                     f"({', '.join(f'{c:,.0f}' for c in ceiling)})"))
            figures += scaling_figures("ingest, QoS 1, shared subscription", ingest_runs)
            figures += scaling_figures("rules, a site per worker", rules_runs)
        except BaseException:
            kept = Path(tempfile.mkdtemp(prefix="facility-district-logs-"))
            for log in folder.glob("*.log"):
                shutil.copy(log, kept / log.name)
            print(f"  (the processes' logs are kept in {kept})", file=sys.stderr)
            for log in sorted(folder.glob("*.log")):
                text = log.read_text(errors="replace")
                if "Traceback" in text or "error" in text.lower():
                    print(f"--- {log.name} ---\n{text[-2000:]}", file=sys.stderr)
            raise
    return figures
