"""Services of a district serve the sites they are given (`facility --sites a,b ...`,
facility/catalog.py load_district, app/cli.py), as processes on real servers: ingest
stores the chosen site's messages and not another site's; `rules run` starts an engine per
chosen site, each with its own site's rules, and the school's engine raises the school's
flood."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from facility import messages as m
from facility import topics
from facility.influx import InfluxClient
from facility.messages import Family
from facility.settings import Settings
from facility.topics import Kind
from tests.conftest import REPO
from tests.helpers import Collector, count_points, eventually, publish_all

SCHOOL, HOSPITAL = "panyu-school-shiqiao", "panyu-hospital-central"
MAIN = "import sys; from app.cli import main; sys.exit(main())"


def env(settings: Settings, tmp_path: Path, state_url: str = "") -> dict[str, str]:
    out = {**os.environ, "FACILITY_SITES_DIR": str(REPO / "config" / "sites"),
           "FACILITY_MQTT_URL": settings.mqtt.url.get_secret_value(),
           "FACILITY_INFLUX_URL": settings.influx.url,
           "FACILITY_INFLUX_DATABASE": settings.influx.database,
           "FACILITY_SPOOL_DIR": str(tmp_path / "spool"),
           "FACILITY_MQTT_CLIENT_PREFIX": f"t{uuid.uuid4().hex[:6]}"}
    out["FACILITY_STATE_URL"] = state_url or f"sqlite:///{tmp_path / 'state.sqlite'}"
    return out


def start(args: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", MAIN, *args], cwd=REPO,
                                env=environment, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@asynccontextmanager
async def facility(args: list[str], environment: dict[str, str],
                   log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`facility ARGS` in its own process, stopped with SIGTERM (then killed) at the end."""
    process = await asyncio.to_thread(start, args, environment, log)
    try:
        yield process
    finally:
        await asyncio.to_thread(stop, process)


async def logged(log: Path, process: subprocess.Popen[bytes], text: str) -> None:
    async def probe() -> str:
        seen = await asyncio.to_thread(log.read_text, errors="replace")
        assert process.poll() is None, seen[-3000:]
        return seen
    await eventually(probe, lambda seen: text in seen, 60, f"{text!r} in {log}")


def water(site: str, device: str, cm: float) -> tuple[str, bytes]:
    return (topics.telemetry(site, Family.DRAINAGE, device),
            m.encode(m.Reading(site=site, family=Family.DRAINAGE, device=device,
                               ts=time.time_ns(), values={"water_level": cm},
                               units={"water_level": "cm"})))


async def test_ingest_stores_only_the_sites_it_serves(settings: Settings, tmp_path: Path,
                                                      influx: InfluxClient) -> None:
    log = tmp_path / "ingest.log"
    async with facility(["--sites", SCHOOL, "ingest"], env(settings, tmp_path), log) as p:
        await logged(log, p, "ingest running")
        async def school() -> int:
            return await count_points(influx, "drainage",
                                      "\"device\" = 'wl-school-shiqiao-gate'")

        async def send_and_count() -> int:  # ingest may still be subscribing: send again
            await publish_all(settings.mqtt, [water(SCHOOL, "wl-school-shiqiao-gate", 10.0)])
            return await school()

        await eventually(send_and_count, lambda n: n >= 1, 30, "the school's reading stored")
        # The hospital's reading, then another of the school's: once that one is stored,
        # the hospital's would have been too, were it subscribed (the broker keeps order).
        await publish_all(settings.mqtt, [water(HOSPITAL, "wl-hospital-central-sump", 12.0)])
        await publish_all(settings.mqtt, [water(SCHOOL, "wl-school-shiqiao-gate", 11.0)])
        await eventually(lambda: count_points(
            influx, "drainage", "\"device\" = 'wl-school-shiqiao-gate' AND water_level = 11"),
            lambda n: n == 1, 30, "the school's reading after the hospital's")
        assert await count_points(influx, "drainage",
                                  "\"device\" = 'wl-hospital-central-sump'") == 0
        assert await count_points(influx, "drainage", "\"site\" = 'panyu-hospital-central'") \
            == 0


@pytest.mark.parametrize("state_url", ["postgresql"], indirect=True)
async def test_rules_run_is_an_engine_per_site_with_its_rules(
        settings: Settings, tmp_path: Path, state_url: str) -> None:
    log = tmp_path / "rules.log"
    environment = env(settings, tmp_path, state_url)
    async with Collector(settings.mqtt, topics.subscription(Kind.ALERT, SCHOOL),
                         topics.subscription(Kind.ALERT, HOSPITAL)) as alerts, \
            facility(["--sites", f"{SCHOOL},{HOSPITAL}", "rules", "run"], environment,
                     log) as process:
        for site in (SCHOOL, HOSPITAL):
            await logged(log, process, f"rules engine for {site}: 10 rules")
        await publish_all(settings.mqtt, [water(SCHOOL, "wl-school-shiqiao-gate", 45.0)])
        await alerts.wait_for(1, timeout=30)
        raised = alerts.decoded(m.AlertMessage)
        assert [(a.site, a.rule, a.source, a.severity.value) for a in raised] == \
            [(SCHOOL, "waterlogging", "wl-school-shiqiao-gate", "critical")]


async def test_gateway_runs_the_gateways_of_the_sites_it_serves(settings: Settings,
                                                                 tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    campus = "panyu-admin-centre"
    watched = [topics.subscription(Kind.STATUS, site, Family.GATEWAY)
               for site in (SCHOOL, HOSPITAL, campus)]
    started = time.time_ns()
    async with Collector(settings.mqtt, *watched) as statuses, \
            facility(["--sites", SCHOOL, "gateway"], env(settings, tmp_path), log) as p:
        await logged(log, p, "gateways running: gw-school-shiqiao-iot, "
                             "gw-school-shiqiao-energy")

        def fresh() -> list[m.DeviceStatus]:  # not a retained status of an earlier test
            return [s for s in statuses.decoded(m.DeviceStatus) if s.ts >= started]

        async def online() -> set[tuple[str, str]]:
            return {(s.site, s.device) for s in fresh() if s.state is m.Availability.ONLINE}

        await eventually(online, lambda seen: seen >= {
            (SCHOOL, "gw-school-shiqiao-iot"), (SCHOOL, "gw-school-shiqiao-energy")}, 30,
            "the school's gateways online")
        assert {s.site for s in fresh()} == {SCHOOL}
