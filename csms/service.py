"""The OCPP 1.6J central system: `async with CentralSystem(settings, site) as csms:`.

Charge points of the site file's OCPP gateway connect on `ws(s)://HOST:PORT/ocpp/{id}`
with the `ocpp1.6` subprotocol. Each connection is one `ocpp.v16.ChargePoint` of the
mobilityhouse library (`OcppSession`): the library frames, validates against the OCPP
schemas and routes; the handlers here turn what a charge point says into canonical
messages (family `ev_charger`) through the outbox, like a gateway. Commands arrive on
`command/ev_charger/{device}` and are executed as OCPP calls, at most once per id, with
the charge point's answer (or a timeout) as the command result.

- Security profile 1: HTTP Basic, user = the charge point id of the path, password checked
  against its Argon2id hash; profile 2: the same over TLS. A charge point cannot speak for
  another's id: the path, the user and the session are one. Unknown ids are refused (404)
  and counted.
- Every frame is total: a frame that is not OCPP, fails the schema or meets a bug is
  answered with a CALLERROR and becomes a dead letter (`deadletter/csms`); the connection
  and the other charge points go on.
- A charge point is offline (retained DeviceStatus) as soon as its connection closes, and
  a silent one is closed by the WebSocket keep-alive within its heartbeat interval.
- Transactions are kept (csms/store.py): a StartTransaction or StopTransaction sent again
  after an outage gets the same transaction id and is published once; meter values carry
  the charge point's own timestamps, so a queued sample lands at its time, once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import http
import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import msgspec
from ocpp.exceptions import (
    InternalError,
    OCPPError,
    PropertyConstraintViolationError,
)
from ocpp.messages import CallError, MessageType, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    AvailabilityType,
    DataTransferStatus,
    MessageTrigger,
    RegistrationStatus,
    ResetType,
)
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from csms import meter
from csms.config import ChargePointSpec, OcppConfig, load_ocpp, verify_password
from csms.store import CsmsStore, Transaction
from facility import messages as m
from facility import topics
from facility.configfile import ConfigError
from facility.deadletters import DeadLetters, Letter
from facility.messages import Availability, CommandStatus, DeviceStatus, Family, Reading
from facility.metrics import Metrics
from facility.mqtt import Connection, MqttError, Will, run_connected, until_lost
from facility.mqttlink import connector
from facility.outbox import Outbox
from facility.service import Service
from facility.settings import Settings
from facility.site import SiteConfig, site_for

log = logging.getLogger(__name__)
# The library logs every frame at INFO and every refused one with a traceback; here each
# refusal is a counted dead letter instead (a bug's traceback is logged once per place).
_library_log = logging.getLogger("csms.ocpp")
_library_log.setLevel(logging.CRITICAL)

SUBPROTOCOL = Subprotocol("ocpp1.6")
PATH_PREFIX = "/ocpp/"
NS = 1_000_000_000
T = TypeVar("T")

# OCPP ChargePointStatus -> the canonical word (the evcp vendor mapping's, facility.labels)
STATUS = {"Available": "available", "Preparing": "preparing", "Charging": "charging",
          "SuspendedEVSE": "suspended_evse", "SuspendedEV": "suspended_ev",
          "Finishing": "finishing", "Reserved": "reserved", "Unavailable": "unavailable",
          "Faulted": "faulted"}
# A charge point's own status is its worst connector's (connector 0 is the whole point).
STATUS_ORDER = ["faulted", "charging", "suspended_ev", "suspended_evse", "finishing",
                "preparing", "reserved", "unavailable", "available"]

# Command actions (Command.action) and the OCPP call each becomes.
ACTIONS = ("remote_start_transaction", "remote_stop_transaction", "unlock_connector",
           "change_availability", "reset", "trigger_message", "get_configuration",
           "change_configuration")
DONE_ANSWERS = {"Accepted", "Unlocked", "Scheduled", "RebootRequired"}
FAILED_ANSWERS = {"UnlockFailed"}


class CommandRefused(ValueError):
    """A command whose parameters do not make an OCPP call (refused before sending)."""


def now_iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class OcppSession(ChargePoint):
    """One charge point's connection: the library's central-system side, our handlers."""

    def __init__(self, spec: ChargePointSpec, connection: ServerConnection,
                 csms: CentralSystem) -> None:
        super().__init__(spec.id, connection, response_timeout=csms.settings.ocpp.call_timeout,
                         logger=_library_log)
        self.spec = spec
        self.csms = csms
        self.connectors: dict[int, str] = {}
        self.last_status = ""
        self.booted = False

    # --- framing: every frame answered, none fatal ---------------------------------------

    async def route_message(self, raw_msg: str | bytes) -> None:
        try:
            msg = unpack(raw_msg)
        except OCPPError as exc:
            self.csms.bad_frame(self, raw_msg, exc)
            await self._send(CallError(_unique_id(raw_msg), exc.code, exc.description,
                                       {}).to_json())
            return
        if msg.message_type_id == MessageType.Call:
            try:
                await self._handle_call(msg)
            except OCPPError as exc:  # no handler, or the schema refused it
                self.csms.bad_frame(self, raw_msg, exc)
                await self._send(msg.create_call_error(exc).to_json())
            except ConnectionClosed:
                raise  # the connection's end, not the frame's fault: start() ends with it
            except Exception as exc:  # a bug outside the handlers: the frame, not the link
                letter = self.csms.letters.quarantine(self.origin(msg.action),
                                                      _raw(raw_msg), exc)
                self.csms.send_letter(letter)
                await self._send(msg.create_call_error(InternalError()).to_json())
        elif msg.message_type_id in (MessageType.CallResult, MessageType.CallError):
            self._response_queue.put_nowait(msg)

    def origin(self, action: str) -> str:
        return f"ocpp/{self.id}/{action}"

    def guard(self, action: str, payload: dict[str, Any], body: Callable[[], T]) -> T:
        """Run a handler's body through the dead letters; a failure is a CALLERROR."""
        out = self.csms.letters.run(body, self.origin(action),
                                    lambda: json.dumps(payload, default=str).encode())
        if isinstance(out, Letter):
            self.csms.send_letter(out)
            if out.kind == "refused":
                raise PropertyConstraintViolationError(description=out.text[:200])
            raise InternalError(description="the central system failed on this message")
        return out

    # --- charge point to central system -------------------------------------------------

    @on(Action.boot_notification)
    def on_boot(self, charge_point_vendor: str, charge_point_model: str,
                **kwargs: Any) -> call_result.BootNotification:
        def body() -> call_result.BootNotification:
            ts = self.csms.clock_ns()
            self.booted = True
            self.csms.set_status(self.spec, Availability.ONLINE, "boot")
            attrs: dict[str, m.Scalar] = {"vendor": charge_point_vendor[:64],
                                          "model": charge_point_model[:64]}
            for key in ("firmware_version", "charge_point_serial_number", "meter_type"):
                if isinstance(kwargs.get(key), str):
                    attrs[key] = kwargs[key][:64]
            self.csms.event(self.spec, ts, f"boot-{ts}", "boot", attrs)
            return call_result.BootNotification(
                current_time=now_iso(ts), interval=self.csms.settings.ocpp.heartbeat_interval,
                status=RegistrationStatus.accepted)
        return self.guard("BootNotification", kwargs, body)

    @on(Action.heartbeat)
    def on_heartbeat(self) -> call_result.Heartbeat:
        def body() -> call_result.Heartbeat:
            ts = self.csms.clock_ns()
            if self.connectors:  # alive, in the data too: an idle charger is not silent
                self.csms.reading(self.spec, ts, {"status": self.overall()})
            return call_result.Heartbeat(current_time=now_iso(ts))
        return self.guard("Heartbeat", {}, body)

    @on(Action.status_notification)
    def on_status(self, connector_id: int, error_code: str, status: str,
                  **kwargs: Any) -> call_result.StatusNotification:
        def body() -> call_result.StatusNotification:
            ts, clock = meter.plausible_time(kwargs["timestamp"], self.csms.clock_ns()) \
                if "timestamp" in kwargs else (self.csms.clock_ns(), "")
            if connector_id > self.spec.connectors:
                raise meter.OcppValueError(f"connector {connector_id} is not one of the "
                                           f"{self.spec.connectors} of {self.id}")
            word = STATUS[status]
            self.connectors[connector_id] = word
            overall = self.overall()
            values: dict[str, m.Scalar] = {
                "status": overall, "connector": connector_id, "connector_status": word,
                "error_code": error_code}
            for key in ("vendor_error_code", "info"):
                if isinstance(kwargs.get(key), str) and kwargs[key]:
                    values[key] = kwargs[key]
            self.csms.reading(self.spec, ts, values, errors={"timestamp": clock} if clock else None)
            self.csms.event(self.spec, ts, f"st-{connector_id}-{ts}", "status_change",
                            {"connector": connector_id, "status": word,
                             "error_code": error_code, "overall": overall,
                             "previous": self.last_status or "unknown"})
            self.last_status = overall
            return call_result.StatusNotification()
        return self.guard("StatusNotification", {"connector_id": connector_id,
                                                 "error_code": error_code, "status": status,
                                                 **kwargs}, body)

    def overall(self) -> str:
        words = set(self.connectors.values())
        return next((w for w in STATUS_ORDER if w in words), "available")

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[dict[str, Any]],
                        transaction_id: int | None = None) -> call_result.MeterValues:
        def body() -> call_result.MeterValues:
            tx = self.csms.store.get(self.id, transaction_id) \
                if transaction_id is not None else None
            self.csms.meter_values(self.spec, connector_id, meter_value, transaction_id, tx)
            return call_result.MeterValues()
        return self.guard("MeterValues", {"connector_id": connector_id,
                                          "meter_value": meter_value,
                                          "transaction_id": transaction_id}, body)

    @on(Action.authorize)
    def on_authorize(self, id_tag: str) -> call_result.Authorize:
        return self.guard("Authorize", {"id_tag": id_tag}, lambda: call_result.Authorize(
            id_tag_info=self.csms.id_tag_info(id_tag)))

    @on(Action.start_transaction)
    def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str,
                 **kwargs: Any) -> call_result.StartTransaction:
        def body() -> call_result.StartTransaction:
            ts, _ = meter.plausible_time(timestamp, self.csms.clock_ns())
            info = self.csms.id_tag_info(id_tag)
            tx, new = self.csms.store.start(self.id, connector_id, id_tag, meter_start,
                                            timestamp)
            if new:
                self.csms.event(self.spec, ts, f"tx{tx.id}-start", "transaction_started",
                                {"transaction_id": tx.id, "connector": connector_id,
                                 "meter_start": meter_start,
                                 "authorized": info.status == AuthorizationStatus.accepted})
            else:
                self.csms.m_duplicates.labels("StartTransaction").inc()
            return call_result.StartTransaction(transaction_id=tx.id, id_tag_info=info)
        return self.guard("StartTransaction", {"connector_id": connector_id,
                                               "meter_start": meter_start,
                                               "timestamp": timestamp}, body)

    @on(Action.stop_transaction)
    def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int,
                **kwargs: Any) -> call_result.StopTransaction:
        def body() -> call_result.StopTransaction:
            ts, _ = meter.plausible_time(timestamp, self.csms.clock_ns())
            reason = str(kwargs.get("reason") or "Local")
            known = self.csms.store.get(self.id, transaction_id)
            connector_id = known.connector if known else 0
            for data in kwargs.get("transaction_data") or []:
                self.csms.meter_values(self.spec, connector_id, [data], transaction_id, known)
            tx, new = self.csms.store.stop(self.id, transaction_id, meter_stop, timestamp,
                                           reason)
            if new and tx is not None:
                self.csms.event(self.spec, ts, f"tx{tx.id}-stop", "transaction_stopped",
                                {"transaction_id": tx.id, "connector": tx.connector,
                                 "meter_start": tx.meter_start, "meter_stop": meter_stop,
                                 "energy_wh": meter_stop - tx.meter_start,
                                 "session_energy": meter.wh(meter_stop - tx.meter_start),
                                 "duration_s": (ts - meter.parse_time(tx.started)) // NS,
                                 "reason": reason})
            elif tx is None:
                self.csms.event(self.spec, ts, f"tx{transaction_id}-stop",
                                "transaction_stopped",
                                {"transaction_id": transaction_id, "meter_stop": meter_stop,
                                 "reason": reason, "unknown_transaction": True})
            else:
                self.csms.m_duplicates.labels("StopTransaction").inc()
            id_tag = kwargs.get("id_tag")
            return call_result.StopTransaction(
                id_tag_info=self.csms.id_tag_info(id_tag) if isinstance(id_tag, str) else None)
        return self.guard("StopTransaction", {"transaction_id": transaction_id,
                                              "meter_stop": meter_stop,
                                              "timestamp": timestamp}, body)

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **kwargs: Any) -> call_result.DataTransfer:
        def body() -> call_result.DataTransfer:
            message_id = str(kwargs.get("message_id") or "")
            data = str(kwargs.get("data") or "")
            log.info("%s: DataTransfer from vendor %r, message %r, %d characters of data",
                     self.id, vendor_id[:64], message_id[:64], len(data))
            ts = self.csms.clock_ns()
            self.csms.event(self.spec, ts, f"dt-{ts}", "data_transfer",
                            {"vendor_id": vendor_id[:255], "message_id": message_id[:50]},
                            text=data[:1000])
            return call_result.DataTransfer(status=DataTransferStatus.accepted)
        return self.guard("DataTransfer", {"vendor_id": vendor_id, **kwargs}, body)

    @on(Action.firmware_status_notification)
    def on_firmware(self, status: str) -> call_result.FirmwareStatusNotification:
        def body() -> call_result.FirmwareStatusNotification:
            ts = self.csms.clock_ns()
            self.csms.event(self.spec, ts, f"fw-{ts}", "firmware_status", {"status": status})
            return call_result.FirmwareStatusNotification()
        return self.guard("FirmwareStatusNotification", {"status": status}, body)

    @on(Action.diagnostics_status_notification)
    def on_diagnostics(self, status: str) -> call_result.DiagnosticsStatusNotification:
        def body() -> call_result.DiagnosticsStatusNotification:
            ts = self.csms.clock_ns()
            self.csms.event(self.spec, ts, f"diag-{ts}", "diagnostics_status",
                            {"status": status})
            return call_result.DiagnosticsStatusNotification()
        return self.guard("DiagnosticsStatusNotification", {"status": status}, body)


def _unique_id(raw: str | bytes) -> str:
    """The unique id of a frame that could not be unpacked, if it has one; else '-1'."""
    with contextlib.suppress(ValueError, TypeError, IndexError, KeyError):
        frame = json.loads(raw)
        if isinstance(frame, list) and isinstance(frame[1], str) and len(frame[1]) <= 36:
            return frame[1]
    return "-1"


def _raw(raw: str | bytes) -> bytes:
    return raw.encode("utf-8", "replace") if isinstance(raw, str) else raw


class CentralSystem(Service):
    def __init__(self, settings: Settings, site: SiteConfig, *,
                 credentials: dict[str, str] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__()
        self.settings = settings
        site_id = settings.ocpp.site or site.site.id
        self.site = site_for(site, site_id)
        self.site_id = site_id
        self.clock_ns = clock_ns
        self.config: OcppConfig = load_ocpp(settings.resolve(settings.ocpp.config_file),
                                            self.site, settings.ocpp.gateway or None,
                                            credentials)
        self.gateway_id = self.config.gateway
        self.name = f"csms {self.gateway_id}"
        self.client_id = settings.ocpp.client_id or \
            f"{settings.mqtt.client_prefix}-csms-{site_id}"
        if settings.ocpp.security_profile == 2 and not (settings.ocpp.tls_cert
                                                        and settings.ocpp.tls_key):
            raise ConfigError("ocpp.security_profile 2 needs ocpp.tls_cert and ocpp.tls_key")
        self.sessions: dict[str, OcppSession] = {}
        self.status: dict[str, DeviceStatus] = {}
        self._status_dirty: set[str] = set()
        self._status_wake = asyncio.Event()
        self.outbox: Outbox | None = None
        self._store: CsmsStore | None = None
        self._link: Connection | None = None
        self._commands: set[asyncio.Task[None]] = set()
        self.port = settings.ocpp.port
        self.seq = 0
        self.refused: dict[str, int] = {}  # why a connection was refused -> count
        self.metrics = Metrics("csms")
        self.letters = DeadLetters("csms", site_id, metrics=self.metrics, clock_ns=clock_ns)
        self.m_refused = self.metrics.counter("connections_refused_total",
                                              "WebSocket connections refused", ("reason",))
        self.m_frames = self.metrics.counter("frames_total", "OCPP calls handled", ("action",))
        self.m_duplicates = self.metrics.counter(
            "duplicates_total", "Transactions sent again (answered, counted once)", ("action",))
        self.m_connected = self.metrics.gauge("charge_points_connected",
                                              "Charge points with an open connection")
        self.m_commands = self.metrics.counter("commands_total", "Commands by outcome",
                                               ("action", "status"))
        self.m_sample_age = self.metrics.histogram(
            "meter_sample_age_seconds", "From a MeterValues sample's own time to its reading "
            "queued for the broker (a charger's offline queue shows here too)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0))
        self._server_up = False
        self._link_up = False
        self._key = secrets.token_bytes(32)  # keys the proven-password digests
        self._proven: dict[str, tuple[str, bytes]] = {}

    @property
    def store(self) -> CsmsStore:
        assert self._store is not None, "use inside 'async with'"
        return self._store

    # --- life cycle -----------------------------------------------------------------

    async def open(self) -> None:
        folder = self.settings.resolve(self.settings.spool.dir) / "csms"
        self.outbox = Outbox(folder / f"outbox-{self.site_id}.sqlite",
                             memory_limit=self.settings.spool.memory_limit,
                             window=self.settings.spool.publish_window)
        self._store = CsmsStore(folder / f"state-{self.site_id}.sqlite")
        for spec in self.config.charge_points.values():
            self.set_status(spec, Availability.OFFLINE, "not connected")

    async def close(self) -> None:
        for task in list(self._commands):
            task.cancel()
        await asyncio.gather(*self._commands, return_exceptions=True)
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        if self._store is not None:
            self._store.close()
            self._store = None

    async def run(self) -> None:
        mqtt = self.settings.mqtt
        will = Will(topics.status(self.site_id, Family.GATEWAY, self.gateway_id),
                    m.encode(self._gateway_status(Availability.OFFLINE, "connection lost")))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_connected(mqtt, connector(mqtt, self.client_id,
                                                         session_expiry=24 * 3600, will=will),
                                         self._session, name=self.name,
                                         on_disconnect=self._disconnected),
                           name=f"{self.name} mqtt")
            tg.create_task(self._serve(), name=f"{self.name} websocket")

    def _ready(self) -> None:
        if self._server_up and self._link_up:
            self.ready.set()

    def _tls(self) -> ssl.SSLContext | None:
        o = self.settings.ocpp
        if o.security_profile < 2:
            return None
        assert o.tls_cert is not None
        assert o.tls_key is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.resolve(o.tls_cert),
                                self.settings.resolve(o.tls_key))
        return context

    async def _serve(self) -> None:
        o = self.settings.ocpp
        # A silent connection: a ping after a third of the interval, a third to answer
        # it, a third for the closing handshake; then it is closed and the charger offline.
        third = o.heartbeat_interval / 3
        async with serve(self._handler, o.host, o.port, subprotocols=[SUBPROTOCOL],
                         process_request=self._authorise, ssl=self._tls(),
                         ping_interval=third, ping_timeout=third, close_timeout=third,
                         compression=None,
                         logger=_library_log) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            log.info("%s: charge points connect on %s://%s:%d%s{id}", self.name,
                     "wss" if o.security_profile == 2 else "ws", o.host, self.port,
                     PATH_PREFIX)
            self._server_up = True
            self._ready()
            try:
                await server.serve_forever()
            finally:
                self._server_up = False

    # --- connections ------------------------------------------------------------------

    def _refuse(self, connection: ServerConnection, status: http.HTTPStatus, reason: str,
                text: str) -> Response:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.m_refused.labels(reason).inc()
        response = connection.respond(status, text + "\n")
        if status is http.HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
        return response

    async def _authorise(self, connection: ServerConnection,
                         request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        cp_id = path[len(PATH_PREFIX):] if path.startswith(PATH_PREFIX) else ""
        spec = self.config.charge_points.get(cp_id)
        if spec is None:
            log.warning("%s: refused a connection for unknown charge point %r", self.name,
                        cp_id[:64])
            return self._refuse(connection, http.HTTPStatus.NOT_FOUND, "unknown_id",
                                "unknown charge point")
        if self.settings.ocpp.security_profile >= 1:
            user, password = _basic(request.headers)
            if user != cp_id or password is None or not await self._verified(cp_id, password):
                log.warning("%s: refused charge point %s: bad credentials", self.name, cp_id)
                return self._refuse(connection, http.HTTPStatus.UNAUTHORIZED,
                                    "bad_credentials", "authentication failed")
        return None

    async def _verified(self, cp_id: str, password: str) -> bool:
        """Argon2 costs a second of CPU on purpose; a charge point that reconnects (or 200
        after a network cut) with the password it proved before is checked against a keyed
        digest of it kept in memory instead."""
        password_hash = self.config.hashes.get(cp_id)
        if password_hash is None:
            return False
        digest = hmac.digest(self._key, f"{cp_id}:{password}".encode(), "sha256")
        known = self._proven.get(cp_id)
        if known is not None and known[0] == password_hash \
                and hmac.compare_digest(known[1], digest):
            return True
        if not await verify_password(password_hash, password):
            return False
        self._proven[cp_id] = (password_hash, digest)
        return True

    async def _handler(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        cp_id = connection.request.path.split("?", 1)[0][len(PATH_PREFIX):]
        spec = self.config.charge_points[cp_id]  # _authorise let only these through
        if connection.subprotocol != SUBPROTOCOL:
            self.refused["no_subprotocol"] = self.refused.get("no_subprotocol", 0) + 1
            self.m_refused.labels("no_subprotocol").inc()
            await connection.close(1002, "the ocpp1.6 subprotocol is required")
            return
        old = self.sessions.get(cp_id)
        if old is not None:  # the charge point reconnected before we saw the old one go
            await old._connection.close(1000, "replaced by a new connection")
        session = OcppSession(spec, connection, self)
        self.sessions[cp_id] = session
        self.m_connected.set(len(self.sessions))
        self.set_status(spec, Availability.ONLINE, "connected")
        try:
            await session.start()
        except ConnectionClosed:
            pass
        finally:
            if self.sessions.get(cp_id) is session:
                del self.sessions[cp_id]
                self.m_connected.set(len(self.sessions))
                self.set_status(spec, Availability.OFFLINE, "connection lost")

    # --- publishing -------------------------------------------------------------------

    def _put(self, topic: str, message: msgspec.Struct) -> None:
        assert self.outbox is not None, "use inside 'async with'"
        self.outbox.put(topic, m.encode(message))

    def send_letter(self, letter: Letter) -> None:
        assert self.outbox is not None, "use inside 'async with'"
        self.outbox.put(letter.topic, letter.payload)

    def bad_frame(self, session: OcppSession, raw: str | bytes, exc: OCPPError) -> None:
        letter = self.letters.letter(session.origin("frame"), _raw(raw), type(exc).__name__,
                                     f"{exc.code}: {exc.description} {exc.details}"[:1000])
        self.send_letter(letter)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def reading(self, spec: ChargePointSpec, ts: int, values: dict[str, m.Scalar],
                units: dict[str, str] | None = None, errors: dict[str, str] | None = None,
                tags: dict[str, str] | None = None) -> None:
        # A replaced timestamp is said in `errors`; only a value left out makes it bad.
        quality = m.Quality.BAD_VALUE if errors and set(errors) - {"timestamp"} \
            else m.Quality.GOOD
        reading = Reading(site=self.site_id, family=Family.EV_CHARGER, device=spec.device.id,
                          ts=ts, values=values, units=units or {}, quality=quality,
                          tags={**spec.tags, **(tags or {})}, gateway=self.gateway_id,
                          seq=self._next_seq(), errors=errors or {})
        self._put(topics.telemetry(self.site_id, Family.EV_CHARGER, spec.device.id), reading)

    def event(self, spec: ChargePointSpec, ts: int, event_id: str, name: str,
              attrs: dict[str, m.Scalar], text: str = "") -> None:
        event = m.Event(site=self.site_id, family=Family.EV_CHARGER, device=spec.device.id,
                        ts=ts, id=f"{spec.device.id}.{event_id}"[:64], name=name,
                        attrs=attrs, text=text, gateway=self.gateway_id, seq=self._next_seq())
        self._put(topics.event(self.site_id, Family.EV_CHARGER, spec.device.id), event)

    def meter_values(self, spec: ChargePointSpec, connector_id: int,
                     meter_values: list[dict[str, Any]], transaction_id: int | None,
                     tx: Transaction | None) -> None:
        for raw in meter_values:
            if not isinstance(raw, dict):
                raise meter.OcppValueError("a meterValue is not an object")
            sample = meter.sample(raw, self.clock_ns())
            self.m_sample_age.observe(max(0, self.clock_ns() - sample.ts) / NS)
            values, units = dict(sample.values), dict(sample.units)
            values["connector"] = connector_id
            if transaction_id is not None:
                values["transaction_id"] = transaction_id
            energy = values.get("energy_import")
            if tx is not None and isinstance(energy, int | float):
                values["session_energy"] = meter.exact(
                    Decimal(str(energy)) - Decimal(tx.meter_start) / 1000)
                units["session_energy"] = "kWh"
            if sample.contexts:  # a value, not a tag: a tag would split the device's series
                values["context"] = ",".join(sorted(sample.contexts))[:256]
            self.reading(spec, sample.ts, values, units, sample.errors)

    def id_tag_info(self, id_tag: str) -> IdTagInfo:
        card = self.config.card(id_tag)
        if card is None:
            status = AuthorizationStatus.invalid
        elif card.blocked:
            status = AuthorizationStatus.blocked
        elif card.expires is not None and card.expires < datetime.now(UTC).date():
            status = AuthorizationStatus.expired
        else:
            status = AuthorizationStatus.accepted
        return IdTagInfo(status=status)

    def _gateway_status(self, state: Availability, reason: str) -> DeviceStatus:
        return DeviceStatus(site=self.site_id, family=Family.GATEWAY, device=self.gateway_id,
                            ts=self.clock_ns(), state=state, reason=reason,
                            gateway=self.gateway_id)

    def set_status(self, spec: ChargePointSpec, state: Availability, reason: str) -> None:
        current = self.status.get(spec.device.id)
        if current is not None and current.state is state:
            return
        self.status[spec.device.id] = DeviceStatus(
            site=self.site_id, family=Family.EV_CHARGER, device=spec.device.id,
            ts=self.clock_ns(), state=state, reason=reason, gateway=self.gateway_id)
        self._status_dirty.add(spec.device.id)
        self._status_wake.set()

    async def _publish_statuses(self, link: Connection) -> None:
        # Retained latest state, not a queue: after an outage only the current one matters.
        while True:
            while self._status_dirty:
                device = self._status_dirty.pop()
                status = self.status[device]
                if not link.send(topics.status(self.site_id, status.family, device),
                                 m.encode(status), retain=True):
                    self._status_dirty.add(device)
                    raise MqttError("connection lost while publishing statuses")
            self._status_wake.clear()
            await self._status_wake.wait()

    # --- the broker session: outbox, statuses, commands ---------------------------------

    def _disconnected(self) -> None:
        self._link_up = False
        self._link = None
        self.ready.clear()
        if self.outbox is not None:
            self.outbox.disconnected()

    async def _session(self, link: Connection) -> None:
        assert self.outbox is not None
        await link.publish(topics.status(self.site_id, Family.GATEWAY, self.gateway_id),
                           m.encode(self._gateway_status(Availability.ONLINE, "running")),
                           qos=1, retain=True)
        await link.subscribe([topics.command(self.site_id, Family.EV_CHARGER, spec.device.id)
                              for spec in self.config.charge_points.values()], qos=1)
        self._link = link
        self._status_dirty.update(self.status)
        self._status_wake.set()
        self._link_up = True
        self._ready()
        try:
            await until_lost(link, {f"{self.name} outbox": self.outbox.drain(link),
                                    f"{self.name} statuses": self._publish_statuses(link),
                                    f"{self.name} commands": self._receive(link)})
        except asyncio.CancelledError:
            with contextlib.suppress(MqttError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await link.publish(
                        topics.status(self.site_id, Family.GATEWAY, self.gateway_id),
                        m.encode(self._gateway_status(Availability.OFFLINE, "stopped")),
                        qos=1, retain=True)
            raise

    async def _receive(self, link: Connection) -> None:
        while True:
            batch = await link.next_batch(100, None)
            for message in batch:
                topic = str(message.topic)
                payload = bytes(message.payload)
                out = self.letters.run(partial(self._take_command, topic, payload),
                                       topic, payload)
                if isinstance(out, Letter) and self.letters.needs_letter(out):
                    self.send_letter(out)
            link.ack(batch)

    def _result(self, command: m.Command, status: CommandStatus, detail: str = "") -> None:
        self.m_commands.labels(command.action, status.value).inc()
        result = m.CommandResult(id=command.id, site=command.site, family=command.family,
                                 device=command.device, ts=self.clock_ns(), status=status,
                                 detail=detail[:1000], gateway=self.gateway_id)
        self._put(topics.command_result(command.site, command.family, command.device), result)

    def _take_command(self, topic: str, payload: bytes) -> None:
        command = m.decode(payload, m.Command)
        where = topics.parse(topic)
        if where.name != command.device or command.site != self.site_id:
            raise m.ContractError("the command's device or site is not its topic's")
        spec = self.config.by_device(command.device)
        if spec is None:
            raise m.ContractError(f"{command.device!r} is not a charge point of "
                                  f"{self.gateway_id}")
        now = self.clock_ns()
        if not self.store.claim_command(command.id, now):
            self._result(command, CommandStatus.DUPLICATE, "this command id was already taken")
            return
        if now > command.expires_at:
            self._result(command, CommandStatus.EXPIRED, "arrived after its validity")
            return
        try:
            request = self._request(spec, command)
        except CommandRefused as exc:
            self._result(command, CommandStatus.REFUSED, str(exc))
            return
        session = self.sessions.get(spec.id)
        if session is None:
            self._result(command, CommandStatus.FAILED, "charge point not connected")
            return
        self._result(command, CommandStatus.ACCEPTED, f"sent {type(request).__name__}")
        task = asyncio.create_task(self._execute(session, command, request),
                                   name=f"{self.name} command {command.id}")
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    def _request(self, spec: ChargePointSpec, command: m.Command) -> Any:
        p = command.params

        def connector(default: int | None = None, lowest: int = 1) -> int | None:
            value = p.get("connector", default)
            if value is None:
                return None
            if not isinstance(value, int) or not lowest <= value <= spec.connectors:
                raise CommandRefused(f"connector {value!r} is not {lowest}..{spec.connectors}")
            return value

        def text(name: str, default: str | None = None) -> str:
            value = p.get(name, default)
            if not isinstance(value, str) or not value:
                raise CommandRefused(f"parameter {name!r} is required (text)")
            return value

        action = command.action
        if action == "remote_start_transaction":
            return call.RemoteStartTransaction(
                id_tag=text("id_tag", self.config.file.remote_id_tag)[:20],
                connector_id=connector())
        if action == "remote_stop_transaction":
            tx_id = p.get("transaction_id")
            if tx_id is None:
                active = self.store.active(spec.id, connector())
                if len(active) != 1:
                    raise CommandRefused(f"{len(active)} transactions in progress: name the "
                                         "transaction_id")
                tx_id = active[0].id
            if not isinstance(tx_id, int):
                raise CommandRefused("transaction_id must be an integer")
            return call.RemoteStopTransaction(transaction_id=tx_id)
        if action == "unlock_connector":
            return call.UnlockConnector(connector_id=connector(1) or 1)
        if action == "change_availability":
            kind = text("type", "inoperative")
            if kind not in ("operative", "inoperative"):
                raise CommandRefused("type must be operative or inoperative")
            return call.ChangeAvailability(connector_id=connector(0, lowest=0) or 0,
                                           type=AvailabilityType(kind.capitalize()))
        if action == "reset":
            kind = text("type", "soft")
            if kind not in ("soft", "hard"):
                raise CommandRefused("type must be soft or hard")
            return call.Reset(type=ResetType(kind.capitalize()))
        if action == "trigger_message":
            message = text("message")
            try:
                trigger = MessageTrigger(message)
            except ValueError:
                raise CommandRefused(f"message {message!r} is not one of "
                                     f"{', '.join(t.value for t in MessageTrigger)}") from None
            return call.TriggerMessage(requested_message=trigger,
                                       connector_id=connector(None, lowest=0))
        if action == "get_configuration":
            keys = p.get("key")
            if keys is not None and not isinstance(keys, str):
                raise CommandRefused("key must be text (comma-separated keys)")
            return call.GetConfiguration(key=[k.strip() for k in keys.split(",") if k.strip()]
                                         if keys else None)
        if action == "change_configuration":
            value = p.get("value")
            if not isinstance(value, str | int | float | bool):
                raise CommandRefused("parameter 'value' is required")
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            return call.ChangeConfiguration(key=text("key")[:50], value=shown[:500])
        raise CommandRefused(f"action {action!r} is not one of {', '.join(ACTIONS)}")

    async def _execute(self, session: OcppSession, command: m.Command, request: Any) -> None:
        try:
            answer = await session.call(request, suppress=False)
        except TimeoutError:
            self._result(command, CommandStatus.TIMED_OUT,
                         f"no answer from the charge point in "
                         f"{self.settings.ocpp.call_timeout:g}s")
            return
        except OCPPError as exc:
            self._result(command, CommandStatus.FAILED, f"CALLERROR {exc.code}: "
                                                        f"{exc.description}")
            return
        except ConnectionClosed:
            self._result(command, CommandStatus.FAILED, "connection closed before the answer")
            return
        except Exception as exc:  # a bug: the command fails, the service goes on
            log.exception("%s: command %s failed", self.name, command.id)
            self._result(command, CommandStatus.FAILED, f"{type(exc).__name__}: {exc}")
            return
        if isinstance(answer, call_result.GetConfiguration):
            known = {str(k.get("key")): k.get("value") for k in answer.configuration_key or []
                     if isinstance(k, dict)}
            detail = json.dumps({"configuration": known,
                                 "unknown": answer.unknown_key or []}, ensure_ascii=False)
            self._result(command, CommandStatus.DONE, detail)
            return
        status = str(getattr(answer, "status", ""))
        if status in DONE_ANSWERS:
            self._result(command, CommandStatus.DONE, status)
        elif status in FAILED_ANSWERS:
            self._result(command, CommandStatus.FAILED, status)
        else:
            self._result(command, CommandStatus.REFUSED, status or "no status")


def _basic(headers: Headers) -> tuple[str | None, str | None]:
    value = headers.get("Authorization", "")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True) \
            .decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return (user, password) if sep else (None, None)
