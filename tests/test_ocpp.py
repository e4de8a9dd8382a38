"""The OCPP 1.6J central system against real charge-point clients (the ocpp library's
charge-point side, simulators/ocpp_chargers.py) and a real Mosquitto: every message, the
security profiles, commands with the charge point's answers, bad frames, offline queues."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.typing import Subprotocol

from csms.config import hash_password
from csms.service import CentralSystem
from facility import messages as m
from facility import topics
from facility.localservers import MosquittoServer
from facility.settings import Settings
from facility.site import load_site
from facility.topics import Kind
from simulators.ocpp_chargers import Settings as SimSettings
from simulators.ocpp_chargers import SimChargePoint
from tests.conftest import SITE_FILE, make_settings
from tests.helpers import Collector, eventually, publish_all

pytestmark = pytest.mark.servers

CP1, CP2 = "PYGOV-OC-01", "PYGOV-OC-02"  # evc-oc-01 and evc-oc-02, two connectors each
PASSWORDS = {CP1: uuid.uuid4().hex, CP2: uuid.uuid4().hex}
HASHES = {cp: hash_password(pw, random_token=True) for cp, pw in PASSWORDS.items()}
OCPP16 = [Subprotocol("ocpp1.6")]


@dataclass
class Rig:
    csms: CentralSystem
    settings: Settings
    site: str
    out: Collector

    @property
    def url(self) -> str:
        scheme = "wss" if self.settings.ocpp.security_profile == 2 else "ws"
        return f"{scheme}://127.0.0.1:{self.csms.port}/ocpp"

    def point(self, cp: str = CP1, password: str | None = None, connectors: int = 2,
              ssl_context: ssl.SSLContext | None = None) -> SimChargePoint:
        return SimChargePoint(cp, SimSettings(self.url, PASSWORDS[cp] if password is None
                                              else password, ssl_context=ssl_context,
                                              meter_period=3600), connectors)

    def of(self, kind: type[Any], topic_kind: Kind) -> list[Any]:
        return [m.decode(p, kind) for t, p in self.out.messages if topics.is_kind(t, topic_kind)]

    async def wait(self, what: str, check: Any, timeout: float = 10) -> Any:
        async def probe() -> Any:
            return check()
        return await eventually(probe, bool, timeout, what, step=0.02)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, broker: MosquittoServer, **ocpp: Any) -> AsyncIterator[Rig]:
    site = f"t{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, broker.url, "http://127.0.0.1:9", "unused",
                             ocpp={"port": 0, "site": site, "heartbeat_interval": 2,
                                   "call_timeout": 1.0, **ocpp})
    csms = CentralSystem(settings, load_site(SITE_FILE), credentials=HASHES)
    async with Collector(settings.mqtt, topics.subscription(Kind.TELEMETRY, site),
                         topics.subscription(Kind.EVENT, site),
                         topics.subscription(Kind.STATUS, site),
                         topics.subscription(Kind.COMMAND_RESULT, site),
                         topics.subscription(Kind.DEADLETTER, site)) as out, csms:
        await csms.wait_ready(20)
        yield Rig(csms, settings, site, out)


@contextlib.asynccontextmanager
async def running(point: SimChargePoint) -> AsyncIterator[SimChargePoint]:
    task = asyncio.create_task(point.run())
    try:
        yield point
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for t in list(point._tasks):
            t.cancel()
        await asyncio.gather(*point._tasks, return_exceptions=True)


def readings(r: Rig, device: str = "evc-oc-01") -> list[m.Reading]:
    return [x for x in r.of(m.Reading, Kind.TELEMETRY) if x.device == device]


def events(r: Rig, name: str) -> list[m.Event]:
    return [e for e in r.of(m.Event, Kind.EVENT) if e.name == name]


def statuses(r: Rig, device: str = "evc-oc-01") -> list[str]:
    return [s.state.value for s in r.of(m.DeviceStatus, Kind.STATUS) if s.device == device]


async def test_a_charging_session_end_to_end(tmp_path: Path, mosquitto_server: MosquittoServer
                                             ) -> None:
    async with rig(tmp_path, mosquitto_server) as r, running(r.point()) as cp:
        await asyncio.wait_for(cp.booted.wait(), 10)
        assert cp.heartbeat_interval == 2
        boot = (await r.wait("boot", lambda: events(r, "boot")))[0]
        assert boot.attrs == {"vendor": "PYGOV-SIM", "model": "AC7-OCPP",
                              "firmware_version": "1.0.0"}
        await r.wait("online", lambda: "online" in statuses(r))
        # Both connectors reported Available at boot.
        first = await r.wait("statuses", lambda: len(readings(r)) >= 2 and readings(r))
        assert [(x.values["connector"], x.values["connector_status"], x.values["status"],
                 x.values["error_code"]) for x in first[:2]] == \
            [(1, "available", "available", "NoError"), (2, "available", "available", "NoError")]
        assert first[0].gateway == "csms" and first[0].tags["zone"] == "parking"

        # Authorize against the staff list.
        from ocpp.v16 import call
        assert cp.client is not None
        ok = await cp.client.call(call.Authorize(id_tag="PYGOV-STAFF-0001"))
        blocked = await cp.client.call(call.Authorize(id_tag="PYGOV-STAFF-0099"))
        unknown = await cp.client.call(call.Authorize(id_tag="NOBODY"))
        assert [ok.id_tag_info["status"], blocked.id_tag_info["status"],
                unknown.id_tag_info["status"]] == ["Accepted", "Blocked", "Invalid"]

        # A session: start at 1000 Wh, one sample at 7.4 kW, stop.
        cp.connectors[1].meter_wh = 1000
        cp.settings.power_w = 7400.0
        await cp.start_session(1, "PYGOV-STAFF-0001")
        started = (await r.wait("started", lambda: events(r, "transaction_started")))[0]
        tx = started.attrs["transaction_id"]
        assert started.attrs == {"transaction_id": tx, "connector": 1, "meter_start": 1000,
                                 "authorized": True}
        await r.wait("tx id", lambda: cp.connectors[1].transaction_id == tx)
        cp.advance(1, 1800)  # half an hour at 7.4 kW: 3700 Wh
        await cp.send_meter(1)
        sample = await r.wait("meter", lambda: [x for x in readings(r)
                                                if "energy_import" in x.values])
        assert sample[0].values == {
            "energy_import": 4.7, "power": 7.4, "current_a": 32.17, "voltage_a": 230.1,
            "connector_temperature": 41.5, "soc": 20, "connector": 1, "transaction_id": tx,
            "session_energy": 3.7, "context": "Sample.Periodic"}
        assert sample[0].units == {"energy_import": "kWh", "power": "kW", "current_a": "A",
                                   "voltage_a": "V", "connector_temperature": "°C",
                                   "soc": "%", "session_energy": "kWh"}
        assert "context" not in sample[0].tags  # one series per device in InfluxDB
        charging = [x.values["status"] for x in readings(r) if "status" in x.values]
        assert charging[-1] == "charging"
        await cp.stop_session(1)
        stopped = (await r.wait("stopped", lambda: events(r, "transaction_stopped")))[0]
        assert stopped.attrs["energy_wh"] == 3700 and stopped.attrs["session_energy"] == 3.7
        assert stopped.attrs["meter_start"] == 1000 and stopped.attrs["meter_stop"] == 4700
        assert stopped.attrs["reason"] == "Local"
        end = await r.wait("transaction end", lambda: [
            x for x in readings(r) if x.values.get("context") == "Transaction.End"])
        assert end[0].values["session_energy"] == 3.7

        # DataTransfer (logged), firmware and diagnostics status: events.
        await cp.client.call(call.DataTransfer(vendor_id="PYGOV", message_id="m1", data="x"))
        await cp.client.call(call.FirmwareStatusNotification(status="Installed"))
        await cp.client.call(call.DiagnosticsStatusNotification(status="Uploaded"))
        await r.wait("notifications", lambda: events(r, "data_transfer")
                     and events(r, "firmware_status") and events(r, "diagnostics_status"))
        assert events(r, "firmware_status")[0].attrs == {"status": "Installed"}
        assert events(r, "diagnostics_status")[0].attrs == {"status": "Uploaded"}

        # A fault: the charger's status is faulted (ev-charger-faulted's input).
        await cp.fault(2, "GroundFailure")
        faulted = await r.wait("faulted", lambda: [x for x in readings(r)
                                                   if x.values.get("status") == "faulted"])
        assert faulted[0].values["error_code"] == "GroundFailure"
        assert faulted[0].values["connector"] == 2
    # The connection closed: offline at once.
    await r.wait("offline", lambda: statuses(r)[-1:] == ["offline"])


async def test_security_profile_1(tmp_path: Path, mosquitto_server: MosquittoServer) -> None:
    async with rig(tmp_path, mosquitto_server) as r:
        async def refused(cp: str, password: str | None, path_id: str | None = None) -> int:
            headers = {}
            if password is not None:
                token = base64.b64encode(f"{cp}:{password}".encode()).decode()
                headers["Authorization"] = f"Basic {token}"
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"{r.url}/{path_id or cp}", subprotocols=OCPP16,
                                   additional_headers=headers):
                    pass
            return info.value.response.status_code

        assert await refused("PYGOV-XX-99", "x") == 404  # not in the site file
        assert await refused(CP1, None) == 401
        assert await refused(CP1, "wrong") == 401
        # CP2's own credentials do not open CP1's path: nobody speaks for another's id.
        assert await refused(CP2, PASSWORDS[CP2], path_id=CP1) == 401
        assert r.csms.refused == {"unknown_id": 1, "bad_credentials": 3}
        async with running(r.point()) as cp:
            await asyncio.wait_for(cp.booted.wait(), 10)
        assert not r.of(m.DeadLetter, Kind.DEADLETTER)
        for _, payload in r.out.messages:  # no password or hash reaches the broker
            assert PASSWORDS[CP1].encode() not in payload and b"argon2" not in payload


def _tls_files(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_security_profile_2_tls(tmp_path: Path, mosquitto_server: MosquittoServer
                                      ) -> None:
    cert, key = _tls_files(tmp_path)
    async with rig(tmp_path, mosquitto_server, security_profile=2, tls_cert=str(cert),
                   tls_key=str(key)) as r:
        assert r.url.startswith("wss://")
        trusted = ssl.create_default_context(cafile=str(cert))
        async with running(r.point(ssl_context=trusted)) as cp:
            await asyncio.wait_for(cp.booted.wait(), 10)
            await r.wait("online", lambda: "online" in statuses(r))
        # Plain ws:// to the TLS port does not get through, nor TLS without the password.
        with pytest.raises((OSError, InvalidMessage)):
            async with connect(f"ws://127.0.0.1:{r.csms.port}/ocpp/{CP1}",
                               subprotocols=OCPP16, open_timeout=3):
                pass
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{r.url}/{CP1}", subprotocols=OCPP16, ssl=trusted):
                pass
        assert info.value.response.status_code == 401


async def test_bad_frames_are_answered_and_dead_lettered(tmp_path: Path,
                                                         mosquitto_server: MosquittoServer
                                                         ) -> None:
    async with rig(tmp_path, mosquitto_server) as r:
        token = base64.b64encode(f"{CP1}:{PASSWORDS[CP1]}".encode()).decode()
        async with connect(f"{r.url}/{CP1}", subprotocols=OCPP16,
                           additional_headers={"Authorization": f"Basic {token}"}) as ws:
            async def ask(frame: str) -> list[Any]:
                await ws.send(frame)
                answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert isinstance(answer, list)
                return answer

            assert (await ask("not json"))[:3] == [4, "-1", "FormatViolation"]
            assert (await ask('{"a": 1}'))[:3] == [4, "-1", "ProtocolError"]
            assert (await ask('[2, "u1", "NoSuchAction", {}]'))[:3] == \
                [4, "u1", "NotSupported"]
            bad_schema = await ask('[2, "u2", "StatusNotification", {"connectorId": 1}]')
            assert bad_schema[:2] == [4, "u2"]
            assert bad_schema[2] in ("FormationViolation", "OccurenceConstraintViolation",
                                     "FormatViolation", "ProtocolError")
            wrong_connector = await ask('[2, "u3", "StatusNotification", {"connectorId": 9, '
                                        '"errorCode": "NoError", "status": "Available"}]')
            assert wrong_connector[:3] == [4, "u3", "PropertyConstraintViolation"]
            bad_time = await ask('[2, "u4", "MeterValues", {"connectorId": 1, "meterValue": '
                                 '[{"timestamp": "yesterday", "sampledValue": '
                                 '[{"value": "1"}]}]}]')
            assert bad_time[:3] == [4, "u4", "PropertyConstraintViolation"]
            # The connection goes on: a good frame is answered.
            assert (await ask('[2, "u5", "Heartbeat", {}]'))[:2] == [3, "u5"]
            # A charger whose clock is not set yet (1970): the receipt time, and why.
            before = __import__("time").time_ns()
            assert await ask('[2, "u6", "StatusNotification", {"connectorId": 1, "errorCode": '
                             '"NoError", "status": "Available", '
                             '"timestamp": "1970-01-01T00:00:10Z"}]') == [3, "u6", {}]
            late = await r.wait("a reading", lambda: readings(r))
            assert late[0].ts >= before and late[0].quality is m.Quality.GOOD
            assert late[0].errors == {"timestamp": "charger clock 1970-01-01T00:00:10Z "
                                                   "implausible; receipt time used"}
        letters = await r.wait("letters", lambda: len(r.of(m.DeadLetter, Kind.DEADLETTER)) >= 6
                               and r.of(m.DeadLetter, Kind.DEADLETTER))
        assert {x.source for x in letters} == {"csms"}
        assert letters[0].payload == "not json"
        assert r.csms.letters.total == 6


async def _command(r: Rig, action: str, device: str = "evc-oc-01", expires: float = 30,
                   command_id: str | None = None,
                   params: dict[str, m.Scalar] | None = None) -> str:
    now = __import__("time").time_ns()
    cid = command_id or f"c-{uuid.uuid4().hex[:10]}"
    expires_at = now + round(expires * 1e9)
    command = m.Command(id=cid, site=r.site, family=m.Family.EV_CHARGER, device=device,
                        action=action, issued_at=min(now, expires_at) - 10**9,
                        expires_at=expires_at,
                        issued_by="tester", reason="测试", params=params or {})
    await publish_all(r.settings.mqtt, [(topics.command(r.site, "ev_charger", device),
                                         m.encode(command))])
    return cid


async def _final(r: Rig, cid: str) -> m.CommandResult:
    results = await r.wait(f"result of {cid}", lambda: [
        x for x in r.of(m.CommandResult, Kind.COMMAND_RESULT)
        if x.id == cid and x.status is not m.CommandStatus.ACCEPTED])
    result: m.CommandResult = results[0]
    return result


async def test_commands_reach_the_charge_point(tmp_path: Path,
                                               mosquitto_server: MosquittoServer) -> None:
    async with rig(tmp_path, mosquitto_server) as r:
        offline = await _final(r, await _command(r, "reset"))
        assert (offline.status, offline.detail) == (m.CommandStatus.FAILED,
                                                   "charge point not connected")
        async with running(r.point()) as cp:
            await asyncio.wait_for(cp.booted.wait(), 10)
            cp.stuck.add(2)
            cases: list[tuple[str, dict[str, m.Scalar], m.CommandStatus, str]] = [
                ("reset", {"type": "hard"}, m.CommandStatus.DONE, "Accepted"),
                ("unlock_connector", {"connector": 1}, m.CommandStatus.DONE, "Unlocked"),
                ("unlock_connector", {"connector": 2}, m.CommandStatus.FAILED, "UnlockFailed"),
                ("unlock_connector", {"connector": 3}, m.CommandStatus.REFUSED,
                 "connector 3 is not 1..2"),
                ("change_availability", {"connector": 2, "type": "inoperative"},
                 m.CommandStatus.DONE, "Accepted"),
                ("trigger_message", {"message": "Heartbeat"}, m.CommandStatus.DONE, "Accepted"),
                ("trigger_message", {"message": "BootNotification"}, m.CommandStatus.REFUSED,
                 "NotImplemented"),
                ("change_configuration", {"key": "HeartbeatInterval", "value": 30},
                 m.CommandStatus.DONE, "Accepted"),
                ("change_configuration", {"key": "Nope", "value": "1"},
                 m.CommandStatus.REFUSED, "NotSupported"),
                ("get_configuration", {"key": "HeartbeatInterval,Nope"}, m.CommandStatus.DONE,
                 '{"configuration": {"HeartbeatInterval": "30"}, "unknown": ["Nope"]}'),
                ("remote_start_transaction", {"connector": 1}, m.CommandStatus.DONE,
                 "Accepted"),
            ]
            for action, params, status, detail in cases:
                result = await _final(r, await _command(r, action, params=params))
                assert (action, result.status, result.detail) == (action, status, detail)
            assert cp.resets == ["Hard"]
            await r.wait("unavailable", lambda: cp.connectors[2].status == "Unavailable")
            started = (await r.wait("remote start", lambda: events(r, "transaction_started")))
            tx = started[0].attrs["transaction_id"]
            await r.wait("tx", lambda: cp.connectors[1].transaction_id == tx)
            stop = await _final(r, await _command(r, "remote_stop_transaction"))
            assert (stop.status, stop.detail) == (m.CommandStatus.DONE, "Accepted")
            await r.wait("stopped", lambda: events(r, "transaction_stopped"))
            # At most once: the same id again is a duplicate; a late one expired.
            cid = await _command(r, "reset", command_id="once-1")
            assert (await _final(r, cid)).status is m.CommandStatus.DONE
            await _command(r, "reset", command_id="once-1")
            await r.wait("duplicate", lambda: [x for x in r.of(m.CommandResult,
                                                               Kind.COMMAND_RESULT)
                                               if x.status is m.CommandStatus.DUPLICATE])
            late = await _final(r, await _command(r, "reset", expires=-0.5))
            assert late.status is m.CommandStatus.EXPIRED
            assert cp.resets == ["Hard", "Soft"]

        # A charge point that never answers: the command times out (call_timeout 1 s).
        token = base64.b64encode(f"{CP2}:{PASSWORDS[CP2]}".encode()).decode()
        async with connect(f"{r.url}/{CP2}", subprotocols=OCPP16,
                           additional_headers={"Authorization": f"Basic {token}"}):
            await r.wait("cp2 online", lambda: "online" in statuses(r, "evc-oc-02"))
            mute = await _final(r, await _command(r, "reset", device="evc-oc-02"))
            assert (mute.status, mute.detail) == (m.CommandStatus.TIMED_OUT,
                                                 "no answer from the charge point in 1s")


async def test_offline_queue_taken_once(tmp_path: Path, mosquitto_server: MosquittoServer
                                        ) -> None:
    async with rig(tmp_path, mosquitto_server) as r:
        cp = r.point()
        cp.settings.power_w = 3600.0
        cp.settings.meter_period = 600  # each queued sample: 600 Wh
        async with running(cp):
            await asyncio.wait_for(cp.booted.wait(), 10)
            await cp.start_session(1, "PYGOV-STAFF-0002")
            started = (await r.wait("started", lambda: events(r, "transaction_started")))[0]
            tx = started.attrs["transaction_id"]
            await r.wait("tx", lambda: cp.connectors[1].transaction_id == tx)
        await r.wait("offline", lambda: statuses(r)[-1:] == ["offline"])
        # Offline: three samples and the stop wait in the charger's queue.
        await cp.meter_while_offline(1, 3)
        await cp.stop_session(1)
        assert len(cp.queue) == 4
        async with running(cp):
            await r.wait("queue drained", lambda: not cp.queue and cp.booted.is_set())
            stopped = (await r.wait("stopped", lambda: events(r, "transaction_stopped")))
            # The same StopTransaction again (its answer lost on the way): counted once.
            from ocpp.v16 import call
            assert cp.client is not None
            again = await cp.client.call(call.StopTransaction(
                meter_stop=1800, timestamp="2026-01-01T00:00:00Z", transaction_id=tx))
            assert again is not None
        assert len(events(r, "transaction_stopped")) == 1
        assert stopped[0].attrs["energy_wh"] == 1800  # 3 x 600 Wh, none lost, none twice
        samples = [(x.values["context"], x.values["session_energy"]) for x in readings(r)
                   if "session_energy" in x.values]
        assert samples == [("Sample.Periodic", 0.6), ("Sample.Periodic", 1.2),
                           ("Sample.Periodic", 1.8), ("Transaction.End", 1.8)]
        assert r.csms.m_duplicates.labels("StopTransaction")._value.get() == 1
        await r.wait("offline again", lambda: statuses(r)[-1:] == ["offline"])
        # A whole session while offline: its start, samples and stop wait in the queue
        # (the samples and the stop under a local number until the start is answered).
        await cp.start_session(1, "PYGOV-STAFF-0002")
        await cp.meter_while_offline(1, 2)
        await cp.stop_session(1)
        assert cp.connectors[1].transaction_id is None and len(cp.queue) == 4
        async with running(cp):
            later = await r.wait("the offline session", lambda: len(
                events(r, "transaction_stopped")) == 2 and events(r, "transaction_stopped"))
        assert len(events(r, "transaction_started")) == 2
        second = later[1].attrs
        assert second["transaction_id"] == tx + 1
        assert (second["meter_start"], second["meter_stop"], second["energy_wh"]) == \
            (1800, 3000, 1200)


async def test_demo_wiring_brings_the_simulated_chargers_online(
        tmp_path: Path, mosquitto_server: MosquittoServer) -> None:
    """`facility up`'s part: the central system and its simulated chargers, with random
    passwords for the run."""
    from app import wiring
    from tests.conftest import catalog

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = f"t{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, mosquitto_server.url, "http://127.0.0.1:9", "unused",
                             ocpp={"port": port, "site": site})
    central, fleet = wiring.ocpp(settings, catalog(), simulate=True)
    assert fleet is not None
    async with Collector(settings.mqtt, topics.subscription(Kind.STATUS, site)) as out, \
            central, fleet:
        await central.wait_ready(20)

        async def online() -> set[str]:
            return {s.device for s in (m.decode(p, m.DeviceStatus) for _, p in out.messages)
                    if s.state is m.Availability.ONLINE and s.family is m.Family.EV_CHARGER}
        await eventually(online, lambda d: d == {"evc-oc-01", "evc-oc-02", "evc-oc-03",
                                                 "evc-oc-04"}, 20, "four chargers online")


async def test_commands_from_the_api_with_roles_zones_and_audit(
        settings: Settings, tmp_path: Path) -> None:
    from facility.settings import OcppSettings
    from tests.test_api_stack import api_stack, new_site_id

    site_id = new_site_id()
    ocpp = settings.model_copy(update={"ocpp": OcppSettings(
        port=0, site=site_id, heartbeat_interval=2, call_timeout=1.0)})
    async with api_stack(settings, tmp_path, site_id=site_id) as s, \
            CentralSystem(ocpp, load_site(SITE_FILE), credentials=HASHES) as central:
        await central.wait_ready(20)
        url = f"ws://127.0.0.1:{central.port}/ocpp"
        point = SimChargePoint(CP1, SimSettings(url, PASSWORDS[CP1], meter_period=3600), 2)
        async with running(point):
            await asyncio.wait_for(point.booted.wait(), 10)

            async def send(who: str, device: str, action: str, command_id: str | None = None,
                           **params: Any) -> Any:
                body = {"id": command_id or uuid.uuid4().hex, "action": action,
                        "reason": "现场报修", **params}
                return await s.post(f"/api/chargers/{device}/commands", who, body, wait=10)

            unlocked = await send("otto", "evc-oc-01", "unlock_connector", "unlock-1",
                                  connector=1)
            assert unlocked.status_code == 201, unlocked.text
            view = unlocked.json()
            assert (view["status"], view["final"], view["zones"]) == ("done", True, ["parking"])
            assert view["results"][0] == {"device": "evc-oc-01", "status": "done",
                                          "detail": "Unlocked", "ts": view["results"][0]["ts"]}
            again = await send("otto", "evc-oc-01", "unlock_connector", "unlock-1",
                               connector=1)
            assert again.status_code == 200 and again.json()["id"] == "unlock-1"

            assert (await send("otto", "evc-oc-01", "reset", type="hard")).status_code == 403
            assert (await send("olga", "evc-oc-01", "unlock_connector",
                               connector=1)).status_code == 403  # not her zone
            assert (await send("vera", "evc-oc-01", "unlock_connector",
                               connector=1)).status_code == 403
            assert (await send("sam", "evc-pb-01", "reset")).status_code == 404  # MQTT-JSON
            assert (await send("sam", "bollard-s01", "reset")).status_code == 404
            reset = await send("sam", "evc-oc-01", "reset", "reset-1", type="hard")
            assert reset.status_code == 201 and reset.json()["status"] == "done"
            assert point.resets == ["Hard"]
            config = await send("otto", "evc-oc-01", "get_configuration",
                                key="HeartbeatInterval")
            assert json.loads(config.json()["detail"]) == {
                "configuration": {"HeartbeatInterval": "60"}, "unknown": []}
            offline = await send("otto", "evc-oc-02", "unlock_connector", connector=1)
            assert (offline.json()["status"], offline.json()["detail"]) == \
                ("failed", "charge point not connected")

        audit = (await s.get("/api/audit", "sam", command="reset-1")).json()
        assert [(a["event"], a["outcome"], a["detail"]) for a in reversed(audit)] == [
            ("requested", "", ""), ("result", "accepted", "sent Reset"),
            ("result", "done", "Accepted")]
        assert audit[-1]["username"] == "sam" and audit[-1]["reason"] == "现场报修"
        refused = (await s.get("/api/audit", "sam", user="olga")).json()
        assert refused[0]["event"] == "refused" and "zone parking" in refused[0]["detail"]
        listed = (await s.get("/api/chargers/commands")).json()
        assert {v["id"] for v in listed} >= {"unlock-1", "reset-1"}


async def test_charger_alerts_through_the_rules_engine(settings: Settings,
                                                       tmp_path: Path) -> None:
    """A ground fault raises ev-charger-electrical-fault at once; Faulted for ten minutes
    raises ev-charger-faulted; a charger whose connection is gone raises device-offline."""
    from facility.settings import OcppSettings
    from rules.clock import ManualClock
    from tests.test_rules_scenarios import Campus, rules_only

    clock = ManualClock()
    campus = Campus(settings, tmp_path, clock)
    ocpp = settings.model_copy(update={"ocpp": OcppSettings(
        port=0, site=campus.site_id, heartbeat_interval=2, call_timeout=1.0)})
    async with rules_only(campus), Collector(
            settings.mqtt, topics.subscription(Kind.ALERT, campus.site_id)) as alerts, \
            CentralSystem(ocpp, load_site(SITE_FILE), credentials=HASHES) as central:
        await central.wait_ready(20)
        url = f"ws://127.0.0.1:{central.port}/ocpp"
        point = SimChargePoint(CP1, SimSettings(url, PASSWORDS[CP1], meter_period=3600), 2)

        def raised(rule: str) -> list[m.AlertMessage]:
            return [a for a in (m.decode(p, m.AlertMessage) for _, p in alerts.messages)
                    if a.rule == rule and a.source == "evc-oc-01" and a.transition == "raised"]

        async def wait(what: str, check: Any) -> Any:
            async def probe() -> Any:
                return check()
            return await eventually(probe, bool, 20, what, step=0.05)

        async with running(point):
            await asyncio.wait_for(point.booted.wait(), 10)
            await point.fault(2, "GroundFailure")
            fault = (await wait("electrical fault", lambda: raised(
                "ev-charger-electrical-fault")))[0]
            assert fault.severity is m.Severity.MAJOR
            assert fault.text == "停车场直流快充5（OCPP）报电气安全故障，请断电检查并联系供应商"
            assert not raised("ev-charger-faulted")
            # The engine's clock in 15 s steps: the charger's heartbeats (every 2 s here)
            # keep coming, as they would, so only the fault is ten minutes old.
            for _ in range(100):
                if raised("ev-charger-faulted"):
                    break
                await clock.advance(15)
                await asyncio.sleep(0.2)
            faulted = (await wait("faulted 10 min", lambda: raised("ev-charger-faulted")))[0]
            assert not raised("device-no-data")
            assert faulted.severity is m.Severity.MINOR
        # Offline at once; the alert after the rule's two minutes on the engine's clock
        # (advanced in steps: the engine takes the status when it comes).
        for _ in range(100):
            if raised("device-offline"):
                break
            await clock.advance(15)
            await asyncio.sleep(0.2)
        offline = (await wait("offline alert", lambda: raised("device-offline")))[0]
        assert offline.text == "停车场直流快充5（OCPP）离线（通信中断）"


async def test_a_silent_connection_is_offline_within_the_heartbeat_interval(
        tmp_path: Path, mosquitto_server: MosquittoServer) -> None:
    """The network between charger and central system goes silent (no close, no RST): the
    WebSocket keep-alive closes it within the heartbeat interval (2 s here), offline."""
    async with rig(tmp_path, mosquitto_server) as r:
        frozen = asyncio.Event()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    if frozen.is_set():
                        await asyncio.Event().wait()  # the cable is cut: nothing passes
                    writer.write(data)
                    await writer.drain()

        tasks: set[asyncio.Task[None]] = set()
        writers: list[asyncio.StreamWriter] = []

        async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", r.csms.port)
            writers.extend([client_w, server_w])
            for t in (pipe(client_r, server_w), pipe(server_r, client_w)):
                tasks.add(asyncio.create_task(t))

        proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        point = SimChargePoint(CP1, SimSettings(f"ws://127.0.0.1:{port}/ocpp", PASSWORDS[CP1],
                                                meter_period=3600), 2)
        try:
            async with running(point):
                await asyncio.wait_for(point.booted.wait(), 10)
                await r.wait("online", lambda: statuses(r)[-1:] == ["online"])
                frozen.set()
                cut = time.monotonic()
                await r.wait("offline", lambda: statuses(r)[-1:] == ["offline"], timeout=10)
                assert time.monotonic() - cut < r.settings.ocpp.heartbeat_interval + 0.5
                offline = r.of(m.DeviceStatus, Kind.STATUS)[-1]
                assert offline.reason == "connection lost"
        finally:
            proxy.close()
            for w in writers:
                w.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await proxy.wait_closed()


async def test_charging_sessions_for_the_energy_report(influx: Any) -> None:
    """The energy report's OCPP tables from what the central system publishes, as ingest
    stores it: sessions per charger and day, idle connectors, faults, time online."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from ingest.convert import to_line
    from reports.charging import charging_sessions
    from reports.periods import Period

    site = load_site(SITE_FILE)
    sid = site.site.id
    tz = ZoneInfo(site.site.timezone)

    def at(day: int, hour: int) -> int:
        return int(datetime(2026, 11, day, hour, tzinfo=tz).timestamp()) * 10**9

    def stop(device: str, ts: int, tx: int, connector: int, wh: int, seconds: int) -> bytes:
        event = m.Event(site=sid, family=m.Family.EV_CHARGER, device=device, ts=ts,
                        id=f"{device}.tx{tx}-stop", name="transaction_stopped",
                        attrs={"transaction_id": tx, "connector": connector,
                               "energy_wh": wh, "duration_s": seconds}, gateway="csms")
        return to_line(topics.event(sid, "ev_charger", device), m.encode(event))

    def change(device: str, ts: int, status: str, previous: str) -> bytes:
        event = m.Event(site=sid, family=m.Family.EV_CHARGER, device=device, ts=ts,
                        id=f"{device}.st-{ts}", name="status_change",
                        attrs={"status": status, "previous": previous}, gateway="csms")
        return to_line(topics.event(sid, "ev_charger", device), m.encode(event))

    def status(device: str, ts: int, state: m.Availability) -> bytes:
        s = m.DeviceStatus(site=sid, family=m.Family.EV_CHARGER, device=device, ts=ts,
                           state=state, gateway="csms")
        return to_line(topics.status(sid, "ev_charger", device), m.encode(s))

    on, off = m.Availability.ONLINE, m.Availability.OFFLINE
    lines = [stop("evc-oc-01", at(2, 10), 1, 1, 12000, 3600),
             stop("evc-oc-01", at(2, 15), 2, 1, 8000, 5400),
             stop("evc-oc-01", at(3, 9), 3, 1, 20500, 7200),
             stop("evc-oc-03", at(3, 11), 4, 1, 7000, 1800),
             stop("evc-oc-01", at(4, 1), 5, 2, 999, 60),  # after the period
             change("evc-oc-02", at(2, 12), "faulted", "available"),
             change("evc-oc-02", at(2, 13), "faulted", "faulted"),  # still the same fault
             change("evc-oc-02", at(3, 8), "available", "faulted"),
             status("evc-oc-01", at(1, 20), on), status("evc-oc-01", at(2, 12), off),
             status("evc-oc-01", at(2, 18), on), status("evc-oc-02", at(2, 0), on)]
    await influx.write(b"\n".join(lines))
    period = Period(datetime(2026, 11, 2, tzinfo=tz), datetime(2026, 11, 4, tzinfo=tz),
                    "range", "2026-11-02..03")
    sessions, usage = await charging_sessions(influx, site, period)
    assert sessions.rows == [
        ["停车场直流快充5（OCPP）", "2026-11-02", 2, 20.0, 10.0, 90.0],
        ["停车场直流快充5（OCPP）", "2026-11-03", 1, 20.5, 20.5, 120.0],
        ["停车楼交流桩7（OCPP）", "2026-11-03", 1, 7.0, 7.0, 30.0]]
    assert usage.rows == [
        ["停车场直流快充5（OCPP）", 2, 3, 40.5, "2号枪", 0, 42 / 48],
        ["停车场直流快充6（OCPP）", 2, 0, 0.0, "1号枪、2号枪", 1, 1.0],
        ["停车楼交流桩7（OCPP）", 1, 1, 7.0, "—", 0, None],
        ["停车楼交流桩8（OCPP）", 1, 0, 0.0, "1号枪", 0, None]]
