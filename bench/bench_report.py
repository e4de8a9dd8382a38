"""Energy report: one month of 1-minute data from 50 meters in InfluxDB, rolled up as the
continuous queries do, then `facility report energy --month` timed end to end."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from bench.common import Figure, figure, servers
from bench.procs import REPO
from facility import lineprotocol as lp
from facility.influx import InfluxClient
from facility.settings import InfluxSettings

TZ = ZoneInfo("Asia/Shanghai")
LOADS = ("total", "lighting", "hvac", "lifts", "canteen")
BUILDINGS = 10  # x 5 loads = 50 meters


def site_file(folder: Path) -> Path:
    places = [{"id": f"b{b}", "name": f"楼{b}", "kind": "building", "zone": "z",
               "floor_area_m2": 10000 + 1000 * b, "occupants": 300 + 20 * b}
              for b in range(BUILDINGS)]
    devices = [{"id": f"em-b{b}-{load}", "family": "energy", "kind": "meter",
                "gateway": "gw", "place": f"b{b}", "tags": {"load": load},
                "modbus": {"host": "127.0.0.1", "port": 1, "unit": 1, "model": "chint-dtsu666"}}
               for b in range(BUILDINGS) for load in LOADS]
    site = {"version": 1, "site": {"id": "bench", "name": "报表基准"},
            "zones": [{"id": "z", "name": "z"}], "places": places,
            "gateways": [{"id": "gw", "kind": "modbus"}], "devices": devices}
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(site, allow_unicode=True), encoding="utf-8")
    return path


def month_lines(start: datetime, days: int, chunk_minutes: int) -> list[list[bytes]]:
    """Line-protocol batches: every meter every minute, a counter that only grows."""
    batches: list[list[bytes]] = []
    minutes = days * 24 * 60
    base_ns = int(start.timestamp()) * 10**9
    counters = {f"em-b{b}-{load}": 1000.0 * (b + 1) for b in range(BUILDINGS) for load in LOADS}
    series = {d: lp.series_key("energy", {"site": "bench", "device": d, "building": d.split("-")[1],
                                          "load": d.rsplit("-", 1)[1]}) for d in counters}
    for first in range(0, minutes, chunk_minutes):
        lines = []
        for minute in range(first, min(first + chunk_minutes, minutes)):
            hour = (minute // 60) % 24
            office = 8 <= hour < 18
            ts = base_ns + minute * 60 * 10**9
            for device, key in series.items():
                kw = (40.0 if office else 8.0) * (2.0 if device.endswith("total") else 1.0)
                counters[device] += kw / 60
                lines.append(f'{key} quality="good",power_total={kw},'
                             f"energy_import={counters[device]:.4f} {ts}".encode())
        batches.append(lines)
    return batches


async def load(influx_url: str, database: str, start: datetime, days: int) -> int:
    settings = InfluxSettings(url=influx_url, database=database)
    written = 0
    async with InfluxClient(settings) as client:
        await client.ensure_database()
        for batch in month_lines(start, days, chunk_minutes=100):
            await client.write(b"\n".join(batch))
            written += len(batch)
    return written


def facility(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall time of the whole command, and what it said on stderr."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "app", *args], env={**os.environ, **env},
                          cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    return time.monotonic() - started, done.stderr


async def run(quick: bool = False) -> list[Figure]:
    return await asyncio.to_thread(_run, quick)


def _run(quick: bool) -> list[Figure]:
    days = 7 if quick else 31
    start = datetime(2026, 10, 1, tzinfo=TZ)
    with servers() as (broker, influx, folder):
        env = {"FACILITY_MQTT_URL": broker.url, "FACILITY_INFLUX_URL": influx.url,
               "FACILITY_INFLUX_DATABASE": "report", "FACILITY_SITE_FILE": str(site_file(folder)),
               "FACILITY_REPORTS_OUTPUT_DIR": str(folder / "out")}
        t0 = time.monotonic()
        points = asyncio.run(load(influx.url, "report", start, days))
        loaded = time.monotonic() - t0
        last = (start + timedelta(days=days - 1)).date().isoformat()
        rollup, _ = facility(["report", "rollup", "--from", "2026-10-01", "--to", last,
                              "--no-progress"], env)
        period = ["--month", "2026-10"] if not quick else ["--from", "2026-10-01", "--to", last]
        whole, said = facility(["report", "energy", *period, "--no-progress"], env)
        outputs = sorted(p.suffix for p in (folder / "out").rglob("*") if p.is_file())
    # The command's own account: "figures in X s, with rendering Y s".
    found = re.search(r"figures in ([\d.]+) s, with rendering ([\d.]+) s", said)
    figures_s, rendered_s = (float(found.group(1)), float(found.group(2))) if found else (0, 0)
    return [
        figure("points loaded (50 meters, 1-minute data)", points, "points",
               note=f"{loaded:.0f} s to write"),
        figure("rollups built (what the continuous queries do as data arrives)", rollup, "s"),
        figure(f"energy report, {days} days: figures (queries, counters, charts data)",
               figures_s, "s"),
        figure("  with HTML + PDF + XLSX rendered", rendered_s, "s", at_most=5.0,
               note=f"files {' '.join(outputs)}"),
        figure("  the whole command, Python start-up and imports included", whole, "s",
               note="about 1.3 s of it is importing WeasyPrint, matplotlib and the rest"),
    ]
