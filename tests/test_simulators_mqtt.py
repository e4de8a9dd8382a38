"""The MQTT simulators on a real Mosquitto: payload shapes per vendor, scenarios, pacing.

The expected shapes are written from docs/devices/vendor-payloads.md. Each test uses its
own topic prefix on the shared broker (only `mosquitto_server`: no InfluxDB is needed).
The simulated clock is frozen and advanced; every wait is for a condition, with a bound.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import pytest
from pydantic import SecretStr

from facility.localservers import MosquittoServer
from facility.messages import Family
from facility.settings import MqttSettings
from facility.site import load_site
from simulators.campus import Campus
from simulators.clock import SimClock
from tests.conftest import SITE_FILE

SITE = load_site(SITE_FILE)
TZ = ZoneInfo("Asia/Shanghai")
MORNING = datetime(2026, 11, 24, 10, 0, tzinfo=TZ).timestamp()  # a Tuesday
MQTT_FAMILIES = {Family.FIRE, Family.EV_CHARGER, Family.DRAINAGE, Family.GAS}
OCPP_STATUSES = {"Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV",
                 "Finishing", "Reserved", "Unavailable", "Faulted"}


@dataclass
class Received:
    topic: str
    body: dict[str, Any]  # {} when the payload is not JSON
    at: float  # loop time of arrival
    raw: bytes = b""


@dataclass
class Inbox:
    """Everything published under one prefix, as it arrives."""

    prefix: str
    messages: list[Received] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def pump(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        async for message in client.messages:
            topic = str(message.topic).removeprefix(self.prefix)
            assert isinstance(message.payload, bytes)
            try:
                body = json.loads(message.payload)
            except ValueError:
                body = {}
            self.messages.append(Received(topic, body, loop.time(), message.payload))
            self.changed.set()

    def on(self, pattern: str) -> list[Received]:
        return [m for m in self.messages if re.fullmatch(pattern, m.topic)]

    async def wait_for(self, condition: Callable[[], object], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Rig:
    campus: Campus
    inbox: Inbox
    clock: SimClock


async def start_rig(server: MosquittoServer, prefix: str, *,
                    clock: SimClock, min_interval: float = 0.02,
                    families: set[Family] = MQTT_FAMILIES) -> AsyncIterator[Rig]:
    inbox = Inbox(prefix)
    async with aiomqtt.Client(server.host, server.port) as subscriber:
        await subscriber.subscribe(f"{prefix}#", qos=1)
        pump = asyncio.create_task(inbox.pump(subscriber), name="test-inbox")
        try:
            mqtt = MqttSettings(url=SecretStr(server.url))
            async with Campus(SITE, mqtt, clock=clock, seed=3, families=families,
                              min_interval=min_interval, topic_prefix=prefix,
                              use_config_ports=False) as campus:
                yield Rig(campus, inbox, clock)
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)


@pytest.fixture
async def rig(mosquitto_server: MosquittoServer, unique: str) -> AsyncIterator[Rig]:
    clock = SimClock(start=MORNING, scale=0)
    async for running in start_rig(mosquitto_server, f"{unique}/", clock=clock):
        yield running


def expected_topics() -> dict[str, str]:
    """The first topic each MQTT device of the site publishes on (a regex), by device id."""
    topics = {}
    for d in SITE.devices:
        if d.mqtt is None:
            continue
        key = re.escape(d.mqtt.key)
        topics[d.id] = {
            "gst-fire": f"gst/{key}/status" if d.kind == "fire_panel" else f"gst/{key}/data",
            "acrel-efm": f"acrel/{key}/up",
            "evcp": f"evcp/{key}/status",
            "chirpstack": f"application/[0-9a-f-]{{36}}/device/{key}/event/up",
        }[d.mqtt.vendor]
    return topics


# Shape checks, from docs/devices/vendor-payloads.md.

def local_time(text: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text), text
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=TZ)


def check_gst_data(m: Received) -> None:
    b = m.body
    panel, loop, addr = m.topic.split("/")[1:4]
    smoke = b["devType"] == "SMOKE"
    assert set(b) == {"panel", "loop", "addr", "devType", "temp", "state", "time"} | (
        {"smoke"} if smoke else set())
    assert (b["panel"], b["loop"], b["addr"]) == (panel, int(loop), int(addr))
    assert b["devType"] in ("SMOKE", "HEAT") and b["state"] in (
        "NORMAL", "PREALARM", "ALARM", "FAULT", "DISABLED")
    if smoke:
        assert isinstance(b["smoke"], float) and 0.0 <= b["smoke"] <= 0.5
    assert isinstance(b["temp"], float) and -5 < b["temp"] < 120
    local_time(b["time"])


def check_gst_event(m: Received) -> None:
    b = m.body
    keys = {"panel", "evt", "evtNo", "desc", "time"}
    parts = m.topic.split("/")
    assert set(b) == (keys | {"loop", "addr"} if len(parts) == 5 else keys)
    assert b["evt"] in ("FIRE_ALARM", "PRE_ALARM", "FAULT", "FAULT_RESTORE", "RESTORE",
                        "DISABLE", "ENABLE")
    assert isinstance(b["evtNo"], int) and re.search(r"[\u4e00-\u9fff]", b["desc"])
    local_time(b["time"])


def check_gst_status(m: Received) -> None:
    b = m.body
    assert set(b) == {"panel", "alarmCount", "faultCount", "mainPower", "backupPower", "state",
                      "time"}
    assert b["panel"] == m.topic.split("/")[1] and b["state"] in ("NORMAL", "ALARM", "FAULT")
    assert b["mainPower"] in (0, 1) and b["backupPower"] in (0, 1)
    local_time(b["time"])


def check_acrel(m: Received) -> None:
    b = m.body
    assert set(b) == {"sn", "ts", "alarm", "data"} and b["sn"] == m.topic.split("/")[1]
    assert isinstance(b["ts"], int) and b["alarm"] in (0, 1, 2, 3)
    il, t1, t2 = b["data"]
    assert il == {"ch": 1, "type": "IL", "val": il["val"], "unit": "mA"}
    assert isinstance(il["val"], int) and 0 <= il["val"] < 1000
    for ch, t in ((2, t1), (3, t2)):
        assert t == {"ch": ch, "type": "T", "val": t["val"], "unit": "℃"}
        assert isinstance(t["val"], float) and 0 < t["val"] < 150


def check_evcp(m: Received) -> None:
    b = m.body
    keys = {"chargePointId", "connectorId", "status", "errorCode", "vendorErrorCode", "power",
            "energy", "temperature", "timestamp"}
    assert set(b) - {"transactionId"} == keys
    assert b["chargePointId"] == m.topic.split("/")[1] and b["status"] in OCPP_STATUSES
    assert isinstance(b["power"], float) and b["power"] >= 0
    assert isinstance(b["energy"], int) and b["energy"] >= 0
    assert isinstance(b["temperature"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", b["timestamp"])
    if b["status"] in ("Charging", "SuspendedEV"):
        assert isinstance(b["transactionId"], int)
    if b["status"] == "Available":
        assert b["energy"] == 0 and b["power"] == 0.0 and "transactionId" not in b


OBJECT_KEYS = {
    "water_level": {"water_level_cm", "battery_v"},
    "rain_gauge": {"rain_mm_total", "rain_mm_per_h", "battery_v"},
    "sump_pump": {"running", "current_a", "fault", "run_hours"},
    "gas_sensor": {"h2s_ppm", "nh3_ppm", "battery_v"},
}


def check_chirpstack(m: Received, kind: str) -> None:
    b = m.body
    dev_eui = m.topic.split("/")[3]
    for key in ("deduplicationId", "time", "deviceInfo", "devAddr", "fCnt", "fPort", "rxInfo",
                "object"):
        assert key in b, key
    info = b["deviceInfo"]
    for key in ("tenantName", "applicationName", "deviceProfileName", "deviceName", "devEui"):
        assert isinstance(info[key], str) and info[key], key
    assert info["devEui"] == dev_eui and m.topic.split("/")[1] == info["applicationId"]
    stamp = datetime.fromisoformat(b["time"])
    assert b["time"].endswith("+00:00") and stamp.utcoffset() is not None
    assert isinstance(b["fCnt"], int) and isinstance(b["fPort"], int)
    assert re.fullmatch(r"[0-9a-f]{8}", b["devAddr"])
    rx = b["rxInfo"][0]
    assert re.fullmatch(r"[0-9a-f]{16}", rx["gatewayId"]) and -130 < rx["rssi"] < -30
    assert set(b["object"]) == OBJECT_KEYS[kind]
    for name, value in b["object"].items():
        assert isinstance(value, bool if name in ("running", "fault") else float), name


async def test_every_device_publishes_the_documented_shape_at_once(rig: Rig) -> None:
    topics = expected_topics()
    assert len(topics) == sum(1 for d in SITE.devices if d.mqtt)

    def all_seen() -> bool:
        return all(rig.inbox.on(pattern) for pattern in topics.values())

    await rig.inbox.wait_for(all_seen)
    for device_id, pattern in topics.items():
        device = SITE.device(device_id)
        first = rig.inbox.on(pattern)[0]
        assert device.mqtt is not None
        if device.mqtt.vendor == "gst-fire":
            (check_gst_status if device.kind == "fire_panel" else check_gst_data)(first)
            assert local_time(first.body["time"]).timestamp() == MORNING
        elif device.mqtt.vendor == "acrel-efm":
            check_acrel(first)
            assert first.body["ts"] == MORNING
        elif device.mqtt.vendor == "evcp":
            check_evcp(first)
        else:
            check_chirpstack(first, device.kind)
            assert first.body["deviceInfo"]["deviceName"] == device.name
    # Tuesday 10:00: staff cars are on the 7 kW points.
    charging = [m.body for m in rig.inbox.on(r"evcp/.*/status") if m.body["status"] == "Charging"]
    assert charging and all(m["power"] > 1000 for m in charging)


async def test_reports_follow_the_period_in_simulated_time(rig: Rig) -> None:
    await rig.inbox.wait_for(lambda: rig.inbox.on(r"gst/FP-MB/1/1/data"))
    rig.clock.advance(30)  # a GST detector's period
    await rig.inbox.wait_for(lambda: len(rig.inbox.on(r"gst/FP-MB/1/1/data")) >= 2)
    times = [local_time(m.body["time"]).timestamp() for m in rig.inbox.on(r"gst/FP-MB/1/1/data")]
    assert times[:2] == [MORNING, MORNING + 30]
    assert len(rig.inbox.on(r"gst/FP-MB/status")) == 1  # 60 s for panels: not yet due


async def test_fire_prealarm_then_alarm_at_that_place_and_panel_alarm(rig: Rig) -> None:
    inbox = rig.inbox
    await inbox.wait_for(lambda: inbox.on(r"gst/FP-EB/status"))
    rig.campus.fire("ebike-shed-west")
    rig.clock.advance(90)
    smoke_heads = ["FP-EB/1/1", "FP-EB/1/2", "FP-EB/1/3"]  # the west shed's smoke detectors

    def events(key: str) -> list[str]:
        return [m.body["evt"] for m in inbox.on(f"gst/{key}/event")]

    await inbox.wait_for(lambda: all("FIRE_ALARM" in events(k) for k in smoke_heads))
    for key in smoke_heads:
        assert events(key)[:2] == ["PRE_ALARM", "FIRE_ALARM"]
        first = inbox.on(f"gst/{key}/event")[0]
        check_gst_event(first)
        assert first.body["desc"].endswith("预警")
    await inbox.wait_for(lambda: any(m.body["state"] == "ALARM"
                                     for m in inbox.on(r"gst/FP-EB/status")))
    await inbox.wait_for(lambda: inbox.on(r"gst/FP-EB/event"))
    panel_event = inbox.on(r"gst/FP-EB/event")[0]
    check_gst_event(panel_event)
    assert panel_event.body["evt"] == "FIRE_ALARM"
    # The heat detector is slower; the shed's electrical-fire monitor alarms as well.
    rig.clock.advance(400)
    await inbox.wait_for(lambda: "FIRE_ALARM" in events("FP-EB/1/4"))
    await inbox.wait_for(lambda: any(m.body["alarm"] for m in
                                     inbox.on(r"acrel/ARCM300-21030005/up")))
    numbers = [m.body["evtNo"] for m in inbox.messages if m.topic.startswith("gst/FP-EB/")
               and m.topic.endswith("event")]
    assert len(numbers) == len(set(numbers))  # one counter per panel
    # Nothing happened anywhere else.
    others = [m for m in inbox.messages if m.topic.endswith("event")
              and not m.topic.startswith(("gst/FP-EB/1/", "gst/FP-EB/event"))]
    assert others == []

    rig.campus.fire_out("ebike-shed-west")
    rig.clock.advance(900)
    await inbox.wait_for(lambda: all("RESTORE" in events(k) for k in [*smoke_heads,
                                                                      "FP-EB/1/4"]))
    await inbox.wait_for(lambda: inbox.on(r"gst/FP-EB/status")[-1].body["state"] == "NORMAL")
    assert [m.body["evt"] for m in inbox.on(r"gst/FP-EB/event")] == ["FIRE_ALARM", "RESTORE"]


async def test_rainstorm_raises_the_west_gate_level_fast_and_starts_its_pump(rig: Rig) -> None:
    inbox = rig.inbox
    level_topic = r"application/.*/device/a84041000181c102/event/up"
    pump_topic = r"application/.*/device/a84041000181c301/event/up"
    rain_topic = r"application/.*/device/a84041000181c201/event/up"
    await inbox.wait_for(lambda: inbox.on(level_topic) and inbox.on(rain_topic))
    base = inbox.on(level_topic)[0].body["object"]["water_level_cm"]
    rain_before = inbox.on(rain_topic)[0].body["object"]["rain_mm_total"]
    rig.campus.rainstorm()  # west gate, 80 mm/h, 3 cm/min, an hour

    async def level_at(minutes: float) -> float:
        when = MORNING + minutes * 60
        rig.clock.advance(when - rig.clock.now())
        stamp = datetime.fromtimestamp(when, ZoneInfo("UTC")).isoformat(timespec="microseconds")
        await inbox.wait_for(lambda: any(m.body["time"] == stamp for m in inbox.on(level_topic)))
        found = next(m for m in inbox.on(level_topic) if m.body["time"] == stamp)
        return float(found.body["object"]["water_level_cm"])

    at_8 = await level_at(8)
    at_12 = await level_at(12)
    assert at_12 - at_8 >= 8.0  # about 3 cm a minute at the peak
    at_13 = await level_at(13)  # while rising, the sensor reports every minute
    assert at_13 - at_12 >= 1.5
    await inbox.wait_for(lambda: any(m.body["object"]["running"] for m in inbox.on(pump_topic)))
    at_30 = await level_at(30)
    assert at_30 >= base + 30
    rig.clock.advance(300)
    await inbox.wait_for(lambda: inbox.on(rain_topic)[-1].body["object"]["rain_mm_total"]
                         > rain_before + 20)
    rain = inbox.on(rain_topic)[-1].body["object"]
    assert rain["rain_mm_per_h"] == 80.0
    # After the storm the water recedes and the pump stops.
    rig.clock.advance(3 * 3600)
    await inbox.wait_for(lambda: not inbox.on(pump_topic)[-1].body["object"]["running"])
    assert rig.campus.drainage is not None
    assert rig.campus.drainage.level("west-gate-drain", rig.clock.now()) < base + 1


async def test_charger_fault_and_clear(rig: Rig) -> None:
    inbox = rig.inbox
    topic = r"evcp/PYGOV-PB-01/status"
    await inbox.wait_for(lambda: inbox.on(topic))
    rig.campus.charger_fault("evc-pb-01")
    await inbox.wait_for(lambda: inbox.on(topic)[-1].body["status"] == "Faulted")
    faulted = inbox.on(topic)[-1]
    check_evcp(faulted)
    assert faulted.body["errorCode"] == "HighTemperature" and faulted.body["vendorErrorCode"]
    assert faulted.body["power"] == 0.0 and faulted.body["temperature"] > 45
    rig.clock.advance(3600)  # stays faulted until cleared
    await inbox.wait_for(lambda: len(inbox.on(topic)) >= 3)
    assert inbox.on(topic)[-1].body["status"] == "Faulted"
    rig.campus.charger_clear("evc-pb-01")
    await inbox.wait_for(lambda: inbox.on(topic)[-1].body["status"] != "Faulted")
    assert inbox.on(topic)[-1].body["errorCode"] == "NoError"
    with pytest.raises(ValueError, match="OCPP"):
        rig.campus.charger_fault("evc-pb-02", "Smoke")


async def test_a_session_charges_and_its_energy_grows(rig: Rig) -> None:
    charger = rig.campus.charger("evc-cp-01")
    day = charger.calendar.day(MORNING)
    session = next(s for d in (day, day + 1, day + 2) for s in charger.sessions(d)
                   if s.charge_start > MORNING)
    rig.clock.advance(session.charge_start + 600 - rig.clock.now())
    early = charger.energy(rig.clock.now())
    rig.clock.advance(600)
    assert charger.status(rig.clock.now()) == "Charging"
    assert charger.energy(rig.clock.now()) > early > 0
    assert charger.temperature(rig.clock.now()) > charger.weather.temperature(rig.clock.now()) + 5
    topic = r"evcp/PYGOV-CP-01/status"
    await rig.inbox.wait_for(lambda: any(m.body["status"] == "Charging" and m.body["energy"]
                                         for m in rig.inbox.on(topic)))
    body = next(m.body for m in rig.inbox.on(topic) if m.body["status"] == "Charging")
    assert body["power"] > 30_000 and body["energy"] > 1000 and body["transactionId"]


async def test_publish_raw_goes_out_under_the_prefix(rig: Rig) -> None:
    rig.campus.publish_raw("gst/FP-EB/1/1/data", b"{not json")
    rig.campus.publish_raw("acrel/ARCM300-X/up", {"sn": "ARCM300-X", "note": "中文"})
    await rig.inbox.wait_for(lambda: rig.inbox.on(r"acrel/ARCM300-X/up"))
    assert rig.inbox.on(r"acrel/ARCM300-X/up")[0].body == {"sn": "ARCM300-X", "note": "中文"}
    assert rig.inbox.on(r"gst/FP-EB/1/1/data")[-1].raw == b"{not json"


@pytest.fixture
async def fast_rig(mosquitto_server: MosquittoServer, unique: str) -> AsyncIterator[Rig]:
    # A fast clock: a detector's 30 s period is 25 ms of wall time, well under the limit.
    clock = SimClock(start=MORNING, scale=1200)
    async for running in start_rig(mosquitto_server, f"{unique}/", clock=clock,
                                   min_interval=0.2, families={Family.FIRE}):
        yield running


async def test_no_device_publishes_more_often_than_min_interval(fast_rig: Rig) -> None:
    topic = r"gst/FP-MB/1/1/data"
    await fast_rig.inbox.wait_for(lambda: len(fast_rig.inbox.on(topic)) >= 4)
    arrivals = [m.at for m in fast_rig.inbox.on(topic)]
    assert all(b - a >= 0.15 for a, b in itertools.pairwise(arrivals))
    times = [local_time(m.body["time"]).timestamp() for m in fast_rig.inbox.on(topic)]
    assert times[1] - times[0] >= 30  # the period is simulated time


async def test_publishing_survives_a_broker_restart(own_mosquitto: MosquittoServer) -> None:
    clock = SimClock(start=MORNING, scale=0)
    mqtt = MqttSettings(url=SecretStr(own_mosquitto.url))
    async with Campus(SITE, mqtt, clock=clock, seed=3, families={Family.GAS},
                      min_interval=0.02) as campus:
        publisher = campus.publisher
        assert publisher is not None
        async with asyncio.timeout(10):
            await publisher.wait_published(3)  # the three gas sensors' first uplinks
        own_mosquitto.stop()
        async with asyncio.timeout(10):
            await publisher.disconnected.wait()  # noticed while idle
        clock.advance(300)  # the next uplinks wait in the queue meanwhile
        own_mosquitto.start()
        inbox = Inbox("")
        async with aiomqtt.Client(own_mosquitto.host, own_mosquitto.port) as subscriber:
            await subscriber.subscribe("application/#", qos=1)
            pump = asyncio.create_task(inbox.pump(subscriber), name="test-inbox")
            try:
                async with asyncio.timeout(20):
                    await publisher.wait_published(6)  # the queued uplinks, after reconnecting
                clock.advance(300)
                await inbox.wait_for(lambda: len(inbox.messages) >= 3, timeout=20)
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
        assert publisher.dropped == 0
