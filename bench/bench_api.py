"""API: the latest values of every device at 200 requests/s (open loop), and one week of
1 Hz history downsampled by InfluxDB to 500 points, against `facility api` in its own
process with the campus site, InfluxDB and Mosquitto."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time

import aiohttp

from bench.common import Figure, figure, servers
from bench.procs import REPO
from facility import lineprotocol as lp
from facility.influx import InfluxClient
from facility.localservers import free_port, wait_for
from facility.settings import InfluxSettings
from facility.site import load_site

SITE_FILE = REPO / "config" / "site.yaml"
WEEK = 7 * 24 * 3600


async def load_data(influx_url: str, end_ns: int) -> int:
    """One point for every device now, and a week of 1 Hz power for the main meter."""
    site = load_site(SITE_FILE)
    async with InfluxClient(InfluxSettings(url=influx_url, database="api")) as client:
        await client.ensure_database()
        now_lines = [lp.line(family.value, {"site": site.site.id, "device": device_id},
                             {"quality": "good", "value": 1.0}, end_ns).encode()
                     for device_id, family, _ in site.all_device_ids()]
        await client.write(b"\n".join(now_lines))
        key = lp.series_key("energy", {"site": site.site.id, "device": "em-main-total",
                                       "building": "main-building", "load": "total"})
        written = 0
        start = end_ns - WEEK * 10**9
        for chunk in range(0, WEEK, 10_000):
            lines = [f'{key} quality="good",power_total={500 + (s % 3600) / 10} '
                     f"{start + s * 10**9}".encode()
                     for s in range(chunk, min(chunk + 10_000, WEEK))]
            await client.write(b"\n".join(lines))
            written += len(lines)
    return written


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def open_loop(session: aiohttp.ClientSession, url: str, rate: float,
                    seconds: float) -> tuple[list[float], int]:
    """Requests sent on a fixed schedule, whatever the answers take (no coordinated
    omission); latency in ms from the scheduled send to the full answer."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()

    async def one(due: float) -> None:
        nonlocal errors
        async with session.get(url) as resp:
            await resp.read()
            if resp.status != 200:
                errors += 1
        latencies.append((time.perf_counter() - due) * 1000)

    tasks = []
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return latencies, errors


async def run(quick: bool = False) -> list[Figure]:
    seconds = 10 if quick else 30
    with servers() as (broker, influx, folder):
        end_ns = time.time_ns()
        points = await load_data(influx.url, end_ns)
        port = free_port()
        env = {**os.environ, "FACILITY_MQTT_URL": broker.url, "FACILITY_INFLUX_URL": influx.url,
               "FACILITY_INFLUX_DATABASE": "api", "FACILITY_API_PORT": str(port),
               "FACILITY_API_SECRET": secrets.token_urlsafe(32),
               "FACILITY_STATE_URL": f"sqlite:///{folder / 'state.sqlite'}"}
        password = secrets.token_urlsafe(16)
        subprocess.run([sys.executable, "-m", "app", "users", "add", "bench", "--role",
                        "viewer", "--zones", "*", "--password-stdin"], input=password.encode(),
                       env=env, cwd=REPO, check=True, capture_output=True)
        log = (folder / "api.log").open("wb")
        api = subprocess.Popen([sys.executable, "-m", "app", "api"], env=env, cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            await asyncio.to_thread(wait_for, lambda: _ready(base), 60, "the API")
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=100)) as session:
                async with session.post(f"{base}/api/auth/login",
                                        json={"username": "bench", "password": password}) as r:
                    token = (await r.json())["access_token"]
                session.headers["Authorization"] = f"Bearer {token}"
                async with session.get(f"{base}/api/devices") as r:
                    devices = len(await r.json())
                await open_loop(session, f"{base}/api/devices", 50, 2)  # warm up
                latest, errors = await open_loop(session, f"{base}/api/devices", 200, seconds)
                start = (end_ns - WEEK * 10**9) // 10**9
                history_url = (f"{base}/api/devices/em-main-total/history?field=power_total"
                               f"&start={_iso(start)}&end={_iso(end_ns // 10**9)}&points=500")
                history: list[float] = []
                returned = 0
                for _ in range(20):
                    t0 = time.perf_counter()
                    async with session.get(history_url) as r:
                        body = await r.json()
                    history.append((time.perf_counter() - t0) * 1000)
                    returned = len(body["points"])
        finally:
            api.terminate()
            api.wait(20)
            log.close()
    return [
        figure(f"latest values of all {devices} devices at 200 req/s: p50",
               percentile(latest, 0.5), "ms"),
        figure("  p99", percentile(latest, 0.99), "ms", at_most=10),
        figure("  max", max(latest), "ms", note=f"{len(latest)} requests, {errors} errors"),
        figure(f"one week of 1 Hz history ({points:,} points) to {returned} points: p50",
               percentile(history, 0.5), "ms"),
        figure("  max", max(history), "ms", at_most=300),
    ]


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _ready(base: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


