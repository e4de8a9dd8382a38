"""Gateway against the real broker and real pymodbus servers: vendor payloads normalised,
malformed ones dead-lettered, a silent Modbus unit goes offline while its neighbours keep
their rate and comes back by itself, and polling goes on into a disk spool while the
broker is away."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from facility import messages as m
from facility import topics
from facility.localservers import MosquittoServer
from facility.messages import Availability, DeviceStatus, Event, Family, Quality, Reading
from facility.settings import Settings
from facility.site import SiteConfig, load_site
from gateway.service import Gateway
from tests.conftest import SITE_FILE, catalog, make_settings
from tests.helpers import Collector, eventually, modbus_port, publish_all, stop_modbus

SITE = "panyu-admin-centre"


def campus() -> SiteConfig:
    return load_site(SITE_FILE)


# --- vendor MQTT -----------------------------------------------------------------------

def vendor_messages(now: float) -> list[tuple[str, bytes]]:
    local = datetime.fromtimestamp(now, ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")
    utc = datetime.fromtimestamp(now, ZoneInfo("UTC"))
    return [
        ("gst/FP-EB/1/3/data", msgspec.json.encode(
            {"panel": "FP-EB", "loop": 1, "addr": 3, "devType": "SMOKE", "smoke": 0.021,
             "temp": 26.4, "state": "NORMAL", "time": local})),
        ("gst/FP-EB/1/3/event", msgspec.json.encode(
            {"panel": "FP-EB", "loop": 1, "addr": 3, "evt": "FIRE_ALARM", "evtNo": 10234,
             "desc": "西门车棚烟感3 火警", "time": local})),
        ("gst/FP-EB/status", msgspec.json.encode(
            {"panel": "FP-EB", "alarmCount": 1, "faultCount": 0, "mainPower": 1,
             "backupPower": 1, "state": "ALARM", "time": local})),
        ("acrel/ARCM300-21030005/up", msgspec.json.encode(
            {"sn": "ARCM300-21030005", "ts": int(now), "alarm": 1,
             "data": [{"ch": 1, "type": "IL", "val": 37, "unit": "mA"},
                      {"ch": 2, "type": "T", "val": 41.5, "unit": "℃"},
                      {"ch": 3, "type": "T", "val": 39.8, "unit": "℃"}]})),
        ("evcp/PYGOV-PB-01/status", msgspec.json.encode(
            {"chargePointId": "PYGOV-PB-01", "connectorId": 1, "status": "Charging",
             "errorCode": "NoError", "vendorErrorCode": "", "power": 6890.0, "energy": 12345,
             "temperature": 41.2, "transactionId": 8812,
             "timestamp": utc.strftime("%Y-%m-%dT%H:%M:%S.123Z")})),
        ("application/app-1/device/a84041000181c102/event/up", msgspec.json.encode(
            {"deduplicationId": "6c1f", "time": utc.isoformat(),
             "deviceInfo": {"tenantName": "番禺行政中心", "applicationName": "drainage",
                            "deviceProfileName": "UWL-100", "deviceName": "西门排水水位",
                            "devEui": "a84041000181c102"},
             "devAddr": "01f2a3b4", "fCnt": 1234, "fPort": 2,
             "rxInfo": [{"gatewayId": "ac1f09fffe01a2b3", "rssi": -97, "snr": 6.5}],
             "object": {"water_level_cm": 12.3, "battery_v": 3.61}})),
    ]


MALFORMED = [
    ("gst/FP-EB/1/3/data", b"{not json"),
    ("gst/FP-XX/9/9/data", b'{"panel":"FP-XX","loop":9,"addr":9,"devType":"SMOKE","smoke":0.1,'
                           b'"temp":20,"state":"NORMAL","time":"2026-11-28 09:15:02"}'),
    ("evcp/PYGOV-PB-01/status", b'{"chargePointId":"PYGOV-PB-01","connectorId":1,'
                                b'"status":"Charging","errorCode":"NoError","energy":0,'
                                b'"temperature":30,"timestamp":"2026-11-28T01:15:02Z",'
                                b'"power":"lots"}'),
    ("acrel/ARCM300-21030005/up", b'{"sn":"ARCM300-21030005","ts":"yesterday","data":[]}'),
]


async def test_vendor_payloads_become_canonical_readings(settings: Settings) -> None:
    site = campus()
    now = time.time()
    tel = topics.subscription(topics.Kind.TELEMETRY, SITE)
    ev = topics.subscription(topics.Kind.EVENT, SITE)
    dead = topics.subscription(topics.Kind.DEADLETTER, SITE)
    async with Collector(settings.mqtt, tel) as readings, Collector(settings.mqtt, ev) as events, \
            Collector(settings.mqtt, dead) as letters, \
            Gateway(settings, catalog(site), "gw-iot") as gw:
        await gw.wait_ready()
        await publish_all(settings.mqtt, vendor_messages(now) + MALFORMED)
        await readings.wait_for(5)
        await events.wait_for(1)
        await letters.wait_for(len(MALFORMED))
        assert gw.dead_letters == len(MALFORMED)
        assert gw.failed is None  # it carried on
    by_device = {r.device: r for r in readings.decoded(Reading)}
    smoke = by_device["fd-ebw-03"]
    assert smoke.values == {"smoke": 0.021, "temperature": 26.4, "state": "normal"}
    assert smoke.units == {"smoke": "dB/m", "temperature": "°C"}
    assert smoke.family is Family.FIRE and smoke.quality is Quality.GOOD
    assert smoke.tags["place"] == "ebike-shed-west" and smoke.tags["zone"] == "west-gate"
    assert abs(smoke.ts - int(now) * 10**9) < 10**9  # panel local time, read as Asia/Shanghai
    panel = by_device["fp-ebike"]
    assert panel.values["state"] == "alarm" and panel.values["alarm_count"] == 1
    efm = by_device["efm-ebike-west"]
    assert efm.values == {"residual_current": 37, "cable_temperature_1": 41.5,
                          "cable_temperature_2": 39.8, "residual_current_alarm": True,
                          "temperature_alarm": False}
    ev_reading = by_device["evc-pb-01"]
    assert ev_reading.values["status"] == "charging"
    assert ev_reading.values["power"] == pytest.approx(6.89)
    assert ev_reading.values["session_energy"] == pytest.approx(12.345)
    level = by_device["wl-west-gate"]
    assert level.values["water_level"] == 12.3 and level.values["rssi"] == -97
    assert level.family is Family.DRAINAGE
    alarm = events.decoded(Event)[0]
    assert (alarm.device, alarm.name) == ("fd-ebw-03", "fire_alarm")
    assert alarm.text == "西门车棚烟感3 火警"
    reasons = " | ".join(m.decode(p, m.DeadLetter).reason for _, p in letters.messages)
    assert "not JSON" in reasons and "unknown gst-fire device 'FP-XX/9/9'" in reasons
    assert "not a number" in reasons and "not unix_s" in reasons


async def test_stale_sample_is_marked_stale(settings: Settings) -> None:
    """A LoRa uplink buffered for an hour arrives with quality 'stale'."""
    old = vendor_messages(time.time() - 3600)[-1]
    async with Collector(settings.mqtt, topics.subscription(topics.Kind.TELEMETRY, SITE)) as got, \
            Gateway(settings, catalog(campus()), "gw-iot") as gw:
        await gw.wait_ready()
        await publish_all(settings.mqtt, [old])
        await got.wait_for(1)
    assert got.decoded(Reading)[0].quality is Quality.STALE


# --- Modbus ----------------------------------------------------------------------------

class Meter:
    """A DDSU666-like meter on a pymodbus server whose answers a test can silence."""

    def __init__(self, unit: int, volts: float) -> None:
        import struct

        def words(*values: float) -> list[int]:
            return list(struct.unpack(f">{2 * len(values)}H", struct.pack(f">{len(values)}f",
                                                                           *values)))

        self.silent = asyncio.Event()
        # U, I, P, Q, S, PF, (reserved), f; then import and export energy.
        measurements = words(volts, 5.0, 1.1, 0.2, 1.2, 0.95, 0.0, 50.0)
        self.device = SimDevice(id=unit, simdata=[SimData(0x2000, values=measurements,
                                                           datatype=DataType.REGISTERS),
                                                   SimData(0x4000, values=words(*[100.0] * 6),
                                                           datatype=DataType.REGISTERS)],
                                action=self._action)

    async def _action(self, *args: Any) -> ExcCodes | None:
        if self.silent.is_set():
            # A unit that stopped answering behind an RS485 converter: the converter waits
            # out its bus timeout (longer than the gateway's), then says so.
            await asyncio.sleep(0.4)
            return ExcCodes.GATEWAY_NO_RESPONSE
        return None


async def serve(*meters: Meter) -> tuple[ModbusTcpServer, int]:
    server = ModbusTcpServer(context=[mt.device for mt in meters], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    return server, modbus_port(server)


def modbus_site(ports: dict[str, tuple[int, int]], period: float = 0.2) -> SiteConfig:
    """A small site: meters id -> (port, unit) on gateway gw-m."""
    return SiteConfig.model_validate({
        "version": 1, "site": {"id": SITE, "name": "测试"},
        "zones": [{"id": "z", "name": "z"}],
        "places": [{"id": "p", "name": "p", "kind": "building", "zone": "z"}],
        "gateways": [{"id": "gw-m", "kind": "modbus"}],
        "devices": [{"id": dev, "family": "energy", "kind": "meter", "gateway": "gw-m",
                     "place": "p", "modbus": {"host": "127.0.0.1", "port": port, "unit": unit,
                                              "model": "chint-ddsu666", "period": period,
                                              "timeout": 0.3, "offline_after": 2}}
                    for dev, (port, unit) in ports.items()],
    })


@pytest.mark.slow
async def test_silent_unit_goes_offline_and_neighbours_keep_their_rate(settings: Settings) -> None:
    a1, a2, b1 = Meter(1, 230.0), Meter(2, 231.0), Meter(1, 232.0)
    server_a, port_a = await serve(a1, a2)
    server_b, port_b = await serve(b1)
    site = modbus_site({"em-a1": (port_a, 1), "em-a2": (port_a, 2), "em-b1": (port_b, 1)})
    tel = topics.subscription(topics.Kind.TELEMETRY, SITE)
    status = topics.subscription(topics.Kind.STATUS, SITE, "energy")
    try:
        async with Collector(settings.mqtt, tel) as readings, \
                Collector(settings.mqtt, status) as statuses, \
                Gateway(settings, catalog(site), "gw-m") as gw:
            await gw.wait_ready()

            def good(device: str) -> int:
                return sum(1 for r in readings.decoded(Reading)
                           if r.device == device and r.quality is Quality.GOOD)

            def state(device: str) -> Availability | None:
                last = [s for s in statuses.decoded(DeviceStatus) if s.device == device]
                return last[-1].state if last else None

            async def states() -> dict[str, Availability | None]:
                return {d: state(d) for d in ("em-a1", "em-a2", "em-b1")}

            await eventually(states, lambda s: all(v is Availability.ONLINE for v in s.values()),
                             10, "all meters online")
            a1.silent.set()
            silenced = time.monotonic()
            await eventually(states, lambda s: s["em-a1"] is Availability.OFFLINE, 5,
                             "em-a1 offline")
            # offline_after=2 polls of period 0.2 s and timeout 0.3 s: well within 2 s.
            assert time.monotonic() - silenced < 2.0
            window_start = time.monotonic()
            before = {d: good(d) for d in ("em-a2", "em-b1")}
            await asyncio.sleep(3.0)  # a measurement window for the poll rate, not a wait
            elapsed = time.monotonic() - window_start
            for device in ("em-a2", "em-b1"):
                rate = (good(device) - before[device]) / elapsed
                # 5 polls/s nominal. The offline unit is probed every 2 s only; each probe
                # costs its bus neighbour em-a2 one timeout, the other host nothing.
                assert rate > (3.5 if device == "em-a2" else 4.5), (device, rate)
            a1.silent.clear()
            await eventually(states, lambda s: s["em-a1"] is Availability.ONLINE, 5,
                             "em-a1 back online")
    finally:
        a1.silent.clear()
        await stop_modbus(server_a)
        await stop_modbus(server_b)


@pytest.mark.slow
async def test_gateway_spools_while_broker_is_down(tmp_path: Path, own_mosquitto: MosquittoServer,
                                                   unique: str) -> None:
    meter = Meter(1, 229.0)
    server, port = await serve(meter)
    settings = make_settings(tmp_path, own_mosquitto.url, "http://127.0.0.1:1", f"x{unique}")
    site = modbus_site({"em-1": (port, 1)}, period=0.05)
    tel = topics.subscription(topics.Kind.TELEMETRY, SITE)
    try:
        async with Collector(settings.mqtt, tel, persistent=True) as got, \
                Gateway(settings, catalog(site), "gw-m") as gw:
            await gw.wait_ready()
            outbox = gw.outbox
            assert outbox is not None
            await got.wait_for(5)
            own_mosquitto.stop()  # graceful: the collector's session is saved to disk

            async def spooled() -> int:
                return outbox.spool.count

            await eventually(spooled, lambda n: n >= 40, 10, "readings spooled to disk")
            own_mosquitto.start()
            await eventually(spooled, lambda n: n == 0, 30, "spool replayed")
            made = gw.last_seq
            seqs = await eventually(lambda: asyncio.sleep(0, [r.seq for r in got.decoded(Reading)]),
                                    lambda s: bool(s) and max(s) >= made, 20,
                                    "the replayed readings")
    finally:
        await stop_modbus(server)
    # Every reading the gateway made arrived once or more (QoS 1), none lost, in order.
    assert sorted(set(seqs)) == list(range(1, max(seqs) + 1))
    assert seqs == sorted(seqs)
