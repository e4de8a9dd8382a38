"""A gateway announces itself with a retained status and leaves an MQTT last will: killed,
the broker says it is offline; stopped cleanly, it says so itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from facility import topics
from facility.localservers import MosquittoServer
from facility.messages import Availability, DeviceStatus
from facility.settings import Settings
from facility.site import load_site
from gateway.service import Gateway
from tests.conftest import REPO, SITE_FILE, catalog
from tests.helpers import Collector, eventually

SITE = "panyu-admin-centre"
TOPIC = topics.status(SITE, "gateway", "gw-iot")


def last_state(collector: Collector) -> tuple[Availability, str] | None:
    seen = [s for s in collector.decoded(DeviceStatus) if s.device == "gw-iot"]
    return (seen[-1].state, seen[-1].reason) if seen else None


@pytest.mark.slow
async def test_will_says_offline_when_the_gateway_dies(tmp_path: Path,
                                                       own_mosquitto: MosquittoServer) -> None:
    env = {**os.environ, "FACILITY_MQTT_URL": own_mosquitto.url,
           "FACILITY_SPOOL_DIR": str(tmp_path / "spool")}
    log = (tmp_path / "gateway.log").open("wb")
    gateway = subprocess.Popen(  # noqa: ASYNC220 (a process the test kills on purpose)
        [sys.executable, "-m", "app", "gateway", "--id", "gw-iot"], env=env, cwd=REPO,
        stdout=log, stderr=subprocess.STDOUT)
    try:
        from facility.settings import MqttSettings

        mqtt = MqttSettings(url=SecretStr(own_mosquitto.url))
        async with Collector(mqtt, TOPIC) as statuses:
            async def state() -> tuple[Availability, str] | None:
                return last_state(statuses)

            await eventually(state, lambda s: s is not None and s[0] is Availability.ONLINE,
                             30, "the gateway's online status")
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(10)
            await eventually(state, lambda s: s == (Availability.OFFLINE, "connection lost"),
                             30, "the last will")
        # Retained: a client that comes later still learns it.
        async with Collector(mqtt, TOPIC) as later:
            await later.wait_for(1)
            assert last_state(later) == (Availability.OFFLINE, "connection lost")
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(10)
        log.close()


async def test_clean_stop_says_stopped(settings: Settings) -> None:
    async with Collector(settings.mqtt, TOPIC) as statuses:
        async with Gateway(settings, catalog(load_site(SITE_FILE)), "gw-iot") as gateway:
            await gateway.wait_ready()

            async def state() -> tuple[Availability, str] | None:
                return last_state(statuses)

            await eventually(state, lambda s: s == (Availability.ONLINE, "running"), 20,
                             "online")
        await eventually(state, lambda s: s == (Availability.OFFLINE, "stopped"), 20,
                         "the stopped status")
