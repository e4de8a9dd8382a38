"""Golden register-map cases (tests/modbus_cases/*): a real pymodbus server holds the
case's registers, the gateway's poller reads them through its compiled map, and one poll
must produce the expected values, qualities and errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from facility.configfile import ConfigError
from facility.messages import Availability, Family
from facility.modbusmaps import RegisterMap, load_models
from facility.site import Device, ModbusEndpoint
from gateway.modbus.poller import HostPoller, PolledDevice, PollResult, Sink
from gateway.modbus.registermap import compile_plan
from tests.helpers import modbus_port, stop_modbus

CASES = Path(__file__).parent / "modbus_cases"
MODELS = load_models(Path(__file__).parent.parent / "config" / "models")


def _runs(table: dict[int, list[Any]]) -> list[tuple[int, list[Any]]]:
    """Contiguous runs of addresses, so undefined addresses stay undefined on the server."""
    runs: list[tuple[int, list[Any]]] = []
    for addr in sorted(table):
        values = list(table[addr])
        if runs and runs[-1][0] + len(runs[-1][1]) == addr:
            runs[-1][1].extend(values)
        else:
            runs.append((addr, values))
    return runs


def sim_device(unit: int, registers: dict[str, dict[int, list[Any]]]) -> SimDevice:
    def block(table: str) -> list[SimData]:
        data = registers.get(table, {})
        bits = table in ("coil", "discrete")
        kind = DataType.BITS if bits else DataType.REGISTERS
        runs = _runs(data) or [(60000, [0])]  # pymodbus wants every table to have a block
        return [SimData(addr, values=[bool(v) for v in vals] if bits else vals, datatype=kind)
                for addr, vals in runs]

    return SimDevice(id=unit, simdata=(block("coil"), block("discrete"), block("holding"),
                                       block("input")))


class Collect(Sink):
    def __init__(self) -> None:
        self.results: asyncio.Queue[PollResult] = asyncio.Queue()

    def poll_done(self, polled: PolledDevice, result: PollResult) -> None:
        self.results.put_nowait(result)

    def availability_changed(self, polled: PolledDevice, state: Availability, reason: str) -> None:
        pass


Registers = dict[str, dict[int, list[Any]]]


def load_case(name: str) -> tuple[RegisterMap, int, Registers, dict[int, Any]]:
    folder = CASES / name
    spec = yaml.safe_load((folder / "map.yaml").read_text(encoding="utf-8"))
    regmap = MODELS[spec["model"]] if "model" in spec else RegisterMap.model_validate(spec["map"])
    registers = yaml.safe_load((folder / "registers.yaml").read_text(encoding="utf-8"))
    expected = yaml.safe_load((folder / "expected.yaml").read_text(encoding="utf-8"))
    return regmap, int(spec.get("units", 0)), registers, expected


async def poll_once(regmap: RegisterMap, units: int,
                    registers: dict[str, dict[int, list[Any]]]) -> PollResult:
    server = ModbusTcpServer(context=[sim_device(1, registers)], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        port = modbus_port(server)
        device = Device(id="dut", family=Family.ENERGY, kind="meter", gateway="gw", place="p",
                        modbus=ModbusEndpoint(host="127.0.0.1", port=port, unit=1,
                                              model=regmap.model, period=60, timeout=2))
        sink = Collect()
        poller = HostPoller("127.0.0.1", port, [PolledDevice(device, compile_plan(regmap, units))],
                            sink)
        task = asyncio.create_task(poller.run())
        try:
            return await asyncio.wait_for(sink.results.get(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await stop_modbus(server)


def same(actual: Any, expected: Any) -> bool:
    """Exactly the expected value and type: a float32's shortest decimal, an exact integer."""
    return type(actual) is type(expected) and actual == expected


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
@pytest.mark.servers
async def test_register_map_case(case: str) -> None:
    regmap, units, registers, expected = load_case(case)
    result = await poll_once(regmap, units, registers)
    assert result.answered
    for unit, want in expected.items():
        got = result.values.get(unit, {})
        for name, value in want["values"].items():
            assert name in got, f"{case} unit {unit}: {name} missing ({result.errors.get(unit)})"
            assert same(got[name], value), f"{case} unit {unit}: {name} = {got[name]!r}, " \
                                           f"expected {value!r}"
        assert sorted(result.errors.get(unit, {})) == sorted(want.get("errors", []))
        assert result.quality.get(unit, "good") == want["quality"]
    if units:
        assert sorted(result.values) == list(range(units + 1)), "every unit read"


def test_plans_use_few_reads() -> None:
    """The PLC's 42 bollards take 7 block reads, not 42 or 336."""
    plan = compile_plan(MODELS["bollard-plc-v1"], 42)
    unit_blocks = [b for b in plan.blocks if b.table == "holding" and b.start >= 100]
    assert len(unit_blocks) == 7
    assert all(b.count <= 125 for b in plan.blocks)
    # The reserved 12..19 range of the group is never read.
    assert all(not (b.start <= 19 and b.start + b.count - 1 >= 12) for b in plan.blocks)


async def test_a_cancel_that_pymodbus_swallowed_still_stops_the_poller() -> None:
    """pymodbus awaits each reply with asyncio.wait_for, which on Python 3.11 returns a
    reply that arrived together with a cancel and drops the cancel: a poller must stop
    all the same, or a gateway's shutdown hangs (seen once in CI)."""
    device = Device(id="dut", family=Family.ENERGY, kind="meter", gateway="gw", place="p",
                    modbus=ModbusEndpoint(host="127.0.0.1", port=1, unit=1,
                                          model="chint-dtsu666", period=1, timeout=5))
    poller = HostPoller("127.0.0.1", 1, [PolledDevice(device, compile_plan(
        MODELS["chint-dtsu666"], 0))], Collect())
    reply = asyncio.get_running_loop().create_future()

    async def request() -> str:
        return await asyncio.wait_for(reply, 5)  # as pymodbus waits for a reply

    call = asyncio.create_task(poller.call(request(), 5))
    await asyncio.sleep(0)  # the call now waits for its reply
    reply.set_result("reply")
    call.cancel()  # in the same turn of the loop as the reply
    with pytest.raises(asyncio.CancelledError):
        await call


def test_editions_are_models_of_their_own() -> None:
    """`<model>.<edition>`: the base map with the edition's tables and addresses."""
    base, moved = MODELS["chint-dtsu666"], MODELS["chint-dtsu666.energy-101e"]
    assert [p.name for p in base.points] == [p.name for p in moved.points]
    energy = {"energy_import": 0x101E, "energy_export": 0x1028}
    assert {p.name: p.address for p in moved.points} == \
        {p.name: energy.get(p.name, p.address) for p in base.points}
    fc04 = compile_plan(MODELS["chint-ddsu666.fc04"])
    assert {b.table for b in fc04.blocks} == {"input"}
    setup = compile_plan(MODELS["eastron-sdm630.setup"])
    assert {(b.table, b.start) for b in setup.blocks if b.table == "holding"} == \
        {("holding", 0x0002), ("holding", 0x000A)}
    assert not moved.editions


BASE = """\
model: m
vendor: v
description: d
reference: r
points:
  - {name: a, address: 0, type: float32}
  - {name: b, address: 2, type: uint16}
"""


@pytest.mark.parametrize(("edition", "why"), [
    ("e1: {description: x, reference: y, points: {c: {address: 5}}}", "no point 'c'"),
    ("e1: {description: x, reference: y, points: {b: {address: 1}}}", "overlaps"),
    ("E1: {description: x, reference: y}", "E1"),
    ("e1: {description: x, reference: y, add: [{name: a, address: 9, type: uint16}]}",
     "used twice"),
    ("e1: {description: x, reference: y, table: coil}", "bool"),
    ("e1: {description: x}", "reference"),
])
def test_an_edition_that_does_not_fit_names_the_file_and_the_field(
        tmp_path: Path, edition: str, why: str) -> None:
    (tmp_path / "m.yaml").write_text(f"{BASE}editions:\n  {edition}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_models(tmp_path)
    assert str(tmp_path / "m.yaml") in str(info.value)
    assert why in str(info.value)
