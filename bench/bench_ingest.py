"""Ingest: QoS 1 acknowledged after InfluxDB (against the broker's own rate to a C client,
in the same run), QoS 0 telemetry mode sustained, CPU per message and peak memory, and a
long InfluxDB outage at a steady rate (spool on disk, all written after)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from bench.common import Figure, figure, servers
from bench.procs import Service, cpu_seconds, loadgen, loadgen_result, peak_rss_mb, rss_mb
from facility.influx import InfluxClient
from facility.localservers import InfluxServer, MosquittoServer
from facility.settings import InfluxSettings


def ingest_env(broker: MosquittoServer, influx: InfluxServer, database: str, folder: Path,
               **options: object) -> dict[str, str]:
    env = {"FACILITY_MQTT_URL": broker.url, "FACILITY_INFLUX_URL": influx.url,
           "FACILITY_INFLUX_DATABASE": database, "FACILITY_SPOOL_DIR": str(folder),
           "FACILITY_INGEST_CLIENT_ID": f"ingest-{database}"}
    env.update({f"FACILITY_INGEST_{k.upper()}": str(v) for k, v in options.items()})
    return env


async def count(influx_url: str, database: str) -> int:
    async with InfluxClient(InfluxSettings(url=influx_url, database=database)) as client:
        result = await client.query('SELECT count("power_total") FROM "energy"')
    return int(result[0][0].values[0][1]) if result and result[0] else 0


def c_subscriber_rate(broker: MosquittoServer, n: int) -> float:
    """Messages/s from the broker to mosquitto_sub (QoS 1), first to last message."""
    sub = subprocess.Popen(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q",
                            "1", "-t", "facility/v1/base/#", "-C", str(n)],
                           stdout=subprocess.PIPE, text=True, bufsize=1)
    time.sleep(0.5)  # mosquitto_sub has no "subscribed" signal to wait for
    pub = loadgen(broker.url, n, qos=1, site="base")
    assert sub.stdout is not None
    first = last = 0.0
    got = 0
    for _ in sub.stdout:
        last = time.monotonic()
        if got == 0:
            first = last
        got += 1
    sub.wait(60)
    loadgen_result(pub)
    return got / max(last - first, 1e-9)


def ingest_rate(broker: MosquittoServer, influx: InfluxServer, folder: Path, n: int, qos: int,
                database: str, seconds: float = 0.0
                ) -> tuple[float, float, float, int, int, dict[str, float]]:
    """(msg/s first-to-last, CPU µs/msg, peak RSS MB, published, written, CPU seconds of
    every process involved) for one run."""
    env = ingest_env(broker, influx, database, folder, qos=qos, batch_size=5000,
                     batch_interval=0.05)
    ingest = Service(["ingest"], env, folder / f"{database}.log")
    try:
        ingest.wait_ready()
        cpu_before = cpu_seconds(ingest.proc.pid)
        others = {"mosquitto": broker.pid, "influxd": influx.pid}
        others_before = {k: cpu_seconds(pid) for k, pid in others.items()}
        rate = n / seconds if seconds else 0.0
        pub = loadgen(broker.url, n, qos=qos, rate=rate, site="bench")
        first = last = 0.0
        written = 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            written = ingest.metric("facility_ingest_points_written_total")
            now = time.monotonic()
            if written and not first:
                first = now
            if written >= n:
                last = now
                break
            if pub.poll() is not None and qos == 0:
                # QoS 0: what the broker dropped never comes; stop once ingest is idle.
                time.sleep(1.0)
                if ingest.metric("facility_ingest_points_written_total") == written:
                    last = now
                    break
            time.sleep(0.02)
        shares = {k: cpu_seconds(pid) - others_before[k] for k, pid in others.items()}
        published = int(loadgen_result(pub)["sent"])
        cpu = cpu_seconds(ingest.proc.pid) - cpu_before
        shares["ingest"] = cpu
        shares["wall"] = max(last - first, 1e-9)
        peak = peak_rss_mb(ingest.proc.pid)
    finally:
        ingest.stop()
    stored = asyncio.run(count(influx.url, database))
    return (written / max(last - first, 1e-9), cpu / max(written, 1) * 1e6, peak, published,
            stored, shares)


def outage(broker: MosquittoServer, influx: InfluxServer, folder: Path, minutes: float,
           rate: float) -> list[Figure]:
    database = "outage"
    env = ingest_env(broker, influx, database, folder, spool_after=5.0)
    ingest = Service(["ingest"], env, folder / "outage.log")
    n = int(rate * (minutes * 60 + 30))
    try:
        ingest.wait_ready()
        pub = loadgen(broker.url, n, qos=1, rate=rate, site="outage")
        time.sleep(15)
        influx.stop()
        stopped = time.monotonic()
        peak_rss = 0.0
        while time.monotonic() - stopped < minutes * 60:
            peak_rss = max(peak_rss, rss_mb(ingest.proc.pid))
            time.sleep(1.0)
        spooled = ingest.metric("facility_ingest_spooled_points")
        # spool.dir/ingest/: each service has its folder
        spool_bytes = sum(p.stat().st_size for p in folder.rglob("*ingest-outage*"))
        influx.start()
        back = time.monotonic()
        published = int(loadgen_result(pub)["sent"])
        while time.monotonic() - back < 1200:
            if ingest.metric("facility_ingest_points_written_total") >= n:
                break
            peak_rss = max(peak_rss, rss_mb(ingest.proc.pid))
            time.sleep(0.5)
        caught_up = time.monotonic() - back
    finally:
        ingest.stop()
    stored = asyncio.run(count(influx.url, database))
    label = f"InfluxDB stopped {minutes:g} min at {rate:,.0f} msg/s"
    return [
        figure(f"{label}: published", published, "msgs"),
        figure(f"{label}: spooled on disk at the end of the outage", spooled, "points",
               note=f"{spool_bytes / 2**20:.0f} MiB"),
        figure(f"{label}: ingest RSS at most", peak_rss, "MB", at_most=150),
        figure(f"{label}: written to InfluxDB after", stored, "points", at_least=published),
        figure(f"{label}: lost", published - stored, "msgs", at_most=0),
        figure(f"{label}: time to catch up after InfluxDB returned", caught_up, "s"),
    ]


async def run(quick: bool = False) -> list[Figure]:
    return await asyncio.to_thread(_run, quick)


def _run(quick: bool) -> list[Figure]:
    n = 60_000 if quick else 300_000
    figures: list[Figure] = []
    with servers() as (broker, influx, folder):
        base = c_subscriber_rate(broker, n)
        figures.append(figure("broker QoS 1 to a C client (mosquitto_sub)", base, "msg/s"))
        rate, cpu, rss, published, stored, _ = ingest_rate(broker, influx, folder, n, 1, "q1")
        figures += [
            figure("ingest QoS 1, acked after InfluxDB accepted", rate, "msg/s",
                   at_least=0.8 * base, note=f"{rate / base:.2f} x the broker's rate"),
            figure("  verified in InfluxDB (of published)", stored, "points",
                   at_least=published),
            figure("  CPU per message", cpu, "us"),
            figure("  peak RSS", rss, "MB", at_most=150),
        ]
        seconds = 10 if quick else 60
        target = 100_000
        rate0, cpu0, rss0, published0, stored0, shares = ingest_rate(
            broker, influx, folder, target * seconds, 0, "q0", seconds=seconds)
        wall = shares.pop("wall")
        busy = ", ".join(f"{k} {v / wall:.2f}" for k, v in shares.items())
        figures += [
            figure(f"ingest QoS 0 telemetry mode, offered {target:,}/s for {seconds}s",
                   rate0, "msg/s", at_least=target),
            figure("  published / written / lost at the broker", published0, "msgs",
                   note=f"written {stored0:,}, not written {published0 - stored0:,}"),
            figure("  CPU per message", cpu0, "us",
                   note=f"cores busy during the run: {busy} (+ the load generator)"),
            figure("  peak RSS", rss0, "MB", at_most=150),
        ]
        figures += outage(broker, influx, folder, minutes=0.5 if quick else 10, rate=5000)
    return figures
