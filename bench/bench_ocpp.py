"""OCPP: 200 charge points, MeterValues every 10 s, 20 sessions starting a minute: the
central system's CPU and the latency from a charge point's MeterValues to its canonical
reading on the broker.

Two processes besides Mosquitto (private, on a free port): this one runs the central
system (csms/, security profile 1 with a password per charge point) and a subscriber to
the canonical telemetry; a second one (`python -m bench.bench_ocpp fleet`) runs the 200
simulated charge points of simulators/ocpp_chargers.py, real OCPP 1.6J over WebSocket on
the ocpp library's client side, each sending clock-aligned MeterValues every 10 s (periodic
ones while charging) and one session started every 3 s across the fleet. Latency: the
MeterValues' own timestamp (taken when the charger makes it, millisecond precision) to the
Reading's arrival at the subscriber; CPU: this process's CPU time over the measured
window (the subscriber's share included, so an upper bound for the central system).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pydantic import SecretStr

from bench.common import Figure, figure, peak_rss_mb
from csms.config import hash_password
from csms.service import CentralSystem
from facility import messages as m
from facility import topics
from facility.localservers import MosquittoServer
from facility.mqtt import MqttError
from facility.mqttlink import connector
from facility.settings import MqttSettings, load_settings
from facility.site import Device, OcppEndpoint, load_site
from facility.topics import Kind
from simulators.ocpp_chargers import Fleet, SimChargePoint
from simulators.ocpp_chargers import Settings as SimSettings

REPO = Path(__file__).resolve().parent.parent
POINTS = 200
METER_PERIOD = 10.0
SESSIONS_PER_MINUTE = 20
SESSION_LENGTH = 300.0


def _points(count: int) -> list[str]:
    return [f"BENCH-{n:03d}" for n in range(1, count + 1)]


async def _fleet(url: str, passwords: dict[str, str], duration: float,
                 aligned: bool) -> None:
    """The charge points; `aligned`: every one samples at the same instant (clock-aligned
    data, the worst burst), else each at its own phase of the period."""
    step = 0.0 if aligned else METER_PERIOD / len(passwords)
    fleet = Fleet([SimChargePoint(cp, SimSettings(url, pw, meter_period=METER_PERIOD,
                                                  meter_when_idle=True, meter_phase=n * step))
                   for n, (cp, pw) in enumerate(passwords.items())],
                  session_every=60.0 / SESSIONS_PER_MINUTE, session_length=SESSION_LENGTH)
    async with fleet:
        await asyncio.sleep(duration)


class Latency:
    def __init__(self, mqtt: MqttSettings, site: str) -> None:
        self.mqtt = mqtt
        self.site = site
        self.samples: list[float] = []  # ms, after `measuring` is set
        self.readings = 0
        self.measuring = False
        self.ready = asyncio.Event()

    async def run(self) -> None:
        connect = connector(self.mqtt, f"bench-ocpp-{uuid.uuid4().hex[:6]}")
        while True:
            try:
                async with connect() as link:
                    await link.subscribe([topics.subscription(Kind.TELEMETRY, self.site)], qos=0)
                    self.ready.set()
                    while True:
                        for message in await link.next_batch(1000, None):
                            now = time.time_ns()
                            reading = m.decode(bytes(message.payload), m.Reading)
                            if "energy_import" not in reading.values:
                                continue
                            self.readings += 1
                            if self.measuring:
                                self.samples.append((now - reading.ts) / 1e6)
            except MqttError:
                await asyncio.sleep(0.2)


async def run(quick: bool = False) -> list[Figure]:
    warmup, window = (20.0, 40.0) if quick else (40.0, 120.0)
    figures = []
    for aligned in (False, True):
        folder = Path(tempfile.mkdtemp(prefix="facility-bench-ocpp-"))
        broker = MosquittoServer(folder / "mosquitto",
                                 extra_config="max_queued_messages 100000\n")
        broker.start()
        try:
            figures += await _measure(broker, folder, warmup, window, aligned)
        finally:
            broker.stop()
            shutil.rmtree(folder, ignore_errors=True)
    return figures


async def _measure(broker: MosquittoServer, folder: Path, warmup: float,
                   window: float, aligned: bool) -> list[Figure]:
    site_id = f"bench-{uuid.uuid4().hex[:6]}"
    site = load_site(REPO / "config" / "site.yaml")
    cps = _points(POINTS)
    devices = [*site.devices, *(
        Device(id=f"evc-bench-{n:03d}", family=m.Family.EV_CHARGER, kind="ac_charger",
               name=f"压测充电桩{n}", gateway="csms", place="car-park",
               tags={"rated_kw": "7"}, ocpp=OcppEndpoint(id=cp))
        for n, cp in enumerate(cps, start=1))]
    site = site.model_validate({**site.model_dump(), "devices": [d.model_dump() for d in
                                                                 devices]})
    passwords = {cp: uuid.uuid4().hex + uuid.uuid4().hex for cp in cps}
    settings = load_settings(
        REPO / "config" / "facility.yaml",
        mqtt=MqttSettings(url=SecretStr(broker.url)), spool={"dir": str(folder / "spool")},
        ocpp={"port": 0, "site": site_id, "heartbeat_interval": 300, "call_timeout": 30})
    central = CentralSystem(settings, site, credentials={
        cp: hash_password(pw, random_token=True) for cp, pw in passwords.items()})
    probe = Latency(settings.mqtt, site_id)
    probe_task = asyncio.create_task(probe.run(), name="latency probe")
    fleet: asyncio.subprocess.Process | None = None
    try:
        async with central:
            await central.wait_ready(30)
            await asyncio.wait_for(probe.ready.wait(), 10)
            url = f"ws://127.0.0.1:{central.port}/ocpp"
            fleet = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.bench_ocpp", "fleet", url,
                str(warmup + window + 30), "aligned" if aligned else "staggered",
                stdin=asyncio.subprocess.PIPE,
                cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
            assert fleet.stdin is not None
            fleet.stdin.write(json.dumps(passwords).encode() + b"\n")  # never on argv
            await fleet.stdin.drain()
            fleet.stdin.close()
            await asyncio.sleep(warmup)
            connected = len(central.sessions)
            probe.measuring = True
            cpu0, wall0, readings0 = time.process_time(), time.monotonic(), probe.readings
            await asyncio.sleep(window)
            cpu = time.process_time() - cpu0
            wall = time.monotonic() - wall0
            readings = probe.readings - readings0
            probe.measuring = False
            sessions = central.store.db.execute("SELECT count(*) FROM tx").fetchone()[0]
            letters = central.letters.total
            ages = _buckets(central)
    finally:
        if fleet is not None and fleet.returncode is None:
            fleet.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fleet.wait(), 10)
        probe_task.cancel()
        await asyncio.gather(probe_task, return_exceptions=True)
    lat = sorted(probe.samples) or [0.0]

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    expected = POINTS / METER_PERIOD
    if aligned:  # the worst burst: all 200 samples at one instant, every 10 s
        tag = "clock-aligned (200 at once)"
        return [
            figure(f"{tag}: central system CPU", 100 * cpu / wall, "%", at_most=25),
            figure(f"{tag}: latency median", statistics.median(lat), "ms", at_most=250),
            figure(f"{tag}: latency p99", pct(0.99), "ms", at_most=1000),
            figure(f"{tag}: charger -> central system, median (bucket bound)",
                   _bucket_quantile(ages, 0.5), "ms"),
            figure(f"{tag}: dead letters", letters, "", at_most=0),
        ]
    return [
        figure("charge points connected", connected, "", at_least=POINTS),
        figure("MeterValues readings on the broker", readings / wall, "/s",
               at_least=expected * 0.95, note=f"{POINTS} points every {METER_PERIOD:g} s"),
        figure("transactions started (warm-up and window)", sessions, "",
               note=f"{SESSIONS_PER_MINUTE}/min"),
        figure("central system CPU (one core = 100 %)", 100 * cpu / wall, "%", at_most=25),
        figure("latency MeterValues -> reading on broker, median", statistics.median(lat),
               "ms", at_most=50),
        figure("latency, p99", pct(0.99), "ms", at_most=250),
        figure("latency, max", lat[-1], "ms"),
        figure("of which charger -> central system, median (bucket bound)",
               _bucket_quantile(ages, 0.5), "ms"),
        figure("dead letters", letters, "", at_most=0),
        figure("peak RSS of the central system's process", peak_rss_mb(), "MB"),
    ]


def _buckets(central: CentralSystem) -> list[tuple[float, float]]:
    """(upper bound s, cumulative count) of the central system's sample-age histogram."""
    out = []
    for metric in central.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("meter_sample_age_seconds_bucket"):
                out.append((float(sample.labels["le"]), sample.value))
    return sorted(out)


def _bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    total = buckets[-1][1] if buckets else 0
    return next((le for le, n in buckets if n >= q * total), float("inf")) * 1000


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "fleet":
        passwords = json.loads(sys.stdin.readline())
        asyncio.run(_fleet(sys.argv[2], passwords, float(sys.argv[3]),
                           aligned=sys.argv[4:5] == ["aligned"]))


if __name__ == "__main__":
    main()
