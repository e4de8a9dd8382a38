"""Simulated charge points that speak real OCPP 1.6J: the mobilityhouse library's
charge-point side over `websockets`, as a charger of the replacement batch would.

A `SimChargePoint` connects to `ws(s)://.../ocpp/{id}` with HTTP Basic credentials, boots,
reports its connectors' status, heartbeats at the interval the central system gave, sends
MeterValues every `meter_period` during a session, and answers the central system's
commands (remote start/stop, unlock, availability, reset, trigger, configuration). While
disconnected it queues its transaction messages (StartTransaction, MeterValues,
StopTransaction) like a real charger's offline queue, and sends them in order after it
reconnected. Faults (`fault()`/`clear()`) are StatusNotifications with an error code.

Depends on the core alone (facility.backoff); nothing here knows the central system.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import (
    Action,
    AvailabilityStatus,
    ChargePointErrorCode,
    ChargePointStatus,
    ConfigurationStatus,
    RemoteStartStopStatus,
    ResetStatus,
    TriggerMessageStatus,
    UnlockStatus,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from facility.backoff import Backoff

log = logging.getLogger(__name__)
_quiet = logging.getLogger("simulators.ocpp.library")
_quiet.setLevel(logging.CRITICAL)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


@dataclass
class Connector:
    id: int
    status: str = ChargePointStatus.available
    error_code: str = ChargePointErrorCode.no_error
    transaction_id: int | None = None
    meter_wh: int = 0
    power_w: float = 0.0
    soc: float = 20.0
    id_tag: str = ""


@dataclass
class Settings:
    url: str  # ws://127.0.0.1:8180/ocpp (the charge point id is appended)
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None
    meter_period: float = 10.0
    power_w: float = 7000.0
    meter_when_idle: bool = False  # clock-aligned meter values without a session too
    meter_phase: float = 0.0  # s after connecting before the first sample
    vendor: str = "PYGOV-SIM"
    model: str = "AC7-OCPP"


class _Client(ChargePoint):
    """The library's charge-point side; the answers to the central system's calls."""

    def __init__(self, owner: SimChargePoint, connection: ClientConnection) -> None:
        super().__init__(owner.id, connection, response_timeout=10, logger=_quiet)
        self.owner = owner

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag: str, connector_id: int | None = None,
                        **_: Any) -> call_result.RemoteStartTransaction:
        c = self.owner.connectors.get(connector_id or 1)
        if c is None or c.transaction_id is not None or c.status != "Available":
            return call_result.RemoteStartTransaction(status=RemoteStartStopStatus.rejected)
        self.owner.later(self.owner.start_session(c.id, id_tag))
        return call_result.RemoteStartTransaction(status=RemoteStartStopStatus.accepted)

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id: int) -> call_result.RemoteStopTransaction:
        c = next((c for c in self.owner.connectors.values()
                  if c.transaction_id == transaction_id), None)
        if c is None:
            return call_result.RemoteStopTransaction(status=RemoteStartStopStatus.rejected)
        self.owner.later(self.owner.stop_session(c.id, "Remote"))
        return call_result.RemoteStopTransaction(status=RemoteStartStopStatus.accepted)

    @on(Action.unlock_connector)
    def on_unlock(self, connector_id: int) -> call_result.UnlockConnector:
        if connector_id in self.owner.stuck:
            return call_result.UnlockConnector(status=UnlockStatus.unlock_failed)
        return call_result.UnlockConnector(status=UnlockStatus.unlocked)

    @on(Action.change_availability)
    def on_availability(self, connector_id: int, type: str) -> call_result.ChangeAvailability:
        status = "Available" if type == "Operative" else "Unavailable"
        ids = list(self.owner.connectors) if connector_id == 0 else [connector_id]
        if any(self.owner.connectors[i].transaction_id is not None for i in ids):
            return call_result.ChangeAvailability(status=AvailabilityStatus.scheduled)
        for i in ids:
            self.owner.later(self.owner.set_status(i, status))
        return call_result.ChangeAvailability(status=AvailabilityStatus.accepted)

    @on(Action.reset)
    def on_reset(self, type: str) -> call_result.Reset:
        self.owner.resets.append(type)
        return call_result.Reset(status=ResetStatus.accepted)

    @on(Action.trigger_message)
    def on_trigger(self, requested_message: str, connector_id: int | None = None
                   ) -> call_result.TriggerMessage:
        if requested_message == "StatusNotification":
            ids = [connector_id] if connector_id else list(self.owner.connectors)
            for i in ids:
                self.owner.later(self.owner.set_status(i, self.owner.connectors[i].status))
        elif requested_message == "Heartbeat":
            self.owner.later(self.owner.heartbeat())
        elif requested_message == "MeterValues":
            self.owner.later(self.owner.send_meter(connector_id or 1, "Trigger"))
        else:
            return call_result.TriggerMessage(status=TriggerMessageStatus.not_implemented)
        return call_result.TriggerMessage(status=TriggerMessageStatus.accepted)

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None
                             ) -> call_result.GetConfiguration:
        config = self.owner.configuration
        wanted = key or list(config)
        return call_result.GetConfiguration(
            configuration_key=[{"key": k, "readonly": False, "value": config[k]}
                               for k in wanted if k in config],
            unknown_key=[k for k in wanted if k not in config] or None)

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str) -> call_result.ChangeConfiguration:
        if key not in self.owner.configuration:
            return call_result.ChangeConfiguration(status=ConfigurationStatus.not_supported)
        self.owner.configuration[key] = value
        return call_result.ChangeConfiguration(status=ConfigurationStatus.accepted)


@dataclass
class _Queued:
    request: Any
    local: int | None = None  # StartTransaction: the local number its answer names


@dataclass
class SimChargePoint:
    id: str
    settings: Settings
    connector_count: int = 1
    connectors: dict[int, Connector] = field(default_factory=dict)
    configuration: dict[str, str] = field(default_factory=lambda: {
        "HeartbeatInterval": "60", "MeterValueSampleInterval": "10",
        "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import"})
    resets: list[str] = field(default_factory=list)
    stuck: set[int] = field(default_factory=set)  # connectors that will not unlock

    def __post_init__(self) -> None:
        self.connectors = {i: Connector(i) for i in range(1, self.connector_count + 1)}
        self.client: _Client | None = None
        self.queue: deque[_Queued] = deque()  # transaction messages waiting for the link
        self.heartbeat_interval = 60
        self.connected = asyncio.Event()
        self.booted = asyncio.Event()
        self.answers: list[Any] = []  # what the central system answered, in order
        self.sent_ids: dict[int, int] = {}  # local transaction number -> central id
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self.connects = 0
        self._local = 0  # local transaction numbers, until the central system gives ids
        self.refused: int | None = None  # the HTTP status of the last refused connect

    # --- the connection ---------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self.settings.password is None:
            return {}
        token = base64.b64encode(f"{self.id}:{self.settings.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def run(self) -> None:
        """Connect, boot, drain the offline queue, heartbeat and meter; reconnect forever."""
        backoff = Backoff(initial=0.1, cap=5.0)
        while True:
            try:
                async with connect(f"{self.settings.url}/{self.id}",
                                   subprotocols=["ocpp1.6"],  # type: ignore[list-item]  # websockets: Subprotocol is a NewType of str
                                   additional_headers=self._headers(),
                                   ssl=self.settings.ssl_context, open_timeout=5,
                                   ping_interval=None, close_timeout=1,
                                   compression=None) as ws:
                    backoff.reset()
                    await self._session(ws)
            except InvalidStatus as exc:
                self.refused = exc.response.status_code
                self._lost()
            except (OSError, ConnectionClosed, TimeoutError):
                self._lost()
            await asyncio.sleep(backoff.next_delay())

    def _lost(self) -> None:
        self.client = None
        self.connected.clear()
        self.booted.clear()

    async def _session(self, ws: ClientConnection) -> None:
        client = _Client(self, ws)
        self.client = client
        self.connects += 1
        reader = asyncio.create_task(client.start(), name=f"{self.id} reader")
        try:
            self.connected.set()
            boot = await client.call(call.BootNotification(
                charge_point_model=self.settings.model,
                charge_point_vendor=self.settings.vendor, firmware_version="1.0.0"))
            _still_cancelled()
            self.heartbeat_interval = int(boot.interval) or 60
            self.booted.set()
            for c in self.connectors.values():
                await self._call(call.StatusNotification(
                    connector_id=c.id, error_code=c.error_code, status=c.status,
                    timestamp=iso(time.time())))
            await self._drain()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._heartbeats(), name=f"{self.id} heartbeat")
                tg.create_task(self._meter_loop(), name=f"{self.id} meter")
                tg.create_task(self._drain_loop(), name=f"{self.id} queue")
                tg.create_task(_until(reader), name=f"{self.id} until closed")
        finally:
            reader.cancel()
            self._lost()
            # gather, not a suppressed `await reader`: a cancellation of this task that
            # lands here goes on out.
            await asyncio.gather(reader, return_exceptions=True)

    async def disconnect(self) -> None:
        """Drop the connection now (a network cut); run() reconnects."""
        if self.client is not None:
            await self.client._connection.close()

    async def _call(self, request: Any) -> Any:
        client = self.client
        if client is None:
            raise ConnectionError("not connected")
        answer = await client.call(request)
        _still_cancelled()
        self.answers.append(answer)
        return answer

    def later(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the offline queue: transaction messages in order ------------------------------

    def _enqueue(self, item: _Queued) -> None:
        self.queue.append(item)
        self._wake.set()

    async def _drain(self) -> None:
        while self.queue and self.booted.is_set():
            item = self.queue[0]
            request = item.request
            if isinstance(request, call.StopTransaction | call.MeterValues) \
                    and request.transaction_id is not None and request.transaction_id < 0:
                local = -request.transaction_id
                if local not in self.sent_ids:
                    break  # its StartTransaction has not been answered yet
                request.transaction_id = self.sent_ids[local]
            answer = await self._call(request)
            if item.local is not None and answer is not None:
                self.sent_ids[item.local] = answer.transaction_id
                for c in self.connectors.values():
                    if c.transaction_id == -item.local:
                        c.transaction_id = answer.transaction_id
            self.queue.popleft()

    async def _drain_loop(self) -> None:
        while True:
            self._wake.clear()
            await self._drain()
            await self._wake.wait()

    # --- what a charger does --------------------------------------------------------

    async def set_status(self, connector_id: int, status: str,
                         error_code: str = ChargePointErrorCode.no_error) -> None:
        c = self.connectors[connector_id]
        c.status, c.error_code = status, error_code
        if self.booted.is_set():
            with contextlib.suppress(ConnectionError, ConnectionClosed, TimeoutError):
                await self._call(call.StatusNotification(
                    connector_id=connector_id, error_code=error_code, status=status,
                    timestamp=iso(time.time())))

    async def fault(self, connector_id: int = 1,
                    error_code: str = ChargePointErrorCode.ground_failure) -> None:
        await self.set_status(connector_id, ChargePointStatus.faulted, error_code)

    async def clear(self, connector_id: int = 1) -> None:
        await self.set_status(connector_id, ChargePointStatus.available)

    async def start_session(self, connector_id: int, id_tag: str) -> None:
        """Plug in and start: the StartTransaction goes through the queue (and so waits
        for the link); until it is answered the session counts by a local number."""
        c = self.connectors[connector_id]
        self._local += 1
        local = self._local
        c.transaction_id = -local
        c.id_tag = id_tag
        c.power_w = self.settings.power_w
        await self.set_status(connector_id, ChargePointStatus.preparing)
        self._enqueue(_Queued(call.StartTransaction(
            connector_id=connector_id, id_tag=id_tag, meter_start=c.meter_wh,
            timestamp=iso(time.time())), local=local))
        await self.set_status(connector_id, ChargePointStatus.charging)

    async def stop_session(self, connector_id: int, reason: str = "Local") -> None:
        c = self.connectors[connector_id]
        if c.transaction_id is None:
            return
        self._enqueue(_Queued(call.StopTransaction(
            meter_stop=c.meter_wh, timestamp=iso(time.time()),
            transaction_id=c.transaction_id, reason=reason, id_tag=c.id_tag or None,
            transaction_data=[self._meter_value(c, "Transaction.End")])))
        c.transaction_id, c.power_w = None, 0.0
        await self.set_status(connector_id, ChargePointStatus.finishing)
        await self.set_status(connector_id, ChargePointStatus.available)

    def advance(self, connector_id: int, seconds: float | None = None) -> None:
        """The energy register moves with the power, in whole Wh."""
        c = self.connectors[connector_id]
        dt = self.settings.meter_period if seconds is None else seconds
        c.meter_wh += round(c.power_w * dt / 3600)
        if c.power_w:
            c.soc = min(100.0, c.soc + 0.5)

    def _meter_value(self, c: Connector, context: str = "Sample.Periodic") -> dict[str, Any]:
        sampled: list[dict[str, Any]] = [
            {"value": str(c.meter_wh), "context": context,
             "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": f"{c.power_w:.1f}", "context": context,
             "measurand": "Power.Active.Import", "unit": "W"}]
        if c.power_w:
            amps = c.power_w / 230
            sampled += [{"value": f"{amps:.2f}", "context": context,
                         "measurand": "Current.Import", "unit": "A", "phase": "L1"},
                        {"value": "230.1", "context": context, "measurand": "Voltage",
                         "unit": "V", "phase": "L1-N"},
                        {"value": "41.5", "context": context, "measurand": "Temperature",
                         "unit": "Celsius", "location": "Outlet"},
                        {"value": f"{c.soc:.0f}", "context": context, "measurand": "SoC",
                         "unit": "Percent", "location": "EV"}]
        return {"timestamp": iso(time.time()), "sampledValue": sampled}

    async def send_meter(self, connector_id: int, context: str = "Sample.Periodic") -> None:
        c = self.connectors[connector_id]
        self._enqueue(_Queued(call.MeterValues(
            connector_id=connector_id, transaction_id=c.transaction_id,
            meter_value=[self._meter_value(c, context)])))

    async def heartbeat(self) -> None:
        with contextlib.suppress(ConnectionError, ConnectionClosed, TimeoutError):
            await self._call(call.Heartbeat())

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self.heartbeat()

    async def _meter_loop(self) -> None:
        if self.settings.meter_phase:  # chargers started at different moments
            await asyncio.sleep(self.settings.meter_phase % self.settings.meter_period)
        while True:
            await asyncio.sleep(self.settings.meter_period)
            for c in self.connectors.values():
                if c.transaction_id is not None:
                    self.advance(c.id)
                    await self.send_meter(c.id)
                elif self.settings.meter_when_idle:
                    await self.send_meter(c.id, "Sample.Clock")

    async def meter_while_offline(self, connector_id: int, samples: int) -> None:
        """Queue `samples` periodic meter values as if the link were down that long."""
        for _ in range(samples):
            self.advance(connector_id)
            await self.send_meter(connector_id)


def _still_cancelled() -> None:
    """Raise a cancellation that the ocpp library's call swallowed: Python 3.11's
    asyncio.wait_for loses one that lands as the answer arrives (CPython gh-86296, fixed
    in 3.12). The request stays counted on the task, so it is seen here; without this a
    stopping fleet waited forever for a heartbeat loop that had eaten its cancel (CI hung
    120 s in test_demo_wiring_brings_the_simulated_chargers_online)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _until(reader: asyncio.Task[Any]) -> None:
    """Wait for the reader (the connection); its end ends the session."""
    with contextlib.suppress(ConnectionClosed):
        await reader
    raise ConnectionError("connection closed")


@dataclass
class Fleet:
    """Many simulated charge points as one service for `facility up` and the benchmark."""

    points: list[SimChargePoint]
    session_every: float = 0.0  # s between session starts across the fleet (0: none)
    session_length: float = 1800.0  # s a session lasts
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Fleet:
        self.tasks = [asyncio.create_task(p.run(), name=f"ocpp sim {p.id}")
                      for p in self.points]
        if self.session_every > 0:
            self.tasks.append(asyncio.create_task(
                self.sessions(self.session_every, self.session_length), name="ocpp sessions"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for point in self.points:
            for task in list(point._tasks):
                task.cancel()
            await asyncio.gather(*point._tasks, return_exceptions=True)

    async def sessions(self, every: float, stop_after: float) -> None:
        """Start a session on the next free connector every `every` s; each stops after
        `stop_after` s (the demo's campus day, compressed)."""
        n = 0
        while True:
            await asyncio.sleep(every)
            point = self.points[n % len(self.points)]
            n += 1
            c = next((c for c in point.connectors.values() if c.transaction_id is None
                      and c.status == "Available"), None)
            if c is None or not point.booted.is_set():
                continue
            await point.start_session(c.id, "PYGOV-STAFF-0001")
            point.later(_stop_later(point, c.id, stop_after))


async def _stop_later(point: SimChargePoint, connector_id: int, after: float) -> None:
    await asyncio.sleep(after)
    await point.stop_session(connector_id)
