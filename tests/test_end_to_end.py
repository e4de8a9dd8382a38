"""End to end: simulators + every gateway + ingest, on the real broker and InfluxDB.

Within a bounded time every device family has points in InfluxDB, and the values match
what the simulators produced: Modbus values exactly (==) as the simulated devices'
registers hold them (their clock is frozen, so registers do not move): a float32 is the
shortest decimal that reads back as it, a scaled value that decimal divided exactly;
MQTT values exactly against the vendor payloads the simulators published, converted by
hand here (not by the mapping).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pytest

from facility.influx import InfluxClient
from facility.messages import Family
from facility.settings import Settings
from facility.site import load_site
from gateway.service import Gateway
from ingest.service import Ingest
from simulators.campus import Campus
from simulators.clock import SimClock
from tests.conftest import SITE_FILE, catalog
from tests.helpers import Collector, eventually, rows

FAMILIES = ("bollard", "energy", "fire", "ev_charger", "drainage", "gas")
PLC_ENUMS = {"fault_code": {0: "none", 1: "pressure_low", 2: "motor_overload",
                            3: "position_sensor", 4: "travel_timeout",
                            5: "oil_overtemperature", 6: "obstruction"}}


# The PLC's float32 registers (docs/devices/bollard-plc.md); its other values are
# integers, enum codes and tenths, which its snapshot gives exactly already.
PLC_FLOAT32 = {"supply_pressure", "hydraulic_pressure", "motor_current"}


def as_measured(name: str, value: Any) -> Any:
    """A PLC snapshot value as its register says it: a float32's shortest decimal."""
    if name not in PLC_FLOAT32:
        return value
    return float(np.format_float_positional(np.float32(value), unique=True))


def in_kilo(value: int | float) -> float:
    """A vendor's W or Wh in kW or kWh: the exact decimal ÷ 1000, then the nearest double."""
    number = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    return float(number / 1000)


async def families_with_points(influx: InfluxClient) -> set[str]:
    found = set()
    for family in FAMILIES:
        got = await rows(influx, f'SELECT count("quality") FROM "{family}"')
        if got and got[0]["count"] > 0:
            found.add(family)
    return found


async def last_values(influx: InfluxClient, family: str) -> dict[str, dict[str, Any]]:
    """The newest point of every device of a family."""
    got = await influx.query(f'SELECT * FROM "{family}" GROUP BY "device" ORDER BY time DESC '
                             "LIMIT 1")
    return {s.tags["device"]: s.rows()[0] for s in got[0]}


@pytest.mark.slow
async def test_every_family_flows_into_influxdb_with_the_simulated_values(
        settings: Settings, influx: InfluxClient, unique: str) -> None:
    site = load_site(SITE_FILE)
    clock = SimClock(scale=0)  # frozen: Modbus registers hold still while we compare
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(
        update={"client_id": f"ingest-{unique}", "session_expiry": 300})})
    async with AsyncExitStack() as stack:
        vendor = await stack.enter_async_context(
            Collector(settings.mqtt, "gst/#", "acrel/#", "evcp/#", "application/#"))
        ingest = await stack.enter_async_context(Ingest(settings))
        await ingest.wait_ready()
        # The MQTT gateway first: the simulated devices report once at start.
        iot = await stack.enter_async_context(Gateway(settings, catalog(site), "gw-iot"))
        await iot.wait_ready()
        campus = await stack.enter_async_context(
            Campus(site, settings.mqtt, clock=clock, seed=7, use_config_ports=False))
        for spec in site.gateways:
            if spec.id != "gw-iot":
                gw = await stack.enter_async_context(
                    Gateway(settings, catalog(campus.site), spec.id))
                await gw.wait_ready()
        await eventually(lambda: families_with_points(influx), lambda f: f == set(FAMILIES),
                         60, "points of every family", step=0.5)

        # Modbus: every meter and the PLC with its 42 bollards, value by value.
        meters = {d.id for d in site.devices if d.family is Family.ENERGY}
        energy = await eventually(lambda: last_values(influx, "energy"),
                                  lambda v: set(v) == meters, 30, "every meter")
        for device_id in meters:
            expected = campus.meter(device_id).snapshot()
            stored = energy[device_id]
            assert stored["quality"] == "good", (device_id, stored)
            for name, value in expected.items():
                assert stored[name] == value, (device_id, name, stored[name], value)
        plc = site.device("bollard-plc-south")
        bollards = await eventually(lambda: last_values(influx, "bollard"),
                                    lambda v: len(v) == 43, 30, "the PLC and 42 bollards")
        snapshot = campus.plc().snapshot()
        for name, value in snapshot["group"].items():
            value = as_measured(name, value)
            assert bollards[plc.id][name] == value, (name, bollards[plc.id][name], value)
        for n, unit_id in enumerate(plc.unit_ids(), start=1):
            for name, value in snapshot["units"][n].items():
                value = as_measured(name, PLC_ENUMS.get(name, {}).get(value, value))
                assert bollards[unit_id][name] == value, (unit_id, name, value)
            assert bollards[unit_id]["controller"] == plc.id

        # MQTT: each vendor payload, converted here by hand, against its stored point.
        keys = {(d.mqtt.vendor, d.mqtt.key): d for d in site.devices if d.mqtt}
        checked = {"fire": 0, "ev_charger": 0, "drainage": 0, "gas": 0}
        for topic, payload in list(vendor.messages):
            by_hand, vendor_key, ts = _by_hand(topic, msgspec.json.decode(payload))
            if by_hand is None:
                continue
            device = keys[vendor_key]
            query = (f'SELECT * FROM "{device.family.value}" WHERE device = \'{device.id}\' '
                     f"AND time = {ts}")
            points = await eventually(partial(rows, influx, query), bool, 20,
                                      f"the point of {topic}")
            for name, value in by_hand.items():
                assert points[0][name] == value, (device.id, name, points[0][name], value)
            checked[device.family.value] += 1
        assert all(count > 0 for count in checked.values()), checked


Expectation = tuple[dict[str, Any] | None, tuple[str, str], int]


def _by_hand(topic: str, body: dict[str, Any]) -> Expectation:
    """What a vendor payload must become, per docs/devices/vendor-payloads.md."""
    levels = topic.split("/")
    shanghai = ZoneInfo("Asia/Shanghai")
    if levels[0] == "gst" and levels[-1] == "data":
        ts = datetime.strptime(body["time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=shanghai)
        values = {"temperature": body["temp"], "state": body["state"].lower().replace(
            "prealarm", "pre_alarm")}
        if "smoke" in body:
            values["smoke"] = body["smoke"]
        return values, ("gst-fire", "/".join(levels[1:4])), int(ts.timestamp()) * 10**9
    if levels[0] == "acrel":
        channels = {c["ch"]: c["val"] for c in body["data"]}
        return ({"residual_current": channels[1], "cable_temperature_1": channels[2]},
                ("acrel-efm", body["sn"]), int(body["ts"]) * 10**9)
    if levels[0] == "evcp":
        ts = datetime.fromisoformat(body["timestamp"])
        return ({"power": in_kilo(body["power"]), "session_energy": in_kilo(body["energy"]),
                 "connector_temperature": body["temperature"]},
                ("evcp", body["chargePointId"]), int(ts.timestamp()) * 10**9
                + ts.microsecond * 1000)
    if levels[0] == "application":
        ts = datetime.fromisoformat(body["time"])
        names = {"water_level_cm": "water_level", "rain_mm_total": "rain_total",
                 "h2s_ppm": "h2s", "nh3_ppm": "nh3", "running": "pump_running"}
        values = {names[k]: v for k, v in body["object"].items() if k in names}
        return (values, ("chirpstack", body["deviceInfo"]["devEui"]),
                int(ts.timestamp()) * 10**9 + ts.microsecond * 1000)
    return None, ("", ""), 0
