"""The Modbus simulators against real clients: meters, the bollard PLC, faults, mbpoll.

Register addresses and scales in this file are written from the manufacturers' documents
and docs/devices/bollard-plc.md, not imported from the simulator, so a wrong map shows up.
The simulated clock is frozen (scale 0) and moved with advance(); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from facility.messages import Availability, Family
from facility.modbusmaps import load_models
from facility.settings import MqttSettings
from facility.site import SiteConfig, load_site
from gateway.modbus.poller import HostPoller, PolledDevice, PollResult, Sink
from gateway.modbus.registermap import compile_plan
from simulators.bollards import Mode
from simulators.campus import Campus
from simulators.clock import SimClock
from simulators.registers import Table
from tests.conftest import SITE_FILE

SITE = load_site(SITE_FILE)
MODELS_DIR = SITE_FILE.parent / "models"
TZ = ZoneInfo("Asia/Shanghai")
NIGHT = datetime(2026, 11, 24, 3, 0, tzinfo=TZ).timestamp()  # a Tuesday, 03:00
FLOAT32 = AsyncModbusTcpClient.DATATYPE.FLOAT32
UINT32 = AsyncModbusTcpClient.DATATYPE.UINT32

# address -> (canonical name, raw units per canonical unit), from the manuals.
DTSU666_DOC = {
    0x2006: ("voltage_a", 10), 0x2008: ("voltage_b", 10), 0x200A: ("voltage_c", 10),
    0x200C: ("current_a", 1000), 0x200E: ("current_b", 1000), 0x2010: ("current_c", 1000),
    0x2012: ("power_total", 10_000), 0x2014: ("power_a", 10_000), 0x2016: ("power_b", 10_000),
    0x2018: ("power_c", 10_000), 0x201A: ("reactive_power_total", 10_000),
    0x202A: ("power_factor", 1000), 0x2044: ("frequency", 100),
    0x401E: ("energy_import", 1), 0x4028: ("energy_export", 1),
}
DDSU666_DOC = {
    0x2000: ("voltage", 1), 0x2002: ("current", 1), 0x2004: ("power_total", 1),
    0x2006: ("reactive_power_total", 1), 0x200A: ("power_factor", 1),
    0x200E: ("frequency", 1), 0x4000: ("energy_import", 1), 0x400A: ("energy_export", 1),
}
SDM630_DOC = {
    0x0000: ("voltage_a", 1), 0x0002: ("voltage_b", 1), 0x0004: ("voltage_c", 1),
    0x0006: ("current_a", 1), 0x0008: ("current_b", 1), 0x000A: ("current_c", 1),
    0x000C: ("power_a", 1000), 0x000E: ("power_b", 1000), 0x0010: ("power_c", 1000),
    0x0034: ("power_total", 1000), 0x003C: ("reactive_power_total", 1000),
    0x003E: ("power_factor", 1), 0x0046: ("frequency", 1),
    0x0048: ("energy_import", 1), 0x004A: ("energy_export", 1),
}
DOCS = {"chint-dtsu666": (DTSU666_DOC, "holding"), "chint-ddsu666": (DDSU666_DOC, "holding"),
        "eastron-sdm630": (SDM630_DOC, "input")}

Connect = Callable[..., Awaitable[AsyncModbusTcpClient]]


def make_campus(start: float = NIGHT, seed: int = 7) -> Campus:
    clock = SimClock(start=start, scale=0)
    return Campus(SITE, MqttSettings(), clock=clock, seed=seed, use_config_ports=False,
                  families={Family.BOLLARD, Family.ENERGY})


@pytest.fixture
async def campus() -> AsyncIterator[Campus]:
    async with make_campus() as running:
        yield running


@pytest.fixture
async def connect(campus: Campus) -> AsyncIterator[Connect]:
    clients: list[AsyncModbusTcpClient] = []

    async def client_for(device_id: str, timeout: float = 1.0) -> AsyncModbusTcpClient:
        endpoint = campus.site.device(device_id).modbus
        assert endpoint is not None
        client = AsyncModbusTcpClient(endpoint.host, port=endpoint.port, timeout=timeout,
                                      retries=0)
        assert await client.connect()
        clients.append(client)
        return client

    yield client_for
    for client in clients:
        client.close()


def exact(raw: float, per_unit: int) -> float:
    """A float32 register as measured: its shortest decimal (numpy's Dragon4), divided
    exactly by the raw units per unit, then the nearest double."""
    return float(Decimal(np.format_float_positional(np.float32(raw), unique=True))
                 / per_unit)


async def read_float(client: AsyncModbusTcpClient, table: str, address: int, unit: int) -> float:
    read = client.read_holding_registers if table == "holding" else client.read_input_registers
    rr = await read(address, count=2, device_id=unit)
    assert not rr.isError(), rr
    value = client.convert_from_registers(rr.registers, FLOAT32)
    assert isinstance(value, float)
    return value


# Energy meters.

@pytest.mark.servers
async def test_every_meter_reads_its_snapshot_at_the_documented_addresses(
        campus: Campus, connect: Connect) -> None:
    meters = [d for d in campus.site.devices if d.family is Family.ENERGY]
    assert {d.modbus.model for d in meters if d.modbus} == set(DOCS)
    for device in meters:
        assert device.modbus is not None
        doc, table = DOCS[device.modbus.model]
        client = await connect(device.id)
        snapshot = campus.meter(device.id).snapshot()
        assert set(snapshot) == {name for name, _ in doc.values()}
        for address, (name, per_unit) in doc.items():
            raw = await read_float(client, table, address, device.modbus.unit)
            assert exact(raw, per_unit) == snapshot[name], (device.id, hex(address), name)


@pytest.mark.servers
async def test_meter_values_are_physically_consistent(campus: Campus) -> None:
    for device in campus.site.devices:
        if device.family is not Family.ENERGY:
            continue
        s = campus.meter(device.id).snapshot()
        assert 49.9 <= s["frequency"] <= 50.1
        assert 0.5 <= s["power_factor"] <= 1.0
        assert s["energy_import"] > 0 and s["power_total"] > 0
        if "voltage_a" in s:
            volts = [s[f"voltage_{p}"] for p in "abc"]
            assert all(215 <= v <= 245 for v in volts)
            assert math.isclose(s["power_total"], s["power_a"] + s["power_b"] + s["power_c"],
                                rel_tol=1e-4)
            apparent = sum(s[f"voltage_{p}"] * s[f"current_{p}"] for p in "abc") / 1000
            assert math.isclose(s["power_total"], apparent * s["power_factor"], rel_tol=0.02)
            q = s["power_total"] * math.tan(math.acos(s["power_factor"]))
            assert math.isclose(s["reactive_power_total"], q, rel_tol=0.02)
        else:
            assert 215 <= s["voltage"] <= 245
            assert math.isclose(s["power_total"], s["voltage"] * s["current"]
                                * s["power_factor"] / 1000, rel_tol=1e-4)


@pytest.mark.servers
async def test_dtsu666_block_read_and_scaling(campus: Campus, connect: Connect) -> None:
    client = await connect("em-main-total")
    rr = await client.read_holding_registers(0x2000, count=0x46, device_id=1)
    assert not rr.isError()
    floats = client.convert_from_registers(rr.registers, FLOAT32)
    assert isinstance(floats, list)
    ua_raw = floats[3]  # 0x2006, in 0.1 V
    assert 2150 <= ua_raw <= 2450
    uab = floats[0] / 10
    assert 372 <= uab <= 425  # line-to-line, √3 x 230 V
    assert 4990 <= floats[0x22] <= 5010  # 0x2044 Freq, in 0.01 Hz
    s = campus.meter("em-main-total").snapshot()
    assert exact(ua_raw, 10) == s["voltage_a"]
    # CT and VT ratios are 1: the values are primary values.
    rr = await client.read_holding_registers(0x0006, count=2, device_id=1)
    assert rr.registers == [1, 10]


@pytest.mark.servers
async def test_undocumented_addresses_and_functions_answer_exception_02(
        connect: Connect) -> None:
    client = await connect("em-main-total")
    rr = await client.read_holding_registers(0x3000, count=2, device_id=1)
    assert rr.isError() and rr.exception_code == 2
    rr = await client.read_input_registers(0x2000, count=2, device_id=1)  # a DTSU666
    assert rr.isError() and rr.exception_code == 2
    rr = await client.read_holding_registers(0x0000, count=2, device_id=3)  # an SDM630
    assert rr.isError() and rr.exception_code == 2
    rr = await client.write_register(0x2000, 1, device_id=1)
    assert rr.isError() and rr.exception_code == 2


# Editions of a meter's map, and the other ways a real meter can be read.
EDITIONS = {"em-main-total": "chint-dtsu666.energy-101e", "em-east-lighting": "chint-ddsu666.fc04",
            "em-main-hvac": "eastron-sdm630.setup"}


def edition_site() -> SiteConfig:
    devices = [d.model_copy(update={"modbus": d.modbus.model_copy(
        update={"model": EDITIONS[d.id]})}) if d.id in EDITIONS and d.modbus else d
        for d in SITE.devices]
    return SITE.model_copy(update={"devices": devices})


@pytest.fixture
async def edition_campus() -> AsyncIterator[Campus]:
    clock = SimClock(start=NIGHT, scale=0)
    async with Campus(edition_site(), MqttSettings(), clock=clock, seed=7,
                      use_config_ports=False, families={Family.ENERGY}) as running:
        yield running


async def client_of(campus: Campus, device_id: str) -> tuple[AsyncModbusTcpClient, int]:
    endpoint = campus.site.device(device_id).modbus
    assert endpoint is not None
    client = AsyncModbusTcpClient(endpoint.host, port=endpoint.port, timeout=1, retries=0)
    assert await client.connect()
    return client, endpoint.unit


@pytest.mark.servers
async def test_meters_answer_what_real_ones_answer(edition_campus: Campus) -> None:
    # DTSU666 of the editions with the energy block at 1000H: there, and not at 4000H.
    client, unit = await client_of(edition_campus, "em-main-total")
    try:
        s = edition_campus.meter("em-main-total").snapshot()
        assert exact(await read_float(client, "holding", 0x101E, unit), 1) == s["energy_import"]
        assert exact(await read_float(client, "holding", 0x1028, unit), 1) == s["energy_export"]
        rr = await client.read_holding_registers(0x401E, count=2, device_id=unit)
        assert rr.isError() and rr.exception_code == 2
        # DDSU666 (either model id): function 04 answers the same registers as 03.
        for device_id in ("em-east-lighting", "em-west-lighting"):
            endpoint = edition_campus.site.device(device_id).modbus
            assert endpoint is not None
            ddsu, ddsu_unit = await client_of(edition_campus, device_id)
            try:
                for address, count in ((0x2000, 16), (0x4000, 12)):
                    fc03 = await ddsu.read_holding_registers(address, count=count,
                                                             device_id=ddsu_unit)
                    fc04 = await ddsu.read_input_registers(address, count=count,
                                                           device_id=ddsu_unit)
                    assert not fc03.isError() and not fc04.isError()
                    assert fc03.registers == fc04.registers and any(fc03.registers)
            finally:
                ddsu.close()
        # SDM630: setup parameters on function 03 (float32), measurements on 04.
        sdm, sdm_unit = await client_of(edition_campus, "em-main-hvac")
        try:
            assert await read_float(sdm, "holding", 0x0002, sdm_unit) == 60.0  # demand, min
            assert await read_float(sdm, "holding", 0x000A, sdm_unit) == 3.0  # 3P4W
            assert await read_float(sdm, "holding", 0x001C, sdm_unit) == 2.0  # 9600 baud
            assert 49.9 <= await read_float(sdm, "input", 0x0046, sdm_unit) <= 50.1
            rr = await sdm.read_holding_registers(0x0046, count=2, device_id=sdm_unit)
            assert rr.isError() and rr.exception_code == 2
        finally:
            sdm.close()
    finally:
        client.close()


class _Results(Sink):
    def poll_done(self, polled: PolledDevice, result: PollResult) -> None:
        pass

    def availability_changed(self, polled: PolledDevice, state: Availability,
                             reason: str) -> None:
        pass


@pytest.mark.parametrize("editions", [False, True])
@pytest.mark.servers
async def test_the_gateway_reads_every_meter_exactly(editions: bool) -> None:
    """Every model and edition, through the gateway's own maps, equals the registers'
    exact values (the simulator's snapshot): == and not approximately."""
    models = load_models(MODELS_DIR)
    clock = SimClock(start=NIGHT, scale=0)
    site = edition_site() if editions else SITE
    async with Campus(site, MqttSettings(), clock=clock, seed=7, use_config_ports=False,
                      families={Family.ENERGY}) as running:
        meters = [d for d in running.site.devices if d.family is Family.ENERGY]
        if editions:
            assert {d.modbus.model for d in meters if d.modbus} >= set(EDITIONS.values())
        for device in meters:
            assert device.modbus is not None
            polled = PolledDevice(device, compile_plan(models[device.modbus.model]))
            poller = HostPoller(device.modbus.host, device.modbus.port, [polled], _Results())
            try:
                result = await poller.poll(polled)
            finally:
                poller.client.close()
            meter = running.meter(device.id)
            expected: dict[str, object] = dict(meter.snapshot())
            if device.modbus.model.endswith(".setup"):
                expected |= {k: v for k, v in meter.setup_snapshot().items()
                             if k in ("demand_period", "system_type")}
            assert result.errors == {}, (device.id, result.errors)
            assert result.values[0] == expected, device.id


async def test_building_totals_exceed_their_sub_meters() -> None:
    campus = make_campus(start=datetime(2026, 7, 14, 8, 0, tzinfo=TZ).timestamp())
    subs = {"em-main-total": ["em-main-lighting", "em-main-hvac", "em-main-lifts"],
            "em-canteen-total": ["em-canteen-kitchen"],
            "em-parking-total": ["em-ev-charging", "em-ebike-central"]}
    for _ in range(24):
        campus.clock.advance(1234)
        for total, parts in subs.items():
            whole = campus.meter(total).snapshot()["power_total"]
            assert whole > sum(campus.meter(p).snapshot()["power_total"] for p in parts)


def test_load_profiles_follow_the_campus_day() -> None:
    campus = make_campus(start=datetime(2026, 7, 14, 0, 0, tzinfo=TZ).timestamp())  # Tuesday
    day = math.floor(campus.clock.now() / 60)

    def mean_kw(device_id: str, start_h: float, end_h: float, days: int = 0) -> float:
        meter = campus.meter(device_id)
        minutes = range(day + days * 1440 + int(start_h * 60), day + days * 1440 + int(end_h * 60))
        return sum(meter.minute_kw(m) for m in minutes) / len(minutes)

    assert mean_kw("em-main-total", 9, 11) > 2.5 * mean_kw("em-main-total", 1, 4)
    assert mean_kw("em-canteen-kitchen", 11.5, 13) > 3 * mean_kw("em-canteen-kitchen", 1, 4)
    assert mean_kw("em-main-hvac", 14, 15) > 4 * mean_kw("em-main-hvac", 2, 3)
    assert mean_kw("em-ev-charging", 9, 11) > 5 * mean_kw("em-ev-charging", 1, 4)
    assert mean_kw("em-ebike-central", 19, 22) > 2 * mean_kw("em-ebike-central", 14, 16)
    # Saturday (4 days on) is quieter than Tuesday.
    assert mean_kw("em-main-total", 9, 11, days=4) < 0.6 * mean_kw("em-main-total", 9, 11)
    # HVAC follows the weather: a July afternoon needs more than a January one.
    winter = make_campus(start=datetime(2027, 1, 12, 0, 0, tzinfo=TZ).timestamp())
    winter_day = math.floor(winter.clock.now() / 60)
    january = sum(winter.meter("em-main-hvac").minute_kw(winter_day + m)
                  for m in range(14 * 60, 15 * 60)) / 60
    assert mean_kw("em-main-hvac", 14, 15) > 1.8 * january


def test_energy_only_grows_and_is_the_sum_of_the_minutes() -> None:
    campus = make_campus()
    for device_id in ("em-main-total", "em-canteen-kitchen", "em-conf-total"):
        meter = campus.meter(device_id)
        t0 = campus.clock.now()
        assert t0 % 60 == 0
        e0 = meter.energy_import()
        previous, previous_register = e0, meter.snapshot()["energy_import"]
        for _ in range(86400 // 397):
            campus.clock.advance(397)
            energy, register = meter.energy_import(), meter.snapshot()["energy_import"]
            assert energy >= previous and register >= previous_register
            previous, previous_register = energy, register
        campus.clock.advance(t0 + 86400 - campus.clock.now())
        first = math.floor(t0 / 60)
        expected = sum(meter.minute_kw(m) for m in range(first, first + 1440)) / 60
        assert math.isclose(meter.energy_import() - e0, expected, rel_tol=1e-9)
        assert 100 < expected < 50_000  # kWh a day: plausible for these loads


def test_meter_replacement_starts_the_counter_from_zero() -> None:
    campus = make_campus()
    campus.clock.advance(30)
    meter = campus.meter("em-ev-charging")
    campus.meter_reset("em-ev-charging")
    assert meter.snapshot()["energy_import"] == 0.0
    minute = math.floor(campus.clock.now() / 60)
    campus.clock.advance(30 + 600)  # to a minute boundary, ten minutes on
    expected = (meter.minute_kw(minute) / 120
                + sum(meter.minute_kw(minute + 1 + k) for k in range(10)) / 60)
    assert math.isclose(meter.energy_import(), expected, rel_tol=1e-9)


def test_same_seed_same_values_different_seed_different() -> None:
    def sample(seed: int) -> list[object]:
        campus = make_campus(seed=seed)
        values: list[object] = []
        for step in (0, 600, 5 * 3600 + 17, 86400):
            campus.clock.advance(step)
            values.append(campus.meter("em-main-total").snapshot())
            values.append(campus.meter("em-west-lighting").snapshot())
            values.append(campus.meter("em-conf-total").snapshot())
            values.append(campus.plc().snapshot())
        return values

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


# The bollard PLC.

def decode_plc_unit(client: AsyncModbusTcpClient, regs: list[int]) -> dict[str, object]:
    def f32(words: list[int]) -> float:
        value = client.convert_from_registers(words, FLOAT32, word_order="little")  # CDAB
        assert isinstance(value, float)
        return value

    return {
        "state": ("down", "rising", "up", "lowering", "fault")[regs[0]],
        "position": regs[1] / 10,
        "hydraulic_pressure": f32(regs[2:4]),
        "motor_current": f32(regs[4:6]),
        "oil_temperature": (regs[6] - 0x10000 if regs[6] & 0x8000 else regs[6]) / 10,
        "cycle_count": client.convert_from_registers(regs[7:9], UINT32, word_order="little"),
        "fault_code": regs[9],
        "target": ("none", "up", "down")[regs[10]],
    }


async def read_unit(client: AsyncModbusTcpClient, n: int) -> dict[str, object]:
    rr = await client.read_holding_registers(100 + 20 * (n - 1), count=20, device_id=1)
    assert not rr.isError(), rr
    assert rr.registers[11:] == [0] * 9  # reserved
    return decode_plc_unit(client, list(rr.registers))


async def command(client: AsyncModbusTcpClient, code: int, arg: int, seq: int) -> list[int]:
    rr = await client.write_registers(20, [code, arg, seq], device_id=1)
    assert not rr.isError(), rr
    rr = await client.read_holding_registers(23, count=2, device_id=1)
    return list(rr.registers)


@pytest.mark.servers
async def test_plc_registers_equal_its_snapshot(campus: Campus, connect: Connect) -> None:
    client = await connect("bollard-plc-south")
    campus.plc().set_mode(Mode.MANUAL)
    await command(client, 6, 7, 1)  # lower bollard 7, and look at it mid-way
    campus.clock.advance(1.2)
    snapshot = campus.plc().snapshot()
    rr = await client.read_holding_registers(0, count=12, device_id=1)
    g = rr.registers
    group = snapshot["group"]
    assert group == {
        "mode": "manual", "emergency_rise": "idle", "power": "mains", "ups_charge": g[3],
        "heartbeat": g[4], "bollard_count": 42, "bollards_up": 41, "bollards_down": 0,
        "bollards_fault": 0, "cabinet_temperature": g[9] / 10,
        "supply_pressure": client.convert_from_registers(g[10:12], FLOAT32,
                                                         word_order="little"),
    }
    assert g[0] == 1 and 90 <= g[3] <= 100 and 100 < group["supply_pressure"] < 170
    for n in range(1, 43):
        assert await read_unit(client, n) == snapshot["units"][n], n
    moving = snapshot["units"][7]
    assert moving["state"] == "lowering" and moving["position"] == 60.0
    assert moving["motor_current"] > 0.5 and 10 < moving["hydraulic_pressure"] < 30
    resting = snapshot["units"][1]
    assert resting["motor_current"] == 0.0 and 50 < resting["hydraulic_pressure"] < 75
    assert 10 < resting["oil_temperature"] < 60 and resting["cycle_count"] > 100


@pytest.mark.servers
async def test_plc_unlisted_addresses_answer_exception_02(connect: Connect) -> None:
    client = await connect("bollard-plc-south")
    for address, count in ((12, 1), (10, 4), (25, 1), (99, 2), (940, 1)):
        rr = await client.read_holding_registers(address, count=count, device_id=1)
        assert rr.isError() and rr.exception_code == 2, (address, count)
    for address, count in ((2, 1), (0, 3), (50, 3), (52, 1)):
        rr = await client.read_coils(address, count=count, device_id=1)
        assert rr.isError() and rr.exception_code == 2, (address, count)
    rr = await client.read_coils(10, count=42, device_id=1)
    assert not rr.isError() and rr.bits[:42] == [True] * 42
    rr = await client.read_discrete_inputs(0, count=4, device_id=1)
    assert rr.isError() and rr.exception_code == 2
    rr = await client.read_discrete_inputs(0, count=3, device_id=1)
    assert rr.bits[:3] == [False, True, False]  # door shut, mains present, loop free
    rr = await client.write_register(0, 3, device_id=1)  # mode is read-only
    assert rr.isError() and rr.exception_code == 2


@pytest.mark.servers
async def test_target_register_moves_a_bollard_in_simulated_time(
        campus: Campus, connect: Connect) -> None:
    client = await connect("bollard-plc-south")
    target = 100 + 20 * (5 - 1) + 10
    count = (await read_unit(client, 5))["cycle_count"]
    assert isinstance(count, (int, float)), count
    cycles = int(count)
    assert not (await client.write_register(target, 2, device_id=1)).isError()
    campus.clock.advance(1.5)
    unit = await read_unit(client, 5)
    assert unit["state"] == "lowering" and unit["position"] == 50.0 and unit["target"] == "down"
    campus.clock.advance(1.6)
    assert (await read_unit(client, 5))["state"] == "down"
    rr = await client.read_holding_registers(6, count=2, device_id=1)
    assert rr.registers == [41, 1]
    assert not (await client.write_register(target, 1, device_id=1)).isError()
    campus.clock.advance(3.9)
    assert (await read_unit(client, 5))["state"] == "rising"
    campus.clock.advance(0.2)
    unit = await read_unit(client, 5)
    assert unit["state"] == "up" and unit["cycle_count"] == cycles + 1
    rr = await client.write_register(target, 3, device_id=1)
    assert rr.isError() and rr.exception_code == 3


@pytest.mark.servers
async def test_coils_move_bollards(campus: Campus, connect: Connect) -> None:
    client = await connect("bollard-plc-south")
    rr = await client.write_coil(10 + 11, False, device_id=1)  # bollard 12 down
    assert not rr.isError() and rr.bits[0] is False
    rr = await client.read_coils(10, count=42, device_id=1)
    assert rr.bits[11] is False and rr.bits[10] is True
    campus.clock.advance(3.0)
    assert (await read_unit(client, 12))["state"] == "down"
    rr = await client.write_coils(10, [False] * 42, device_id=1)
    assert not rr.isError()
    campus.clock.advance(3.0)
    assert campus.plc().snapshot()["group"]["bollards_down"] == 42
    assert not (await client.write_coils(10, [True] * 42, device_id=1)).isError()
    campus.clock.advance(4.0)
    assert campus.plc().snapshot()["group"]["bollards_up"] == 42


@pytest.mark.servers
async def test_command_sequence_acts_once_per_new_number(
        campus: Campus, connect: Connect) -> None:
    client = await connect("bollard-plc-south")
    assert await command(client, 2, 0, 7) == [7, 1]  # lower all: accepted
    campus.clock.advance(3.0)
    assert campus.plc().snapshot()["group"]["bollards_down"] == 42
    assert await command(client, 1, 0, 7) == [7, 1]  # same seq: ignored
    campus.clock.advance(5.0)
    assert campus.plc().snapshot()["group"]["bollards_down"] == 42
    rr = await client.read_holding_registers(20, count=3, device_id=1)
    assert rr.registers == [1, 0, 7]
    assert await command(client, 1, 0, 8) == [8, 1]  # new seq: raise all
    campus.clock.advance(4.0)
    assert campus.plc().snapshot()["group"]["bollards_up"] == 42
    assert await command(client, 5, 43, 9) == [9, 3]  # no bollard 43: invalid
    assert await command(client, 9, 0, 10) == [10, 3]  # no command 9: invalid
    assert await command(client, 2, 0, 0) == [10, 3]  # seq 0 is not a sequence number
    campus.clock.advance(4.0)
    assert campus.plc().snapshot()["group"]["bollards_up"] == 42
    # A master may also write code and argument first and the sequence number last (FC06).
    for address, value in ((20, 6), (21, 42), (22, 11)):
        assert not (await client.write_register(address, value, device_id=1)).isError()
    campus.clock.advance(3.0)
    assert campus.plc().snapshot()["units"][42]["state"] == "down"


@pytest.mark.servers
async def test_interlocks_refuse_and_emergency_rise_is_never_refused(
        campus: Campus, connect: Connect) -> None:
    client = await connect("bollard-plc-south")
    plc = campus.plc()
    assert await command(client, 6, 20, 1) == [1, 1]
    campus.clock.advance(3.0)
    plc.set_loop(True)  # a car stands on the lane's vehicle loop
    rr = await client.read_discrete_inputs(2, count=1, device_id=1)
    assert rr.bits[0] is True
    assert await command(client, 5, 20, 2) == [2, 2]  # raise one: interlock
    assert await command(client, 1, 0, 3) == [3, 2]  # raise all: interlock
    rr = await client.write_register(100 + 20 * 19 + 10, 1, device_id=1)
    assert rr.isError() and rr.exception_code == 3  # direct raise refused too
    assert await command(client, 6, 21, 4) == [4, 1]  # lowering is allowed
    campus.clock.advance(10.0)
    assert plc.snapshot()["units"][20]["state"] == "down"
    plc.set_mode(Mode.MAINTENANCE)
    assert await command(client, 6, 3, 5) == [5, 4]  # refused by mode
    assert await command(client, 3, 0, 6) == [6, 1]  # emergency: even now, even with the car
    campus.clock.advance(1.0)
    rr = await client.read_coils(0, count=1, device_id=1)
    assert rr.bits[0] is True  # fast rise active
    campus.clock.advance(0.6)
    group = plc.snapshot()["group"]
    assert group["emergency_rise"] == "complete" and group["mode"] == "emergency"
    assert group["bollards_up"] == 42
    assert await command(client, 2, 0, 7) == [7, 4]  # latched until a reset
    assert await command(client, 4, 0, 8) == [8, 1]
    group = plc.snapshot()["group"]
    assert group["emergency_rise"] == "idle" and group["mode"] == "maintenance"


@pytest.mark.servers
async def test_a_faulted_bollard_ignores_commands_until_reset(
        campus: Campus, connect: Connect) -> None:
    client = await connect("bollard-plc-south")
    campus.bollard_stuck(3)
    assert await command(client, 6, 3, 1) == [1, 1]
    campus.clock.advance(9.9)
    unit = await read_unit(client, 3)
    assert unit["state"] == "lowering" and unit["position"] == 100.0 and unit["fault_code"] == 0
    campus.clock.advance(0.2)
    unit = await read_unit(client, 3)
    assert unit["state"] == "fault" and unit["fault_code"] == 4 and unit["target"] == "none"
    assert campus.plc().snapshot()["group"]["bollards_fault"] == 1
    assert await command(client, 5, 3, 2) == [2, 2]
    assert await command(client, 6, 3, 3) == [3, 2]
    campus.bollard_stuck(3, stuck=False)
    rr = await client.write_coil(1, True, device_id=1)  # fault reset
    assert not rr.isError() and rr.bits[0] is True  # the reply echoes the request
    rr = await client.read_coils(1, count=1, device_id=1)
    assert rr.bits[0] is False  # reads 0
    unit = await read_unit(client, 3)
    assert unit["state"] == "up" and unit["fault_code"] == 0
    assert await command(client, 6, 3, 4) == [4, 1]
    campus.clock.advance(3.0)
    assert (await read_unit(client, 3))["state"] == "down"


def test_lane_bollards_cycle_for_vehicles_in_office_hours() -> None:
    start = datetime(2026, 11, 24, 8, 0, tzinfo=TZ).timestamp()  # Tuesday
    campus = make_campus(start=start)
    plc = campus.plc()
    before = plc.snapshot()["units"]
    occupied = lane_down = 0
    while campus.clock.now() < start + 4 * 3600:  # 08:00-12:00
        campus.clock.advance(2.0)
        inputs = plc.bits(Table.DISCRETE_INPUTS)
        occupied += inputs[2]
        states = [b.state for b in plc.bollards]
        lane_down += all(states[n - 1] == 0 for n in range(19, 25))
        assert all(states[n - 1] == 2 for n in range(1, 43) if n not in range(19, 25))
        if campus.clock.now() < start + 1800:
            assert not inputs[2]  # nobody before office hours
    after = plc.snapshot()["units"]
    cars = after[19]["cycle_count"] - before[19]["cycle_count"]
    assert 20 <= cars <= 120
    assert all(after[n]["cycle_count"] - before[n]["cycle_count"] == cars for n in range(19, 25))
    assert after[1]["cycle_count"] == before[1]["cycle_count"]
    assert occupied > 0 and lane_down > 0
    campus.clock.advance(11 * 3600)  # 23:00: everything up, nobody about
    group = plc.snapshot()["group"]
    assert group["bollards_up"] == 42 and not plc.loop_occupied


# Faults.

@pytest.mark.servers
async def test_fault_kinds(campus: Campus, connect: Connect) -> None:
    client = await connect("em-main-lighting", timeout=0.3)
    campus.modbus_fault("em-main-lighting", "silent")
    with pytest.raises(ModbusException):
        await client.read_holding_registers(0x2000, count=2, device_id=2)
    other = await connect("em-main-total")
    assert not (await other.read_holding_registers(0x2000, count=2, device_id=1)).isError()

    campus.modbus_fault("em-main-lighting", "exception")
    client = await connect("em-main-lighting")
    rr = await client.read_holding_registers(0x2000, count=2, device_id=2)
    assert rr.isError() and rr.exception_code == 4

    campus.modbus_fault("em-main-lighting", "slow", delay=0.3)
    began = time.monotonic()
    rr = await client.read_holding_registers(0x2000, count=2, device_id=2)
    assert not rr.isError() and time.monotonic() - began >= 0.29

    campus.modbus_fault("em-main-lighting", "none")
    assert not (await client.read_holding_registers(0x2000, count=2, device_id=2)).isError()


@pytest.mark.servers
async def test_unknown_unit_ids_are_not_answered(connect: Connect) -> None:
    client = await connect("em-main-total", timeout=0.3)
    with pytest.raises(ModbusException):
        await client.read_holding_registers(0x2000, count=2, device_id=9)


@pytest.mark.servers
async def test_server_down_refuses_connections_until_up(
        campus: Campus, connect: Connect) -> None:
    device = campus.site.device("em-east-total")
    assert device.modbus is not None
    host, port = device.modbus.host, device.modbus.port
    client = await connect("em-east-total", timeout=0.5)
    await campus.modbus_server_down((host, port))
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, port)
    with pytest.raises(ModbusException):
        await client.read_holding_registers(0x2000, count=2, device_id=1)
    await campus.modbus_server_up((host, 15022))  # the configured address works too
    endpoint = campus.site.device("em-east-total").modbus
    assert endpoint is not None
    assert endpoint.port == port
    fresh = await connect("em-east-total")
    assert not (await fresh.read_holding_registers(0x2000, count=2, device_id=1)).isError()


@pytest.mark.servers
async def test_slow_requests_end_unanswered_when_the_server_goes_down(campus: Campus) -> None:
    device = campus.site.device("em-east-total")
    assert device.modbus is not None
    reader, writer = await asyncio.open_connection(device.modbus.host, device.modbus.port)
    campus.modbus_fault("em-east-total", "slow", delay=30.0)
    # MBAP header (transaction 1, protocol 0, length 6, unit 1) + FC03 0x2000, 2 registers.
    writer.write(bytes.fromhex("000100000006" "01" "03" "2000" "0002"))
    await writer.drain()
    await campus.modbus_server_down("em-east-total")
    async with asyncio.timeout(3):
        try:
            answer = await reader.read()
        except ConnectionResetError:
            answer = b""
    assert answer == b""  # closed, and nothing was answered
    writer.close()


# A master that is not pymodbus.

async def run_mbpoll(*args: str) -> list[float]:
    proc = await asyncio.create_subprocess_exec(
        "mbpoll", *args, "-1", "-o", "1", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(10):
        out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text
    return [float(v) for v in re.findall(r"^\[\d+\]:\s+(\S+)", text, re.MULTILINE)]


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll is not installed")
@pytest.mark.servers
async def test_mbpoll_reads_sane_values(campus: Campus) -> None:
    meters = campus.site.device("em-main-total").modbus
    plc = campus.site.device("bollard-plc-south").modbus
    assert meters is not None and plc is not None
    port = str(meters.port)
    # DTSU666 unit 1: Ua, Ub, Uc at 0x2006 (reference 8199, 1-based), float32 ABCD, 0.1 V.
    volts = await run_mbpoll("-a", "1", "-r", "8199", "-c", "3", "-t", "4:float", "-B",
                             "-p", port, "127.0.0.1")
    snapshot = campus.meter("em-main-total").snapshot()
    assert len(volts) == 3 and all(2150 <= v <= 2450 for v in volts)
    assert math.isclose(volts[0] / 10, snapshot["voltage_a"], rel_tol=1e-5)
    # SDM630 unit 3: total power (W) at input register 0x0034, frequency at 0x0046.
    power, = await run_mbpoll("-a", "3", "-0", "-r", "52", "-t", "3:float", "-B", "-p", port,
                              "127.0.0.1")
    frequency, = await run_mbpoll("-a", "3", "-0", "-r", "70", "-t", "3:float", "-B",
                                  "-p", port, "127.0.0.1")
    assert math.isclose(power / 1000, campus.meter("em-main-hvac").snapshot()["power_total"],
                        rel_tol=1e-5)
    assert 49.9 <= frequency <= 50.1
    # DDSU666 on the next converter: energy at 0x4000, kWh.
    east = campus.site.device("em-east-lighting").modbus
    assert east is not None
    energy, = await run_mbpoll("-a", "2", "-0", "-r", "16384", "-t", "4:float", "-B",
                               "-p", str(east.port), "127.0.0.1")
    assert energy > 0
    # The PLC: state and position of bollard 1 (16-bit), hydraulic pressure (CDAB float).
    state, position = await run_mbpoll("-a", "1", "-0", "-r", "100", "-c", "2", "-t", "4",
                                       "-p", str(plc.port), "127.0.0.1")
    pressure, = await run_mbpoll("-a", "1", "-0", "-r", "102", "-t", "4:float",
                                 "-p", str(plc.port), "127.0.0.1")
    assert (state, position) == (2, 1000)
    assert 50 < pressure < 75
