"""Peers: ingest against Node-RED 4 with node-red-contrib-influxdb (its batched flow: MQTT in ->
function -> join 5,000 -> influxdb batch) on the same broker, InfluxDB and canonical load, QoS 1
and QoS 0; points stored per second and per CPU-second, and the ratio ingest / Node-RED.

Node-RED comes from the npm registry, installed once into ~/.cache/facility-bench/node-red
(`npm install --no-audit --no-fund node-red@4 node-red-contrib-influxdb`; nothing in the
repository). The flow is bench/node_red_flow.json; its function node turns a canonical Reading
into the point ingest/convert.py writes (measurement = family; tags site, device, the static
tags, gateway; fields quality and the values; the reading's ns time, exact). Both peers get
the same batching (5,000 points or 0.25 s); every point is counted in InfluxDB afterwards.

Not the same guarantee: ingest at QoS 1 acknowledges a message to the broker only after
InfluxDB took it; Node-RED's MQTT client acknowledges on receipt, so a crash loses what it
holds. Ingest also checks the whole message contract (Node-RED's function only the shape).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import Figure, figure, servers
from bench.procs import TICKS, Service, loadgen, loadgen_result
from facility import messages as m
from facility import topics
from facility.localservers import InfluxServer, MosquittoServer, free_port
from facility.messages import Family, Reading

NODE_RED_HOME = Path.home() / ".cache" / "facility-bench" / "node-red"
FLOW = Path(__file__).with_name("node_red_flow.json")
PACKAGES = ["node-red@4", "node-red-contrib-influxdb"]
BATCH = 5000
BATCH_SECONDS = 0.25
POLL = 0.2  # how often the stored points are counted in InfluxDB


# ---------------------------------------------------------------- processes and CPU

def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU (user + system) of a process and all its descendants, living or reaped."""
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / TICKS  # utime stime cutime cstime
    return total


def tree_peak_rss_mb(pid: int) -> float:
    peak = 0.0
    for p in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak += int(line.split()[1]) / 1024
        except OSError:
            continue
    return peak


# ---------------------------------------------------------------- InfluxDB by HTTP

def influx_query(influx: InfluxServer, q: str, database: str = "") -> list[list[object]]:
    """The values of the first series of the first statement (empty if none)."""
    params = {"q": q, **({"db": database} if database else {})}
    body = urllib.parse.urlencode(params).encode()
    with urllib.request.urlopen(f"{influx.url}/query", body, timeout=30) as resp:
        answer = json.loads(resp.read())
    result = answer["results"][0]
    if "error" in result:
        raise RuntimeError(f"InfluxDB: {result['error']} ({q})")
    series = result.get("series") or [{}]
    return list(series[0].get("values") or [])


def stored(influx: InfluxServer, database: str, field: str = "power_total") -> int:
    values = influx_query(influx, f'SELECT count("{field}") FROM "energy"', database)
    return int(str(values[0][1])) if values else 0


def probe_until_stored(broker: MosquittoServer, influx: InfluxServer, database: str,
                       proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Publish a probe reading (its own field, not counted) once a second until the peer
    has stored it: the peer is subscribed and its path to InfluxDB works."""
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the peer exited before it stored the probe")
        if time.monotonic() >= next_send:
            reading = Reading(site="bench", family=Family.ENERGY, device="probe",
                              ts=time.time_ns(), values={"probe": 1.0}, gateway="gw-probe")
            subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q",
                            "1", "-t", topics.telemetry("bench", "energy", "probe"), "-m",
                            m.encode(reading).decode()], check=True, timeout=10)
            next_send = time.monotonic() + 1.0
        try:
            if stored(influx, database, "probe") > 0:
                return
        except RuntimeError:
            pass  # the database may not exist yet (ingest creates its own)
        time.sleep(0.1)
    raise TimeoutError(f"the peer stored no probe reading in {timeout:.0f} s")


# ---------------------------------------------------------------- the peers

def node_version() -> tuple[int, ...]:
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    return tuple(int(x) for x in out.stdout.strip().lstrip("v").split("."))


def install_node_red() -> Path:
    """Node-RED 4 and node-red-contrib-influxdb in their own folder (once); red.js."""
    if node_version() < (18,):
        raise RuntimeError(f"Node-RED 4 needs Node 18+, this node is {node_version()}")
    red = NODE_RED_HOME / "node_modules" / "node-red" / "red.js"
    contrib = NODE_RED_HOME / "node_modules" / "node-red-contrib-influxdb" / "package.json"
    installed = NODE_RED_HOME / "node_modules" / "node-red" / "package.json"
    if (red.exists() and contrib.exists()
            and json.loads(installed.read_text())["version"].startswith("4.")):
        return red
    NODE_RED_HOME.mkdir(parents=True, exist_ok=True)
    manifest = NODE_RED_HOME / "package.json"
    if not manifest.exists():
        manifest.write_text('{"name": "facility-bench-node-red", "private": true}\n')
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", *PACKAGES],
                   cwd=NODE_RED_HOME, check=True, timeout=900)
    return red


def node_red_versions() -> str:
    def version(pkg: str) -> str:
        path = NODE_RED_HOME / "node_modules" / pkg / "package.json"
        return str(json.loads(path.read_text())["version"])
    node = ".".join(map(str, node_version()))
    return (f"Node-RED {version('node-red')}, node-red-contrib-influxdb "
            f"{version('node-red-contrib-influxdb')} (node-influx {version('influx')}), "
            f"MQTT.js {version('mqtt')}, Node {node}")


SETTINGS_JS = """module.exports = {
    uiHost: "127.0.0.1",
    uiPort: %(port)d,
    httpAdminRoot: false,
    httpNodeRoot: false,
    flowFile: "flows.json",
    credentialSecret: false,
    diagnostics: { enabled: false },
    telemetry: { enabled: false },
    runtimeState: { enabled: false },
    externalModules: { autoInstall: false },
    logging: { console: { level: "info", metrics: false, audit: false } },
    editorTheme: { projects: { enabled: false } },
};
"""


@contextmanager
def node_red(red: Path, broker: MosquittoServer, influx: InfluxServer, database: str,
             qos: int, folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Node-RED with bench/node_red_flow.json pointed at this broker, QoS and database."""
    user_dir = folder / f"node-red-{database}"
    user_dir.mkdir(parents=True)
    flow = json.loads(FLOW.read_text())
    for node in flow:
        if node["type"] == "mqtt-broker":
            node.update(broker=broker.host, port=str(broker.port),
                        clientid=f"node-red-{database}")
        elif node["type"] == "influxdb":
            host, port = influx.url.removeprefix("http://").rsplit(":", 1)
            node.update(hostname=host, port=port, database=database)
        elif node["type"] == "mqtt in":
            node["qos"] = str(qos)
        elif node["type"] == "join":
            node.update(count=str(BATCH), timeout=str(BATCH_SECONDS))
    (user_dir / "flows.json").write_text(json.dumps(flow, indent=1))
    (user_dir / "settings.js").write_text(SETTINGS_JS % {"port": free_port()})
    log = (folder / f"node-red-{database}.log").open("wb")
    proc = subprocess.Popen(["node", str(red), "--userDir", str(user_dir)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "NODE_RED_ENABLE_PROJECTS": "false"})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


@contextmanager
def ingest(broker: MosquittoServer, influx: InfluxServer, database: str, qos: int,
           folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {"FACILITY_MQTT_URL": broker.url, "FACILITY_INFLUX_URL": influx.url,
           "FACILITY_INFLUX_DATABASE": database, "FACILITY_SPOOL_DIR": str(folder),
           "FACILITY_INGEST_CLIENT_ID": f"ingest-{database}",
           "FACILITY_INGEST_QOS": str(qos), "FACILITY_INGEST_BATCH_SIZE": str(BATCH),
           "FACILITY_INGEST_BATCH_INTERVAL": str(BATCH_SECONDS)}
    service = Service(["ingest"], env, folder / f"ingest-{database}.log")
    try:
        service.wait_ready()
        yield service.proc
    finally:
        service.stop()


# ---------------------------------------------------------------- one measurement

@dataclass(frozen=True)
class Result:
    published: int
    stored: int
    seconds: float  # first to last point stored
    cpu: float  # CPU seconds of the peer (and its children) over the load
    rss: float
    influx_cpu: float
    broker_cpu: float

    @property
    def rate(self) -> float:
        return self.stored / max(self.seconds, 1e-9)

    @property
    def per_cpu(self) -> float:
        return self.stored / max(self.cpu, 1e-9)


def measure(broker: MosquittoServer, influx: InfluxServer, database: str, n: int, qos: int,
            proc: subprocess.Popen[bytes]) -> Result:
    """Publish the canonical load once the peer is up, count the points until all are
    stored (QoS 1) or nothing more comes (QoS 0, after the publisher is done)."""
    probe_until_stored(broker, influx, database, proc)
    cpu0 = tree_cpu_seconds(proc.pid)
    influx0, broker0 = tree_cpu_seconds(influx.pid), tree_cpu_seconds(broker.pid)
    pub = loadgen(broker.url, n, qos=qos, site="bench")
    first = last = 0.0
    count = 0
    cpu_at_last = cpu0
    influx_at_last, broker_at_last = influx0, broker0
    published_done_at = 0.0
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        now_count = stored(influx, database)
        now = time.monotonic()
        if now_count != count:
            count = now_count
            first = first or now
            last = now
            cpu_at_last = tree_cpu_seconds(proc.pid)
            influx_at_last = tree_cpu_seconds(influx.pid)
            broker_at_last = tree_cpu_seconds(broker.pid)
        if count >= n:
            break
        if pub.poll() is not None:
            published_done_at = published_done_at or now
            quiet = now - max(last, published_done_at)
            if quiet > (5.0 if qos == 0 else 60.0):  # nothing more is coming
                break
        if proc.poll() is not None:
            break
        time.sleep(POLL)
    published = int(loadgen_result(pub)["sent"])
    return Result(published=published, stored=stored(influx, database),
                  seconds=max(last - first, 1e-9), cpu=cpu_at_last - cpu0,
                  rss=tree_peak_rss_mb(proc.pid), influx_cpu=influx_at_last - influx0,
                  broker_cpu=broker_at_last - broker0)


Starter = Callable[[str], AbstractContextManager[subprocess.Popen[bytes]]]


def run_peer(name: str, start: Starter, broker: MosquittoServer,
             influx: InfluxServer, n: int, qos: int, database: str) -> Result:
    influx_query(influx, f'CREATE DATABASE "{database}"')
    with start(database) as proc:
        result = measure(broker, influx, database, n, qos, proc)
    print(f"    {name:<8} QoS {qos}: {result.stored:,} of {result.published:,} stored in "
          f"{result.seconds:.2f} s = {result.rate:,.0f} points/s; CPU {result.cpu:.2f} s = "
          f"{result.per_cpu:,.0f} points/CPU-s; RSS {result.rss:.0f} MB; influxd "
          f"{result.influx_cpu:.2f} s, mosquitto {result.broker_cpu:.2f} s", flush=True)
    return result


# ---------------------------------------------------------------- the benchmark

async def run(quick: bool = False) -> list[Figure]:
    return await asyncio.to_thread(_run, quick)


def _median(results: list[Result], key: Callable[[Result], float]) -> float:
    return statistics.median(key(r) for r in results)


def _run(quick: bool) -> list[Figure]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed for the peers benchmark")
    red = install_node_red()
    versions = node_red_versions()
    print(f"  {versions}", flush=True)
    n = 60_000 if quick else 300_000
    runs = 1 if quick else 3
    results: dict[tuple[str, int], list[Result]] = {}
    with servers() as (broker, influx, folder):
        def start_ingest(qos: int) -> Starter:
            return lambda db: ingest(broker, influx, db, qos, folder)

        def start_node_red(qos: int) -> Starter:
            return lambda db: node_red(red, broker, influx, db, qos, folder)

        for i in range(runs):
            print(f"  run {i + 1} of {runs}", flush=True)
            for qos in (1, 0):
                order = [("ingest", start_ingest(qos)), ("node-red", start_node_red(qos))]
                if i % 2:
                    order.reverse()  # neither peer always runs first
                for name, start in order:
                    db = f"{name.replace('-', '_')}_q{qos}_r{i + 1}"
                    results.setdefault((name, qos), []).append(
                        run_peer(name, start, broker, influx, n, qos, db))
    figures: list[Figure] = []
    of = f"median of {runs}" if runs > 1 else "one run"
    for qos in (1, 0):
        ours, theirs = results[("ingest", qos)], results[("node-red", qos)]
        rate_i, rate_n = _median(ours, lambda r: r.rate), _median(theirs, lambda r: r.rate)
        cpu_i, cpu_n = _median(ours, lambda r: r.per_cpu), _median(theirs, lambda r: r.per_cpu)
        lost_i = max(r.published - r.stored for r in ours)
        lost_n = max(r.published - r.stored for r in theirs)
        label = f"QoS {qos}, {n:,} readings as fast as the publisher goes"
        figures += [
            figure(f"{label}: ingest", rate_i, "pts/s",
                   note=f"{of}; runs {', '.join(f'{r.rate:,.0f}' for r in ours)}; "
                        f"not stored at most {lost_i:,}; RSS {max(r.rss for r in ours):.0f} MB"),
            figure(f"{label}: Node-RED", rate_n, "pts/s",
                   note=f"{of}; runs {', '.join(f'{r.rate:,.0f}' for r in theirs)}; "
                        f"not stored at most {lost_n:,}; "
                        f"RSS {max(r.rss for r in theirs):.0f} MB"),
            figure("  ratio ingest / Node-RED, points stored per second", rate_i / rate_n,
                   "x", note="each run's: " + ", ".join(
                       f"{a.rate / b.rate:.2f}" for a, b in zip(ours, theirs, strict=True))),
            figure("  ingest, points per CPU-second", cpu_i, "pts/CPU-s",
                   note=f"{1e6 / cpu_i:.1f} us/point; runs "
                        f"{', '.join(f'{r.per_cpu:,.0f}' for r in ours)}"),
            figure("  Node-RED, points per CPU-second", cpu_n, "pts/CPU-s",
                   note=f"{1e6 / cpu_n:.1f} us/point; runs "
                        f"{', '.join(f'{r.per_cpu:,.0f}' for r in theirs)}"),
            figure("  ratio ingest / Node-RED, points per CPU-second", cpu_i / cpu_n, "x",
                   note="each run's: " + ", ".join(
                       f"{a.per_cpu / b.per_cpu:.2f}" for a, b in zip(ours, theirs, strict=True))),
            figure("  InfluxDB CPU per point: ingest / Node-RED",
                   _median(ours, lambda r: r.influx_cpu / max(r.stored, 1) * 1e6), "us",
                   note=f"Node-RED's "
                        f"{_median(theirs, lambda r: r.influx_cpu / max(r.stored, 1) * 1e6):.1f}"
                        f" us"),
        ]
    figures.append(figure("  (versions)", 0, "", note=versions))
    return figures
