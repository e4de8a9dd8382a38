"""The duty service end to end: a real Mosquitto, the state store (SQLite and PostgreSQL),
a robot webhook stand-in over HTTP, the acknowledge link over HTTP, and a stand-in for the
rules engine that answers AlertOperations as the engine does. The clock is a fake one the
test moves; nothing sleeps for a fixed time (every wait is for a condition, bounded).

`test_a_fire_at_three_on_a_rest_day` is the scripted night of docs/duty.md: run it with
`-s` to see the timeline it prints."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from pydantic import SecretStr

from duty import cli
from duty.config import ChannelSpec, DutyFile, DutySettings, load_duty
from duty.report import figures
from duty.roster import CHINA, Shift
from duty.service import DutyService
from duty.workorders import WorkOrderRefused
from facility import messages as m
from facility import topics
from facility.localservers import MosquittoServer
from facility.mqtt import parse_url
from facility.site import load_site
from facility.topics import Kind
from tests.conftest import make_settings
from tests.helpers import eventually

REPO = Path(__file__).resolve().parent.parent
SITE = "duty-test"
NIGHT = datetime(2026, 12, 6, 3, 0, tzinfo=CHINA)  # a Sunday
SMS_SECRET = "g" * 32  # the SMS gateway's, for replies
PLACES = {"ebike-shed-west": "西门电动自行车停车棚"}


class Clock:
    def __init__(self) -> None:
        self.start = self.now = NIGHT.timestamp()

    def __call__(self) -> float:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = self.start + seconds


@dataclass
class Phones:
    """The robot webhook stand-in: every notice, who it was for, at which second."""

    clock: Clock
    url: str = ""
    got: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["second"] = round(body["ts"] - self.clock.start)  # when it was decided
        self.got.append(body)
        self.arrived.set()
        return web.json_response({})

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.got) < count:
                self.arrived.clear()
                await self.arrived.wait()

    def link(self, person: str) -> str:
        for body in self.got:
            if body["person"] == person and (found := re.search(r"/ack/(\S+)", body["text"])):
                return found.group(1)
        raise AssertionError(f"no link for {person}")


@pytest.fixture
async def phones() -> AsyncIterator[Phones]:
    box = Phones(Clock())
    app = web.Application()
    app.router.add_post("/hook", box.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    box.url = f"http://{host}:{port}/hook"
    yield box
    await runner.cleanup()


class Engine:
    """The rules engine's side of the protocol: answers an acknowledge and publishes the
    alert's acknowledged state, as rules/engine.py does."""

    def __init__(self, client: aiomqtt.Client, clock: Clock) -> None:
        self.client = client
        self.clock = clock
        self.alerts: dict[str, m.AlertMessage] = {}
        self.operations: list[m.AlertOperation] = []

    async def raise_(self, alert: m.AlertMessage) -> None:
        self.alerts[alert.id] = alert
        await self.client.publish(topics.alert(SITE, alert.id), m.encode(alert), qos=1)

    async def clear(self, alert_id: str) -> None:
        old = self.alerts[alert_id]
        state = m.AlertState.NORMAL if old.acknowledged else m.AlertState.RTN_UNACK
        await self.raise_(_replace(old, active=False, state=state, transition="cleared",
                                   ts=self._ts()))

    def _ts(self) -> int:
        return int(self.clock() * 1e9)

    async def serve(self) -> None:
        async for message in self.client.messages:
            op = m.decode(bytes(message.payload), m.AlertOperation)
            self.operations.append(op)
            old = self.alerts.get(op.target)
            ok = old is not None and op.action is m.AlertAction.ACKNOWLEDGE
            result = m.AlertOperationResult(id=op.id, site=SITE, target=op.target,
                                            ts=self._ts(), ok=ok)
            await self.client.publish(topics.command_result(SITE, "alert", op.target),
                                      m.encode(result), qos=1)
            if old is not None and ok and not old.acknowledged:
                await self.raise_(_replace(old, acknowledged=True, by=op.by,
                                           state=m.AlertState.ACTIVE_ACK,
                                           transition="acknowledged", ts=self._ts()))


def _replace(alert: m.AlertMessage, **changes: Any) -> m.AlertMessage:
    data = m.to_builtins(alert)
    data.update(changes)
    return m.decode(json.dumps(data), m.AlertMessage)


@contextlib.asynccontextmanager
async def engine(server: MosquittoServer, clock: Clock) -> AsyncIterator[Engine]:
    address = parse_url(server.url)
    async with aiomqtt.Client(address.host, address.port, identifier=f"engine-{SITE}",
                              username=address.username, password=address.password) as client:
        await client.subscribe(topics.subscription(Kind.COMMAND, SITE, "alert"), qos=1)
        stand_in = Engine(client, clock)
        task = asyncio.create_task(stand_in.serve())
        try:
            yield stand_in
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def fire(clock: Clock, alert_id: str = "fire-a1") -> m.AlertMessage:
    return m.AlertMessage(
        id=alert_id, site=SITE, rule="fire-detector-alarm", source="smoke-ebike-west-1",
        ts=int(clock() * 1e9), state=m.AlertState.ACTIVE_UNACK, active=True,
        acknowledged=False, severity=m.Severity.CRITICAL, priority=1, transition="raised",
        family="fire", place="ebike-shed-west", zone="west-gate", incident="inc-fire-1",
        title="西门电动自行车停车棚火警", text="感烟探测器报警，请立即到场核实")


def duty_file() -> DutyFile:
    config = load_duty(REPO / "config" / "duty.yaml")
    routes = [r.model_copy(update={"channels": ["webhook"]}) for r in config.routes]
    orders = config.workorders.model_copy(update={"channels": ["webhook"]})
    return config.model_copy(update={
        "routes": routes, "workorders": orders,
        "channels": {"webhook": ChannelSpec(type="webhook", url_env="FACILITY_DUTY_WEBHOOK_URL",
                                            secret_env="FACILITY_DUTY_WEBHOOK_SECRET")}})


@contextlib.asynccontextmanager
async def duty(tmp_path: Path, server: MosquittoServer, state_url: str, clock: Clock,
               monkeypatch: pytest.MonkeyPatch, phones: Phones) -> AsyncIterator[DutyService]:
    monkeypatch.setenv("FACILITY_DUTY_WEBHOOK_URL", phones.url)
    monkeypatch.setenv("FACILITY_DUTY_WEBHOOK_SECRET", "h" * 32)
    settings = make_settings(tmp_path, server.url, "http://127.0.0.1:1", "unused",
                             state={"url": state_url})
    # The test ticks the fake clock itself.
    options = DutySettings(port=0, tick=3600, secret=SecretStr("s" * 40), ack_timeout=1.0,
                           sms_inbound_secret=SecretStr(SMS_SECRET))
    service = DutyService(settings, SITE, duty=duty_file(), options=options, clock=clock,
                          places=PLACES)
    config = service.config.model_copy(update={"link_base": ""})
    service.config = config
    async with service:
        await service.wait_ready()
        service.config = config.model_copy(update={"link_base": service.web_url + "/ack/"})
        yield service


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, bool, timeout, "the condition", step=0.01)


async def press(service: DutyService, token: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, \
            session.post(f"{service.web_url}/ack/{token}") as resp:
        return resp.status, await resp.text()


async def test_incident_to_phone_to_engine_and_back(
        tmp_path: Path, mosquitto_server: MosquittoServer, state_url: str,
        monkeypatch: pytest.MonkeyPatch, phones: Phones) -> None:
    clock = phones.clock
    async with engine(mosquitto_server, clock) as rules, \
            duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch, phones) as svc:
        await rules.raise_(fire(clock))
        await phones.wait(2)
        assert {b["person"] for b in phones.got} == {"guard-li", "standby-liu"}
        assert all(b["event"] == "raised" for b in phones.got)
        assert "地点：西门电动自行车停车棚" in phones.got[0]["text"]
        # A poison message is a counted dead letter; the line goes on.
        await rules.client.publish(topics.alert(SITE, "junk"), b"{not json", qos=1)
        await until(lambda: svc.letters.total == 1)
        # The same alert again (a redelivery): nobody is told twice.
        await rules.raise_(fire(clock))
        token = phones.link("guard-li")
        status, page = await press(svc, token)
        assert status == 200 and "已确认" in page
        await phones.wait(4)
        assert [op.by for op in rules.operations] == ["李建华"]
        assert rules.operations[0].target == "fire-a1"
        assert rules.operations[0].action is m.AlertAction.ACKNOWLEDGE
        acked = [b for b in phones.got if b["event"] == "acknowledged"]
        assert {b["person"] for b in acked} == {"guard-li", "standby-liu"}
        assert all("已由李建华确认" in b["text"] for b in acked)
        status, page = await press(svc, token)
        assert status == 409 and "已使用过" in page
        status, page = await press(svc, token[:-3] + "xyz")
        assert status == 409 and "无效" in page
        clock.at(900)
        await svc.tick()
        await svc.idle()
        fire_notices = [b for b in phones.got if b["incident"] == "inc-fire-1"]
        assert len(fire_notices) == 4, "acknowledged: nobody else is woken"
        assert [b["person"] for b in phones.got if b["event"] == "workorder"] == ["repair-sun"]
        assert svc.store is not None
        rows = await svc.store.notices("inc-fire-1")
        assert len(rows) == 4 and all(r["channel"] == "webhook" for r in rows)
        assert len(await svc.store.attempts("inc-fire-1")) == 4
        audit = [(r["who"], r["action"]) for r in await svc.store.audit_rows()]
        assert ("guard-li", "ack_link") in audit and ("guard-li", "ack_sent") in audit


async def test_a_link_pressed_while_the_engine_is_away_can_be_pressed_again(
        tmp_path: Path, mosquitto_server: MosquittoServer, monkeypatch: pytest.MonkeyPatch,
        phones: Phones) -> None:
    clock = phones.clock
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    async with duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch,
                    phones) as svc:
        address = parse_url(mosquitto_server.url)
        async with aiomqtt.Client(address.host, address.port, identifier="raiser") as client:
            await client.publish(topics.alert(SITE, "fire-a1"), m.encode(fire(clock)), qos=1)
        await until(lambda: "guard-li" in seen(phones, "raised"))
        token = phones.link("guard-li")
        status, page = await press(svc, token)  # nobody answers for the engine
        assert status == 409 and "服务暂不可用" in page
        async with engine(mosquitto_server, clock) as rules:
            rules.alerts["fire-a1"] = fire(clock)
            status, page = await press(svc, token)
            assert status == 200 and [op.by for op in rules.operations] == ["李建华"]
        assert svc.store is not None
        actions = [r["action"] for r in await svc.store.audit_rows()]
        assert "ack_failed" in actions and "ack_link" in actions


async def sms_reply(svc: DutyService, mobile: str, text: str,
                    secret: str = SMS_SECRET) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"from": mobile, "text": text}, ensure_ascii=False).encode()
    stamp = str(int(svc.clock()))
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    async with aiohttp.ClientSession() as session, session.post(
            f"{svc.web_url}/sms/inbound", data=body,
            headers={"X-Facility-Timestamp": stamp,
                     "X-Facility-Signature": f"sha256={mac}"}) as resp:
        return resp.status, await resp.json()


async def test_a_reply_code_by_sms_acknowledges(
        tmp_path: Path, mosquitto_server: MosquittoServer, monkeypatch: pytest.MonkeyPatch,
        phones: Phones) -> None:
    clock = phones.clock
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    async with engine(mosquitto_server, clock) as rules, \
            duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch, phones) as svc:
        await rules.raise_(fire(clock))
        await until(lambda: "guard-li" in seen(phones, "raised"))
        text = next(b["text"] for b in phones.got if b["person"] == "guard-li")
        found = re.search(r"或回复短信：确认 (\d{6})", text)
        assert found is not None
        code = found.group(1)
        assert (await sms_reply(svc, "13800000002", f"确认 {code}", "x" * 32))[0] == 401
        status, answer = await sms_reply(svc, "13800000021", f"确认 {code}")  # not his code
        assert status == 200 and not answer["ok"] and "未找到" in answer["text"]
        status, answer = await sms_reply(svc, "13800000002", f"确认 {code}")
        assert answer["ok"] and [op.by for op in rules.operations] == ["李建华"]
        status, answer = await sms_reply(svc, "13800000002", f"确认 {code}")
        assert not answer["ok"] and "已使用过" in answer["text"]


async def test_a_restart_resumes_the_chain_and_pages_nobody_twice(
        tmp_path: Path, mosquitto_server: MosquittoServer, monkeypatch: pytest.MonkeyPatch,
        phones: Phones) -> None:
    clock = phones.clock
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    async with engine(mosquitto_server, clock) as rules:
        async with duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch, phones):
            await rules.raise_(fire(clock))
            await until(lambda: seen(phones, "raised") == {"guard-li", "standby-liu"})
        clock.at(200)  # the service was down across the first escalation step
        async with duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch,
                        phones) as svc:
            await rules.raise_(fire(clock))  # the engine's replay after a restart
            await svc.tick()
            await svc.idle()
            await until(lambda: "chief-huang" in seen(phones, "escalated"))
    keys = [(b["person"], b["event"], b["step"]) for b in phones.got
            if b["incident"] == "inc-fire-1"]
    assert len(keys) == len(set(keys)) == 5  # 2 raised, the chief, 2 escalation updates


async def test_a_restart_remembers_a_faulty_device(
        tmp_path: Path, mosquitto_server: MosquittoServer, monkeypatch: pytest.MonkeyPatch,
        phones: Phones) -> None:
    clock = phones.clock
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    charger = _replace(fire(clock, "ev-a1"), rule="ev-charger-faulted", source="ev-p2-07",
                       family="ev_charger", severity=m.Severity.MAJOR, incident="inc-ev")
    async with duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch, phones) as svc:
        address = parse_url(mosquitto_server.url)
        async with aiomqtt.Client(address.host, address.port, identifier="raiser") as client:
            await client.publish(topics.alert(SITE, "ev-a1"), m.encode(charger), qos=1)
        await until(lambda: "ev-p2-07" in svc.book.faults)
        clock.at(600)
        await svc.tick()  # a charger Faulted for 10 minutes: a work order
        [order] = svc.book.orders.values()
    async with duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch, phones) as svc:
        svc.book.move(order.id, "assigned", "chief-huang", assignee="repair-sun")
        svc.book.move(order.id, "in_progress", "repair-sun")
        with pytest.raises(WorkOrderRefused, match="设备仍处于故障状态"):
            svc.book.move(order.id, "resolved", "repair-sun")


async def test_the_rotations_are_kept_ahead(
        tmp_path: Path, mosquitto_server: MosquittoServer, monkeypatch: pytest.MonkeyPatch,
        phones: Phones) -> None:
    clock = phones.clock
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    async with duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch, phones) as svc:
        assert svc.store is not None
        await svc.store.put_shifts([Shift(  # an imported change stays as it was
            "control_room-20261207T0000Z", "control_room", "chief-huang",
            NIGHT + timedelta(hours=5), NIGHT + timedelta(hours=17), summary="代班")])
    clock.at(90 * 86400)  # three months on: past the 60 days the store was given
    async with duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch, phones) as svc:
        assert svc.escalator is not None
        moment = datetime.fromtimestamp(clock(), CHINA)
        assert svc.escalator.roster.on_duty("control_room", moment)
        assert svc.escalator.roster.on_duty("office_leaders", moment + timedelta(days=20))
        kept = [s for s in svc.escalator.roster.shifts
                if s.uid == "control_room-20261207T0000Z"]
        assert [s.person for s in kept] == ["chief-huang"]


async def test_work_orders_from_the_command_line(
        tmp_path: Path, mosquitto_server: MosquittoServer, monkeypatch: pytest.MonkeyPatch,
        phones: Phones, capsys: pytest.CaptureFixture[str]) -> None:
    """A 12345 hotline ticket through `facility workorders`: the CLI acts through the
    running service and reads the store."""
    clock = phones.clock
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    async with duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch, phones) as svc:
        settings = svc.settings
        monkeypatch.setenv("FACILITY_DUTY_PORT", svc.web_url.rsplit(":", 1)[1])
        monkeypatch.setenv("FACILITY_DUTY_SECRET", "s" * 40)
        monkeypatch.setenv("FACILITY_DUTY_SITE", SITE)
        site = load_site(REPO / "config" / "site.yaml")
        opened = argparse.Namespace(fault="西门积水，市民来电", device="", place="west-gate",
                                    priority=2, team="repair", hotline="12345-0042",
                                    by="guard-li")
        assert await cli.cmd_wo_open(opened, settings, site) == 0
        order_id = capsys.readouterr().out.strip()
        assert order_id.startswith("wo-")
        for action, extra in (("assign", {"assignee": "repair-sun"}), ("start", {}),
                              ("resolve", {})):
            args = argparse.Namespace(id=order_id, action=action, by="repair-sun",
                                      note="疏通", **extra)
            assert await cli.cmd_wo_move(args, settings, site) == 0
        args = argparse.Namespace(id=order_id, action="assign", by="x", note="",
                                  assignee="repair-xu")
        assert await cli.cmd_wo_move(args, settings, site) == 1
        assert "不能改为" in capsys.readouterr().err
        clock.at(600)
        await svc.tick()
        assert await cli.cmd_wo_list(argparse.Namespace(all=True, json=False), settings,
                                     site) == 0
        listed = capsys.readouterr().out
        assert order_id in listed and "已验证" in listed and "12345-0042" in listed
        assert svc.store is not None
        audit = [(r["who"], r["action"]) for r in await svc.store.audit_rows()]
        assert ("guard-li", "workorder_open") in audit
        assert ("repair-sun", "workorder_resolved") in audit
        assert ("x", "workorder_assigned_refused") in audit


async def test_a_fire_at_three_on_a_rest_day(
        tmp_path: Path, mosquitto_server: MosquittoServer, monkeypatch: pytest.MonkeyPatch,
        phones: Phones) -> None:
    """The scripted night: the guard is on patrol and does not answer; the standby team
    hears at once; at 03:03 the chief is woken and acknowledges from his phone at 03:04:10;
    the fire clears at 03:20, and the detector leaves a work order that the contractor
    resolves and the platform verifies after ten minutes of normal."""
    clock = phones.clock
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    async with engine(mosquitto_server, clock) as rules, \
            duty(tmp_path, mosquitto_server, state_url, clock, monkeypatch, phones) as svc:
        assert svc.store is not None
        await rules.raise_(fire(clock))
        await until(lambda: seen(phones, "raised") == {"guard-li", "standby-liu"})
        await svc.tick()  # the detector's fault rule: a work order at once
        await until(lambda: seen(phones, "workorder") == {"repair-sun"})
        for second in range(1, 250):  # the guard is on patrol: no answer
            clock.at(second)
            await svc.tick()
        await until(lambda: "chief-huang" in seen(phones, "escalated"))
        clock.at(250)  # 03:04:10: the chief presses the link on his phone
        status, _ = await press(svc, phones.link("chief-huang"))
        assert status == 200
        await until(lambda: len(seen(phones, "acknowledged")) == 3)
        [order] = svc.book.orders.values()
        clock.at(600)  # 03:10: resolving while the detector is still in alarm is refused
        svc.book.move(order.id, "assigned", "chief-huang", assignee="repair-sun")
        svc.book.move(order.id, "in_progress", "repair-sun")
        with pytest.raises(WorkOrderRefused, match="设备仍处于故障状态") as refused:
            svc.book.move(order.id, "resolved", "repair-sun")
        for second in range(251, 1201):  # nobody else is woken
            clock.at(second)
            await svc.tick()
        await rules.clear("fire-a1")
        await until(lambda: len(seen(phones, "cleared")) == 3 and not svc.book.faults)
        clock.at(1300)
        svc.book.move(order.id, "resolved", "repair-sun", note="探测器清洁复位")
        clock.at(1900)
        await svc.tick()
        await svc.idle()
        assert order.state == "verified"
        timeline = [(b["second"], b["person"], b["event"]) for b in phones.got]
        firsts = [(s, p) for s, p, e in timeline if e in ("raised", "escalated", "workorder")
                  and _first(phones.got, s, p)]
        assert ("chief-huang", "acknowledged") not in [(p, e) for _, p, e in timeline[:6]]
        assert (0, "guard-li") in firsts and (0, "standby-liu") in firsts
        assert (180, "chief-huang") in firsts
        assert not any(p == "leader-lin" for _, p, _ in timeline), \
            "acknowledged at 03:04:10: the office leader sleeps on"
        keys = [(b["person"], b["event"], b["step"]) for b in phones.got]
        assert len(keys) == len(set(keys)), "nobody told the same thing twice"
        report = await figures(svc.store, clock.start - 1, clock.start + 3600)
        text = "\n".join(report.lines())
        assert report.acked == {"黄国平": [250.0]}
        assert report.by_shift == {"12-05 20:00 李建华": [250.0]}
        assert "通知：共12条，已送达12条" in text and "MTTR 0.4小时" in text
        attempts = await svc.store.attempts("inc-fire-1")
        assert all(a["ok"] for a in attempts)
        print("\n" + night_report(phones.got, rules.operations, order, len(attempts),
                                  str(refused.value)) + "\n" + text)


def seen(phones: Phones, event: str) -> set[str]:
    return {b["person"] for b in phones.got if b["event"] == event}


def _first(got: list[dict[str, Any]], second: int, person: str) -> bool:
    first: dict[str, Any] = next(b for b in got if b["person"] == person)
    return bool(first["second"] == second)


def night_report(got: list[dict[str, Any]], ops: list[m.AlertOperation], order: Any,
                 attempts: int, refused: str) -> str:
    def hms(second: float) -> str:
        return datetime.fromtimestamp(NIGHT.timestamp() + second, CHINA).strftime("%H:%M:%S")

    names = {"guard-li": "李建华 (control room, night shift)",
             "standby-liu": "刘洋 (standby team 1, in parallel)",
             "chief-huang": "黄国平 (control-room chief)",
             "repair-sun": "孙涛 (repair contractor on duty)"}
    rows: list[tuple[float, str]] = []
    for b in got:
        kind = "notified" if b["first"] else "update"
        rows.append((b["second"], f"{kind} {names.get(b['person'], b['person'])}: "
                                  f"{b['event']} (thread {b['thread']})"))
    for op in ops:
        rows.append((250, f"{op.by} pressed the link: AlertOperation {op.action} "
                          f"{op.target} to the rules engine (answered ok)"))
    for event in order.timeline:
        rows.append((event["ts"] - NIGHT.timestamp(),
                     f"work order {event['action']} {event['by']} {event['detail']}".rstrip()))
    rows.append((600, f"resolve refused: {refused}"))
    rows.sort(key=lambda r: r[0])
    lines = ["A fire at 03:00 on Sunday 6 December 2026 (a rest day):"]
    lines += [f"{second:>6.0f} s  {hms(second)}  {text}" for second, text in rows]
    lines.append(f"delivery attempts logged for the incident: {attempts}, all delivered")
    lines.append(f"left behind: work order {order.id} ({order.kind}), device {order.device} "
                 f"at {order.place}, priority {order.priority}, team {order.team}, "
                 f"assignee {order.assignee}, {order.state}")
    return "\n".join(lines)
