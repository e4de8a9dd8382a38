"""One Modbus TCP server per (host, port): a PLC, or an RS485-to-TCP converter with meters.

Built on pymodbus's simulator API: each unit id is a `SimDevice` whose register spans come
from the simulated device's `Layout` (pymodbus answers exception 02 for addresses outside
them, and for writes to read-only ones) and whose `action` fills the registers from the
model at request time and passes writes to it.

Two things pymodbus's action cannot see are handled in the request hook (`trace_pdu`):
requests for unit ids nobody serves, and for units made silent, are dropped (the master
times out, as behind a real converter); and coil/discrete-input reads are checked bit by
bit, because the action only learns how many 16-bit words a bit read touches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.registers import TABLE_OF_FUNCTION, Layout, ModbusUnit, Span, Table

log = logging.getLogger(__name__)

FaultKind = Literal["silent", "slow", "exception", "none"]
# A bit address beyond every bit block: pymodbus answers it with exception 02.
_OFF_MAP = 0xFFFF


@dataclass(frozen=True)
class Fault:
    kind: FaultKind = "none"
    delay: float = 0.0  # wall seconds, for "slow"


class ModbusEndpoint:
    """A listening Modbus TCP server for the units behind one host and port."""

    def __init__(self, host: str, port: int, units: Sequence[ModbusUnit]) -> None:
        self.host = host
        self.port = port  # the bound port once started
        self.units = {u.unit: u for u in units}
        self.faults: dict[int, Fault] = {}
        self._server: ModbusTcpServer | None = None
        self._closing = asyncio.Event()
        self._held: set[asyncio.Task[object]] = set()
        self._echo: dict[int, tuple[int, bool]] = {}

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> int:
        if self._server is not None:
            return self.port
        self._closing = asyncio.Event()
        devices = [self._sim_device(u) for u in self.units.values()]
        server = ModbusTcpServer(devices, address=(self.host, self.port),
                                 ignore_missing_devices=True, trace_pdu=self._on_pdu)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus says only "Could not start listen"
            raise RuntimeError(f"Modbus simulator cannot listen on {self.host}:{self.port} "
                               f"(units {sorted(self.units)}): is the port taken?") from exc
        self._server = server
        self.port = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]  # pymodbus: a server's transport (an asyncio.Server) is typed as BaseTransport
        log.debug("modbus server %s:%d serving units %s", self.host, self.port,
                  sorted(self.units))
        return self.port

    async def stop(self) -> None:
        """Close the listener and every connection; requests held by 'slow' end unanswered."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus: ModbusBaseServer.shutdown is unannotated
        if self._held:
            await asyncio.wait(list(self._held), timeout=2.0)

    def set_fault(self, unit: int, kind: FaultKind, delay: float = 0.0) -> None:
        if unit not in self.units:
            raise KeyError(f"unit {unit} is not served on {self.host}:{self.port}")
        if kind not in ("silent", "slow", "exception", "none"):
            raise ValueError(f"unknown Modbus fault kind {kind!r}")
        if kind == "none":
            self.faults.pop(unit, None)
        else:
            self.faults[unit] = Fault(kind, delay)

    # pymodbus glue.
    def _sim_device(self, unit: ModbusUnit) -> SimDevice:
        coils, discrete, holding, inputs = (self._sim_table(unit.layout, t) for t in Table)
        action = functools.partial(self._action, unit.unit)
        return SimDevice(id=unit.unit, simdata=(coils, discrete, holding, inputs),
                         action=action)

    @staticmethod
    def _sim_table(layout: Layout, table: Table) -> list[SimData]:
        spans = layout.spans(table)
        if table in (Table.COILS, Table.DISCRETE_INPUTS):
            # One bit block over all spans; the exact bits are checked in _on_pdu/_action.
            low = min((s.start for s in spans), default=0)
            high = max((s.end for s in spans), default=16)
            return [SimData(address=low, values=[False] * (high - low), datatype=DataType.BITS)]
        if not spans:
            return [SimData(address=0, datatype=DataType.INVALID)]
        return [SimData(address=s.start, count=s.count, datatype=DataType.REGISTERS,
                        readonly=not s.writable) for s in _merged(spans)]

    def _on_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            return pdu
        unit = self.units.get(pdu.dev_id)
        fault = self.faults.get(pdu.dev_id)
        if unit is None or (fault is not None and fault.kind == "silent"):
            # pymodbus skips a request whose traced PDU is None: nothing is answered.
            return None  # type: ignore[return-value]  # pymodbus: trace_pdu may return None (the request is dropped) but is typed to return ModbusPDU
        if pdu.function_code in (1, 2):
            table = TABLE_OF_FUNCTION[pdu.function_code]
            if not unit.layout.covers(table, pdu.address, pdu.count):
                pdu.address = _OFF_MAP
        return pdu

    async def _action(self, unit_id: int, function_code: int, start_address: int,
                      address: int, count: int, registers: list[int],
                      set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        unit = self.units[unit_id]
        fault = self.faults.get(unit_id)
        if fault is not None and fault.kind == "exception":
            return ExcCodes.DEVICE_FAILURE
        if fault is not None and fault.kind == "slow" and fault.delay > 0:
            await self._hold(fault.delay)
        table = TABLE_OF_FUNCTION.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if table in (Table.COILS, Table.DISCRETE_INPUTS):
            return self._bits(unit, function_code, table, start_address, address, count,
                              registers, set_values)
        if set_values is not None:
            return unit.write_registers(address, [int(v) for v in set_values])
        offset = address - start_address
        registers[offset:offset + count] = unit.read_registers(table, address, count)
        return None

    def _bits(self, unit: ModbusUnit, function_code: int, table: Table, start_word: int,
              address: int, words: int, registers: list[int],
              set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        if set_values is not None:
            bits = [bool(v) for v in set_values]
            if not unit.layout.covers(table, address, len(bits), write=True):
                return ExcCodes.ILLEGAL_ADDRESS
            result = unit.write_bits(address, bits)
            if result is None and function_code == 5:
                self._echo[unit.unit] = (address, bits[0])
            return result
        # A read touches `words` 16-bit words from the one holding `address`.
        first = address // 16
        bits = unit.read_bits(table, first * 16, words * 16)
        if function_code == 5:
            # The read-back of a single-coil write: the reply echoes the request.
            echo = self._echo.pop(unit.unit, None)
            if echo is not None and echo[0] == address:
                bits[address - first * 16] = echo[1]
        for i in range(words):
            word = 0
            for b, on in enumerate(bits[16 * i:16 * i + 16]):
                word |= int(on) << b
            registers[first - start_word + i] = word
        return None

    async def _hold(self, delay: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._held.add(task)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()
        finally:
            self._held.discard(task)
        if self._closing.is_set():
            # The server went away while holding the request: end it without a reply.
            raise NoSuchIdException("server closed")


def _merged(spans: tuple[Span, ...]) -> list[Span]:
    """Adjacent spans of the same writability joined (fewer SimData blocks)."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        last = merged[-1] if merged else None
        if last is not None and last.end == span.start and last.writable == span.writable:
            merged[-1] = Span(last.start, last.count + span.count, last.writable)
        else:
            merged.append(span)
    return merged
