"""Nothing lost between the broker and InfluxDB, proved by creating the faults here:
InfluxDB down for a while at a steady rate (disk spool, replay), InfluxDB answering 503
and 429, the ingest process killed between receiving and writing, the broker restarted
while ingest is down, and sequence gaps reported. Loss is counted by sequence numbers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from facility import messages as m
from facility import topics
from facility.influx import InfluxClient
from facility.localservers import InfluxServer, MosquittoServer, free_port
from facility.messages import Family, Reading
from facility.settings import Settings
from ingest.service import Ingest
from tests.conftest import REPO, make_settings
from tests.faults import HttpFaults
from tests.helpers import count_points, eventually, publish_all

pytestmark = pytest.mark.slow


def readings(site: str, start_seq: int, count: int, gateway: str = "gw-seq") -> list[Reading]:
    base = time.time_ns()
    return [Reading(site=site, family=Family.ENERGY, device=f"em-{i % 7}", ts=base + i * 1000,
                    seq=start_seq + i, gateway=gateway, values={"power_total": float(i)},
                    tags={"building": "main-building"})
            for i in range(count)]


def encoded(rs: list[Reading]) -> list[tuple[str, bytes]]:
    return [(topics.telemetry(r.site, r.family, r.device), m.encode(r)) for r in rs]


def tuned(settings: Settings, site: str, **ingest: object) -> Settings:
    options = {"site": site, "client_id": f"ingest-{site}", "batch_interval": 0.05,
               "session_expiry": 600, **ingest}
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(update=options)})


async def test_influxdb_down_spools_to_disk_and_replays(
        tmp_path: Path, mosquitto_server: MosquittoServer, own_influx: InfluxServer,
        unique: str) -> None:
    site = f"t{unique}"
    settings = tuned(make_settings(tmp_path, mosquitto_server.url, own_influx.url,
                                   f"spool_{unique}"), site, spool_after=1.0)
    sent = 0
    async with Ingest(settings) as ingest, InfluxClient(settings.influx) as influx:
        await ingest.wait_ready()
        outage_started = time.monotonic()
        own_influx.stop()
        # A steady 400 msg/s for 6 s while InfluxDB is down.
        while time.monotonic() - outage_started < 6:
            await publish_all(settings.mqtt, encoded(readings(site, sent + 1, 40)))
            sent += 40
            await asyncio.sleep(0.1)
        spool = ingest.spool
        assert spool is not None
        assert spool.lines > 0 and spool.disk_bytes() > 0, "the overflow went to disk"
        assert ingest.spooled > 0
        peak_spooled = spool.lines
        own_influx.start()
        await publish_all(settings.mqtt, encoded(readings(site, sent + 1, 200)))
        sent += 200
        stored = await eventually(lambda: count_points(influx, "energy"), lambda n: n >= sent,
                                  60, f"all {sent} points after InfluxDB returned")
        assert spool.lines == 0, "spool replayed completely"
    assert stored == sent
    assert ingest.sequences.lost["gw-seq"] == 0
    print(f"sent {sent}, spooled at peak {peak_spooled}, written {stored}, lost 0")


async def test_5xx_and_429_are_retried(tmp_path: Path, mosquitto_server: MosquittoServer,
                                       influx_server: InfluxServer, unique: str) -> None:
    site = f"t{unique}"
    async with HttpFaults(influx_server.url) as proxy:
        settings = tuned(make_settings(tmp_path, mosquitto_server.url, proxy.url,
                                       f"http_{unique}"), site)
        async with Ingest(settings) as ingest, InfluxClient(
                settings.influx.model_copy(update={"url": influx_server.url})) as influx:
            await ingest.wait_ready()
            await publish_all(settings.mqtt, encoded(readings(site, 1, 1)))
            await eventually(lambda: count_points(influx, "energy"), lambda n: n == 1, 30,
                             "a first point, with the schema set up")
            assert ingest.writer is not None
            proxy.fail_next, proxy.fail_status = 3, 503
            await publish_all(settings.mqtt, encoded(readings(site, 2, 100)))
            await eventually(lambda: count_points(influx, "energy"), lambda n: n == 101, 30,
                             "100 points through 503s")
            assert ingest.writer.stats.retries == 3
            proxy.fail_next, proxy.fail_status = 3, 429
            await publish_all(settings.mqtt, encoded(readings(site, 102, 100)))
            await eventually(lambda: count_points(influx, "energy"), lambda n: n == 201, 30,
                             "200 points through 429s")
            assert ingest.writer.stats.retries == 6
    assert ingest.dead_letters == 0


async def test_ingest_killed_before_writing_loses_nothing(
        tmp_path: Path, mosquitto_server: MosquittoServer, own_influx: InfluxServer,
        unique: str) -> None:
    """SIGKILL while InfluxDB hangs: nothing was acknowledged, so the broker sends it all
    again to the next ingest."""
    site = f"t{unique}"
    settings = tuned(make_settings(tmp_path, mosquitto_server.url, own_influx.url,
                                   f"kill_{unique}"), site, spool_after=600.0)
    metrics_port = free_port()
    env = {**os.environ,
           "FACILITY_MQTT_URL": mosquitto_server.url, "FACILITY_INFLUX_URL": own_influx.url,
           "FACILITY_INFLUX_DATABASE": settings.influx.database,
           "FACILITY_INGEST_SITE": site, "FACILITY_INGEST_CLIENT_ID": f"ingest-{site}",
           "FACILITY_INGEST_SPOOL_AFTER": "600", "FACILITY_INGEST_SESSION_EXPIRY": "600",
           "FACILITY_SPOOL_DIR": str(tmp_path / "spool")}
    log = (tmp_path / "ingest.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220 (a process the test kills on purpose)
        [sys.executable, "-m", "app", "ingest", "--metrics", f"127.0.0.1:{metrics_port}"],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        await eventually(lambda: asyncio.to_thread(_healthy, metrics_port), bool, 30,
                         "the ingest process to be connected")
        own_influx.pause()  # a write now hangs
        await publish_all(settings.mqtt, encoded(readings(site, 1, 500)))
        await eventually(lambda: asyncio.to_thread(_received, metrics_port),
                         lambda n: n >= 500, 30, "ingest to hold all 500 messages")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        own_influx.resume()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
    async with Ingest(settings) as ingest, InfluxClient(settings.influx) as influx:
        stored = await eventually(lambda: count_points(influx, "energy"), lambda n: n >= 500,
                                  60, "the 500 points after the restart")
        assert ingest.sequences.lost["gw-seq"] == 0
    assert stored == 500


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        return str(resp.read().decode())


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def _received(port: int) -> float:
    try:
        text = _metrics(port)
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("facility_ingest_messages_total "):
            return float(line.split()[1])
    return 0.0


async def test_broker_restart_while_ingest_is_down(
        tmp_path: Path, own_mosquitto: MosquittoServer, influx_server: InfluxServer,
        unique: str) -> None:
    site = f"t{unique}"
    settings = tuned(make_settings(tmp_path, own_mosquitto.url, influx_server.url,
                                   f"restart_{unique}"), site)
    async with Ingest(settings) as ingest:  # creates the persistent session
        await ingest.wait_ready()
    await publish_all(settings.mqtt, encoded(readings(site, 1, 3000)))
    own_mosquitto.restart()  # graceful: the session and its queue are saved to disk
    async with Ingest(settings) as ingest, InfluxClient(settings.influx) as influx:
        stored = await eventually(lambda: count_points(influx, "energy"),
                                  lambda n: n >= 3000, 60, "3000 points queued at the broker")
        assert ingest.sequences.lost["gw-seq"] == 0
    assert stored == 3000


async def test_sequence_gaps_are_reported(settings: Settings, influx: InfluxClient,
                                          unique: str) -> None:
    site = f"t{unique}"
    settings = tuned(settings, site, loss_grace=1.0)
    sent = readings(site, 1, 100)
    lost = {s for s in range(40, 49)}  # nine messages "lost on the way"
    late = sent[60]  # arrives after its successors: late, not lost
    order = [r for r in sent if r.seq not in lost and r is not late] + [late]
    async with Ingest(settings) as ingest:
        await ingest.wait_ready()
        await publish_all(settings.mqtt, encoded(order[:50]))
        await eventually(lambda: count_points(influx, "energy"), lambda n: n == 50, 20, "50")
        await publish_all(settings.mqtt, encoded(order[50:]))
        await eventually(lambda: asyncio.sleep(0, ingest.sequences.lost["gw-seq"]),
                         lambda n: n == len(lost), 30, "the nine lost messages reported")
        assert ingest.sequences.late["gw-seq"] == 1
