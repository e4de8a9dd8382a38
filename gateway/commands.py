"""Commands to Modbus devices that move things (the bollards): at most once, confirmed.

A command is executed only if it is still valid and its id was never seen before (ids are
kept on disk, so a redelivered or replayed command does nothing after a restart too).
The write goes through the device's sequence-numbered command registers; if the reply to
the write is lost, the gateway does not write again but reads back which sequence the
device acted on. Success is what the feedback registers show, not the write's reply.
Every step is reported on the command-result topic: accepted, then done, refused,
failed, timed out, expired or duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from pymodbus.exceptions import ModbusException

from facility import sqlite
from facility.deadletters import describe, last_frame
from facility.messages import Command, CommandResult, CommandStatus, Family, Scalar
from facility.modbusmaps import CommandAction, CommandSpec
from gateway.modbus.poller import HostPoller, PolledDevice

log = logging.getLogger(__name__)


class CommandLog:
    """Command ids already taken, with their outcome; SQLite, survives restarts."""

    def __init__(self, path: Path) -> None:
        # FULL: a command id taken must survive a power cut too (not executed twice).
        self.db = sqlite.open_file(path, extra=("synchronous=FULL",))
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, device TEXT NOT NULL, "
            "action TEXT NOT NULL, received_ns INTEGER NOT NULL, status TEXT NOT NULL, "
            "detail TEXT NOT NULL DEFAULT '')")

    def claim(self, command: Command, now_ns: int) -> tuple[str, str] | None:
        """Record the id as taken; return the earlier (status, detail) if it was already."""
        try:
            with self.db:
                self.db.execute("INSERT INTO commands (id, device, action, received_ns, status) "
                                "VALUES (?, ?, ?, ?, 'received')",
                                (command.id, command.device, command.action, now_ns))
            return None
        except sqlite3.IntegrityError:
            row = self.db.execute("SELECT status, detail FROM commands WHERE id = ?",
                                  (command.id,)).fetchone()
            return (row[0], row[1]) if row else ("received", "")

    def finish(self, command_id: str, status: CommandStatus, detail: str) -> None:
        with self.db:
            self.db.execute("UPDATE commands SET status = ?, detail = ? WHERE id = ?",
                            (status.value, detail, command_id))

    def close(self) -> None:
        self.db.close()


class CommandExecutor:
    """Executes commands for one controller (and its units) on its poller's connection."""

    def __init__(self, poller: HostPoller, polled: PolledDevice, spec: CommandSpec,
                 history: CommandLog, report: Callable[[CommandResult], None],
                 *, clock_ns: Callable[[], int] = time.time_ns, feedback_every: float = 0.2):
        self.poller = poller
        self.polled = polled
        self.spec = spec
        self.history = history
        self.report = report
        self.clock_ns = clock_ns
        self.feedback_every = feedback_every
        device = polled.device
        self.unit_numbers = {uid: n for n, uid in enumerate(device.unit_ids(), start=1)}
        self.device_ids = {device.id, *self.unit_numbers}
        self._one_at_a_time = asyncio.Lock()

    def handles(self, device_id: str) -> bool:
        return device_id in self.device_ids

    def commandable(self) -> list[tuple[str, Family]]:
        """(device id, family) of the controller and each of its units."""
        device = self.polled.device
        units = [(uid, device.units.family) for uid in self.unit_numbers] if device.units else []
        return [(device.id, device.family), *units]

    async def execute(self, command: Command) -> CommandStatus:
        try:
            status, detail = await self._execute(command)
        except Exception as exc:  # a bug met on this command: the operator gets an answer
            log.exception("command %s: failed unexpectedly", command.id)
            status, detail = CommandStatus.FAILED, \
                f"internal error: {describe(exc)} (at {last_frame(exc)}); not repeated"
        if status is not CommandStatus.DUPLICATE:
            self.history.finish(command.id, status, detail)
        self._result(command, status, detail)
        log.info("command %s %s %s by %s: %s %s", command.id, command.action, command.device,
                 command.issued_by, status.value, detail)
        return status

    async def _execute(self, command: Command) -> tuple[CommandStatus, str]:
        now = self.clock_ns()
        earlier = self.history.claim(command, now)
        if earlier is not None:
            return CommandStatus.DUPLICATE, f"already taken: {earlier[0]} {earlier[1]}".strip()
        if now > command.expires_at:
            late = (now - command.expires_at) / 1e9
            return CommandStatus.EXPIRED, f"arrived {late:.1f}s after it expired"
        action = self.spec.actions.get(command.action)
        if action is None:
            return CommandStatus.REFUSED, f"unknown action {command.action!r} " \
                                          f"(known: {', '.join(sorted(self.spec.actions))})"
        unit = self.unit_numbers.get(command.device, 0)
        if (action.scope == "unit") != bool(unit):
            where = "one bollard" if action.scope == "unit" else "the controller"
            return CommandStatus.REFUSED, f"{command.action} is addressed to {where}"
        async with self._one_at_a_time:
            return await self._run(command, action, unit)

    async def _run(self, command: Command, action: CommandAction,
                   unit: int) -> tuple[CommandStatus, str]:
        regs = self.spec.registers
        unit_id = self.polled.modbus.unit
        client = self.poller.client
        async with self.poller.lock:
            why = await self.poller.ensure_connected()
            if why:
                return CommandStatus.FAILED, f"controller not reachable: {why}"
            try:
                before = await self._read_words(regs.ack_seq, 2, unit_id)
            except _NoAnswer as exc:
                return CommandStatus.FAILED, f"controller did not answer: {exc}"
            seq = before[0] % 65535 + 1  # 1..65535, never the one it acted on last
            try:
                reply = await self.poller.call(client.write_registers(
                    regs.code, [action.code, unit, seq], device_id=unit_id), self._timeout)
                if reply.isError():
                    return CommandStatus.FAILED, f"write refused: exception " \
                                                 f"{getattr(reply, 'exception_code', '?')}"
            except (TimeoutError, ModbusException, OSError) as exc:
                # The reply is lost, not necessarily the write: read back, never rewrite.
                log.warning("command %s: no reply to the write (%s); reading back", command.id,
                            type(exc).__name__)
            ack = await self._await_ack(seq, unit_id)
        if ack is None:
            return CommandStatus.FAILED, "the controller did not act on the write " \
                                         "(no acknowledgement of its sequence); not repeated"
        if ack not in self.spec.accepted:
            return CommandStatus.REFUSED, self.spec.results.get(ack, f"result code {ack}")
        self._result(command, CommandStatus.ACCEPTED, f"sequence {seq}")
        return await self._feedback(action, unit)

    @property
    def _timeout(self) -> float:
        return self.polled.modbus.timeout

    async def _read_words(self, address: int, count: int, unit_id: int) -> list[int]:
        try:
            reply = await self.poller.call(self.poller.client.read_holding_registers(
                address, count=count, device_id=unit_id), self._timeout)
        except (TimeoutError, ModbusException, OSError) as exc:
            raise _NoAnswer(type(exc).__name__) from None
        if reply.isError():
            raise _NoAnswer(f"exception {getattr(reply, 'exception_code', '?')}")
        return list(reply.registers)

    async def _await_ack(self, seq: int, unit_id: int) -> int | None:
        """The result code once the controller acknowledges `seq`; None if it never does."""
        regs = self.spec.registers
        deadline = asyncio.get_running_loop().time() + max(2.0, 3 * self._timeout)
        while asyncio.get_running_loop().time() < deadline:
            try:
                ack_seq, result = await self._read_words(regs.ack_seq, 2, unit_id)
            except _NoAnswer:
                continue
            if ack_seq == seq:
                return result
            await asyncio.sleep(0.05)
        return None

    async def _feedback(self, action: CommandAction, unit: int) -> tuple[CommandStatus, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + action.timeout
        last = ""
        while loop.time() < deadline:
            async with self.poller.lock:
                result = await self.poller.poll(self.polled)
            if result.answered:
                units = self._units_in_scope(action, unit)
                failed = [n for n in units if action.fail_when
                          and _matches(result.values.get(n, {}), action.fail_when)]
                if failed:
                    codes = ", ".join(f"{self._name(n)}: "
                                      f"{result.values.get(n, {}).get('fault_code', '?')}"
                                      for n in failed)
                    return CommandStatus.FAILED, f"fault: {codes}"
                pending = [n for n in units
                           if not _matches(result.values.get(n, {}), action.done_when)]
                if not pending:
                    return CommandStatus.DONE, "confirmed by the feedback registers"
                last = f"{len(pending)} not yet there (e.g. {self._name(pending[0])})"
            await asyncio.sleep(self.feedback_every)
        return CommandStatus.TIMED_OUT, f"not confirmed within {action.timeout:g}s: {last}"

    def _units_in_scope(self, action: CommandAction, unit: int) -> list[int]:
        if action.scope == "unit":
            return [unit]
        if action.scope == "all":
            return list(self.unit_numbers.values())
        return [0]

    def _name(self, n: int) -> str:
        return self.polled.device.id if n == 0 else self.polled.device.unit_ids()[n - 1]

    def _result(self, command: Command, status: CommandStatus, detail: str) -> None:
        device = self.polled.device
        family = device.units.family if command.device in self.unit_numbers and device.units \
            else device.family
        self.report(CommandResult(id=command.id, site=command.site, family=family,
                                  device=command.device, ts=self.clock_ns(), status=status,
                                  detail=detail))


class _NoAnswer(Exception):
    pass


def _matches(values: dict[str, Scalar], wanted: dict[str, str | int | float | bool]) -> bool:
    return all(values.get(k) == v for k, v in wanted.items())
