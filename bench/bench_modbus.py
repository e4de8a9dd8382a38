"""Modbus polling: 1,000 simulated devices (10-60 registers each) polled every second by
one gateway process; lateness of every poll against its schedule, and the gateway's CPU."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml
from pydantic import SecretStr

from bench.common import Figure, figure, servers
from bench.procs import REPO, Service, cpu_seconds
from facility import messages as m
from facility import topics
from facility.mqttlink import MqttLink
from facility.settings import MqttSettings

HOSTS, UNITS, PERIOD = 50, 20, 1.0


def write_config(folder: Path, ports: list[int]) -> Path:
    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    for size in (10, 30, 60):
        models.joinpath(f"bench-{size}.yaml").write_text(yaml.safe_dump({
            "model": f"bench-{size}", "vendor": "bench", "description": f"{size} registers",
            "reference": "bench/modbus_farm.py", "points": [
                {"name": f"v{i}", "address": 2 * i, "type": "float32", "unit": "V"}
                for i in range(size // 2)]}), encoding="utf-8")
    devices = [{"id": f"m{h:02d}-{u:02d}", "family": "energy", "kind": "meter",
                "gateway": "gw-bench", "place": "p",
                "modbus": {"host": "127.0.0.1", "port": port, "unit": u,
                           "model": f"bench-{(10, 30, 60)[u % 3]}", "period": PERIOD,
                           "timeout": 0.5}}
               for h, port in enumerate(ports) for u in range(1, UNITS + 1)]
    site = {"version": 1, "site": {"id": "bench", "name": "bench"},
            "zones": [{"id": "z", "name": "z"}],
            "places": [{"id": "p", "name": "p", "kind": "building", "zone": "z"}],
            "gateways": [{"id": "gw-bench", "kind": "modbus"}], "devices": devices}
    (folder / "site.yaml").write_text(yaml.safe_dump(site), encoding="utf-8")
    return folder / "site.yaml"


async def collect(url: str, seconds: float) -> dict[str, list[int]]:
    times: dict[str, list[int]] = defaultdict(list)
    async with await MqttLink.open(MqttSettings(url=SecretStr(url)), "bench-modbus-watch") as link:
        await link.subscribe([topics.subscription(topics.Kind.TELEMETRY, "bench")], qos=0)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for message in await link.next_batch(10_000, 0.2):
                reading = m.decode(message.payload, m.Reading)
                if reading.quality is m.Quality.GOOD:
                    times[reading.device].append(reading.ts)
    return times


def lateness(times: dict[str, list[int]]) -> list[float]:
    """Each poll's start against its device's schedule (fixed rate from its first poll)."""
    out = []
    period = int(PERIOD * 1e9)
    for stamps in times.values():
        stamps.sort()
        base = min(ts - k * period for k, ts in enumerate(stamps))
        out += [(ts - k * period - base) / 1e6 for k, ts in enumerate(stamps)]
    return out


async def run(quick: bool = False) -> list[Figure]:
    seconds = 15 if quick else 60
    farm = subprocess.Popen(
        [sys.executable, "-m", "bench.modbus_farm", "--hosts", str(HOSTS), "--units",
         str(UNITS)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert farm.stdout is not None
        ports = json.loads(farm.stdout.readline())["ports"]
        with servers() as (broker, influx, folder):
            site = write_config(folder, ports)
            env = {"FACILITY_MQTT_URL": broker.url, "FACILITY_INFLUX_URL": influx.url,
                   "FACILITY_SITE_FILE": str(site),
                   "FACILITY_MODELS_DIR": str(folder / "models"),
                   "FACILITY_SPOOL_DIR": str(folder / "spool")}
            gateway = Service(["gateway"], env, folder / "gateway.log")
            try:
                gateway.wait_ready()
                await collect(broker.url, 5.0)  # warm-up: first polls spread over a period
                cpu0 = cpu_seconds(gateway.proc.pid)
                farm0 = cpu_seconds(farm.pid)
                wall0 = time.monotonic()
                times = await collect(broker.url, seconds)
                wall = time.monotonic() - wall0
                cores = (cpu_seconds(gateway.proc.pid) - cpu0) / wall
                farm_cores = (cpu_seconds(farm.pid) - farm0) / wall
            finally:
                gateway.stop()
    finally:
        farm.kill()
        farm.wait(10)
    late = sorted(lateness(times))
    polls = sum(len(v) for v in times.values())
    p99 = late[int(0.99 * (len(late) - 1))]
    return [
        figure("devices polled", len(times), "devices", at_least=HOSTS * UNITS),
        figure("polls per device per second", polls / len(times) / seconds, "/s",
               at_least=0.98 / PERIOD),
        figure("poll lateness p50", statistics.median(late), "ms"),
        figure("poll lateness p99", p99, "ms", at_most=100),
        figure("poll lateness max", late[-1], "ms"),
        figure("gateway CPU", cores, "cores", at_most=0.5,
               note=f"{HOSTS} hosts x {UNITS} units, 1 read of 10-60 registers each"),
        figure("simulated devices' CPU (pymodbus servers, not the gateway)", farm_cores,
               "cores"),
    ]
