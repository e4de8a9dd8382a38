"""Polling the Modbus devices behind one host: one TCP connection, fixed-rate schedules.

Each host (a PLC, or an RS485-to-TCP converter with several meters) gets its own task, so
a dead host never stalls another. On one host, requests are serialised as the bus
requires; a unit that stops answering costs its own timeout once per poll (the rest of
its blocks are skipped), so its neighbours keep their rate.

Errors are classified where they arise (pymodbus keeps the same distinction):
- transport failure or timeout: COMM_FAILURE; after `offline_after` in a row the device
  goes offline on its status topic, and online again at its next answer;
- an exception reply: the device is online but refused a block: DEVICE_ERROR;
- a value that decodes to nonsense: BAD_VALUE, that value left out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from facility.backoff import Backoff
from facility.messages import Availability, Quality, Scalar
from facility.service import check_cancelled
from facility.site import Device, ModbusEndpoint
from gateway.modbus.decode import decode_block
from gateway.modbus.registermap import Block, Plan

log = logging.getLogger(__name__)
T = TypeVar("T")

# Exception replies from an RS485-to-TCP converter meaning "the unit behind me is silent".
GATEWAY_NO_ANSWER = frozenset({ExcCodes.GATEWAY_PATH_UNAVIABLE, ExcCodes.GATEWAY_NO_RESPONSE})

# Worst first: a unit's quality is the worst thing that happened to one of its blocks.
_RANK = {Quality.COMM_FAILURE: 3, Quality.DEVICE_ERROR: 2, Quality.BAD_VALUE: 1,
         Quality.GOOD: 0}


@dataclass
class PollResult:
    """What one poll of one device produced, per unit (0 = the device itself)."""

    ts: int
    answered: bool  # the device said anything at all (values or an exception)
    values: dict[int, dict[str, Scalar]] = field(default_factory=dict)
    errors: dict[int, dict[str, str]] = field(default_factory=dict)
    quality: dict[int, Quality] = field(default_factory=dict)
    reason: str = ""

    def worsen(self, unit: int, quality: Quality) -> None:
        if _RANK[quality] > _RANK[self.quality.get(unit, Quality.GOOD)]:
            self.quality[unit] = quality


@dataclass
class PolledDevice:
    device: Device
    plan: Plan
    next_due: float = 0.0
    failures: int = 0
    availability: Availability | None = None
    polls: int = 0
    late_polls: int = 0

    @property
    def modbus(self) -> ModbusEndpoint:
        """The device's Modbus endpoint: a polled device always has one."""
        endpoint = self.device.modbus
        assert endpoint is not None, self.device.id
        return endpoint


class Sink:
    """Where poll results go; the gateway service implements it."""

    def poll_done(self, polled: PolledDevice, result: PollResult) -> None:
        raise NotImplementedError

    def decode(self, polled: PolledDevice, block: Block, data: Sequence[int] | Sequence[bool],
               result: PollResult) -> bool:
        """Decode one block into the result; False if decoding failed (the gateway
        quarantines the registers through its dead letters and goes on)."""
        decode_block(block, data, result.values, result.errors)
        return True

    def availability_changed(self, polled: PolledDevice, state: Availability, reason: str) -> None:
        raise NotImplementedError


class HostPoller:
    def __init__(self, host: str, port: int, devices: list[PolledDevice], sink: Sink,
                 *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.host = host
        self.port = port
        self.devices = devices
        self.sink = sink
        self.clock_ns = clock_ns
        timeout = max(d.device.modbus.timeout for d in devices if d.device.modbus)
        # pymodbus must not retry (a write retried blindly could act twice) nor reconnect
        # on its own: both are decided here, with the shared backoff.
        self.client = AsyncModbusTcpClient(
            host, port=port, timeout=timeout, retries=0, reconnect_delay=0,
            name=f"modbus {host}:{port}",
        )
        self.client.set_max_no_responses(1_000_000)  # a silent unit must not drop the link
        self.backoff = Backoff(initial=0.5, cap=30.0)
        self.lock = asyncio.Lock()  # commands share the connection with polls
        self._reconnect_at = 0.0
        self._unanswered = 0  # polls in a row that got nothing from any unit on this host

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, polled in enumerate(self.devices):
            # Spread first polls over the period so devices on a host do not burst.
            period = polled.modbus.period
            polled.next_due = start + period * i / max(1, len(self.devices))
        try:
            while True:
                polled = min(self.devices, key=lambda d: d.next_due)
                delay = polled.next_due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._schedule_next(polled, loop.time())
                async with self.lock:
                    result = await self.poll(polled)
                self._record(polled, result)
        finally:
            self.client.close()

    def _schedule_next(self, polled: PolledDevice, now: float) -> None:
        period = polled.modbus.period
        if polled.availability is Availability.OFFLINE:
            # Probe an offline unit less often: each probe costs its neighbours a timeout.
            polled.next_due = now + max(period, min(5.0, 10 * period))
            return
        polled.next_due += period
        if polled.next_due < now:  # fell more than a period behind: skip, do not burst
            polled.late_polls += 1
            polled.next_due = now + period

    async def ensure_connected(self) -> str:
        """'' if connected, else why not. Reconnects no faster than the backoff allows."""
        if self.client.connected:
            return ""
        now = asyncio.get_running_loop().time()
        if now < self._reconnect_at:
            return "not connected (waiting to reconnect)"
        if await self.client.connect():
            if self.backoff.attempts:
                log.info("modbus %s: connected again", self.name)
            self.backoff.reset()
            return ""
        self._reconnect_at = now + self.backoff.next_delay()
        if self.backoff.attempts == 1:
            log.warning("modbus %s: cannot connect; retrying with backoff", self.name)
        return "connection refused or unreachable"

    async def poll(self, polled: PolledDevice) -> PollResult:
        """Read every block of one device once. The caller holds `self.lock`."""
        endpoint = polled.device.modbus
        assert endpoint is not None
        result = PollResult(ts=self.clock_ns(), answered=False)
        reason = await self.ensure_connected()
        if reason:
            result.reason = reason
            result.quality[0] = Quality.COMM_FAILURE
            return result
        for index, block in enumerate(polled.plan.blocks):
            try:
                response = await self.call(self._read(block, endpoint.unit), endpoint.timeout)
            except (TimeoutError, ModbusException, ConnectionError, OSError) as exc:
                # No answer: the rest of this device's blocks would time out too.
                result.reason = f"no answer to {block.table} {block.start}+{block.count}: " \
                                f"{type(exc).__name__}"
                for later in polled.plan.blocks[index:]:
                    self._fail_block(result, later, "no answer", Quality.COMM_FAILURE)
                break
            if response.isError():
                code = getattr(response, "exception_code", 0)
                if code in GATEWAY_NO_ANSWER:
                    # The converter answered for a unit behind it that did not: no answer.
                    result.reason = f"gateway exception {code}: the unit did not respond"
                    for later in polled.plan.blocks[index:]:
                        self._fail_block(result, later, "no answer", Quality.COMM_FAILURE)
                    break
                result.answered = True
                self._fail_block(result, block, f"exception {code}", Quality.DEVICE_ERROR)
                continue
            result.answered = True
            data = response.bits[: block.count] if block.table in ("coil", "discrete") \
                else response.registers
            before = {u: len(e) for u, e in result.errors.items()}
            if not self.sink.decode(polled, block, data, result):
                for slot in block.fields:  # nothing half-decoded from a failed block
                    result.values.get(slot.unit, {}).pop(slot.name, None)
                self._fail_block(result, block, "decode failed (registers quarantined)",
                                 Quality.BAD_VALUE)
            for unit, errs in result.errors.items():
                if len(errs) > before.get(unit, 0):
                    result.worsen(unit, Quality.BAD_VALUE)
        if not result.answered:
            result.quality[0] = Quality.COMM_FAILURE
        return result

    async def call(self, request: Awaitable[T], timeout: float) -> T:
        """One Modbus request (polls and commands alike), bounded by `timeout`."""
        async with asyncio.timeout(timeout):
            reply = await request
            check_cancelled()  # pymodbus awaits with wait_for, which may swallow a cancel
        return reply

    def _read(self, block: Block, unit: int) -> Awaitable[ModbusPDU]:
        if block.table == "holding":
            return self.client.read_holding_registers(block.start, count=block.count,
                                                      device_id=unit)
        if block.table == "input":
            return self.client.read_input_registers(block.start, count=block.count,
                                                    device_id=unit)
        if block.table == "coil":
            return self.client.read_coils(block.start, count=block.count, device_id=unit)
        return self.client.read_discrete_inputs(block.start, count=block.count, device_id=unit)

    @staticmethod
    def _fail_block(result: PollResult, block: Block, why: str, quality: Quality) -> None:
        for slot in block.fields:
            result.errors.setdefault(slot.unit, {})[slot.name] = why
            result.worsen(slot.unit, quality)

    def _record(self, polled: PolledDevice, result: PollResult) -> None:
        polled.polls += 1
        self._unanswered = 0 if result.answered else self._unanswered + 1
        if self._unanswered >= max(3, len(self.devices)) and self.client.connected:
            # Nobody on this link answers: the TCP connection may be dead without a FIN.
            log.warning("modbus %s: no unit answers; reconnecting", self.name)
            self.client.close()
            self._unanswered = 0
        endpoint = polled.device.modbus
        assert endpoint is not None
        if result.answered:
            polled.failures = 0
            if polled.availability is not Availability.ONLINE:
                polled.availability = Availability.ONLINE
                self.sink.availability_changed(polled, Availability.ONLINE, "answering")
        else:
            polled.failures += 1
            if polled.failures >= endpoint.offline_after and \
                    polled.availability is not Availability.OFFLINE:
                polled.availability = Availability.OFFLINE
                why = f"{polled.failures} polls without an answer: {result.reason}"
                log.warning("modbus %s unit %d (%s) offline: %s", self.name, endpoint.unit,
                            polled.device.id, why)
                self.sink.availability_changed(polled, Availability.OFFLINE, why)
        self.sink.poll_done(polled, result)
