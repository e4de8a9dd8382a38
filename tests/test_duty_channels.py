"""Duty channels against real local servers: HTTP servers that check each robot API's
documented body and signature (DingTalk, Feishu, WeCom), the signed webhook, an SMS
gateway stand-in and an SMTP server (aiosmtpd), through apprise where it is used; retries,
no retry for a permanent failure, the fallback channel, a log row per attempt."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from duty.channels import Channel, build
from duty.config import ChannelSpec
from duty.deliver import Deliverer
from duty.escalate import Attempt, Notice
from duty.roster import Person

pytestmark = pytest.mark.servers

NOW = 1_796_500_800.0  # 2026-12-06 03:00 in Guangzhou
DING_SECRET = "SEC" + "d" * 61  # the shape DingTalk gives: SEC and 64 characters
FEISHU_SECRET = "f" * 24
HOOK_SECRET = "w" * 32
GUARD = Person("guard-li", "李建华", "control_room", contacts={
    "mobile": "13800000002", "email": "li@campus.example", "wecom": "lijh",
    "feishu": "ou_lijh"})
NOTICE = Notice(incident="inc-1", person="guard-li", event="raised", step=0, ts=NOW,
                title="【紧急·新告警】西门电动自行车停车棚火警",
                text="【紧急·新告警】西门电动自行车停车棚火警\n地点：西门电动自行车停车棚",
                channels=("wecom",), first=True)


@dataclass
class Robot:
    """One local HTTP server playing every robot; answers come from `replies` in turn."""

    url: str = ""
    requests: list[tuple[str, dict[str, str], dict[str, str], bytes]] = field(
        default_factory=list)
    replies: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.path, dict(request.query), dict(request.headers), body))
        status, reply = self.replies.pop(0) if self.replies else (200, {"errcode": 0})
        return web.json_response(reply, status=status)


@pytest.fixture
async def robot() -> AsyncIterator[Robot]:
    server = Robot()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    yield server
    await runner.cleanup()


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[Envelope] = []
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mails.append(envelope)
        self.arrived.set()
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(box), "127.0.0.1", 0)
    yield box, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def channels_for(robot: Robot, session: aiohttp.ClientSession, smtp_port: int = 0,
                       **retries: int) -> dict[str, Channel]:
    specs = {
        "dingtalk": ChannelSpec(type="dingtalk", url_env="D_URL", secret_env="D_SEC",
                                retries=retries.get("dingtalk", 2), backoff=0.5),
        "feishu": ChannelSpec(type="feishu", url_env="F_URL", secret_env="F_SEC"),
        "wecom": ChannelSpec(type="wecom", url_env="W_URL", retries=retries.get("wecom", 2),
                             backoff=0.5),
        "webhook": ChannelSpec(type="webhook", url_env="H_URL", secret_env="H_SEC"),
        "sms": ChannelSpec(type="sms", url_env="S_URL"),
        "email": ChannelSpec(type="email", url_env="E_URL"),
        "off": ChannelSpec(type="wecom", url_env="NOT_SET"),
    }
    host = robot.url.removeprefix("http://")
    env = {"D_URL": f"{robot.url}/robot/send?access_token=tok", "D_SEC": DING_SECRET,
           "F_URL": f"{robot.url}/open-apis/bot/v2/hook/hook-id", "F_SEC": FEISHU_SECRET,
           "W_URL": f"{robot.url}/cgi-bin/webhook/send?key=wkey", "H_URL": f"{robot.url}/hook",
           "H_SEC": HOOK_SECRET, "S_URL": f"json://{host}/sms",
           "E_URL": f"mailto://127.0.0.1:{smtp_port}?from=duty@campus.example&mode=insecure"}
    channels, missing = build(specs, session, clock=lambda: NOW, env=env)
    assert missing == ["channel off: NOT_SET not set"]
    return channels


async def test_dingtalk_signs_as_documented(robot: Robot) -> None:
    async with aiohttp.ClientSession() as session:
        channels = await channels_for(robot, session)
        assert (await channels["dingtalk"].send(NOTICE, GUARD)).ok
    path, query, _, body = robot.requests[0]
    assert path == "/robot/send" and query["access_token"] == "tok"
    assert query["timestamp"] == str(int(NOW * 1000))
    # The documented check: base64(HMAC-SHA256(secret, timestamp + "\n" + secret)).
    expected = base64.b64encode(hmac.new(DING_SECRET.encode(),
                                         f"{query['timestamp']}\n{DING_SECRET}".encode(),
                                         hashlib.sha256).digest()).decode()
    assert query["sign"] == expected  # aiohttp has URL-decoded it once
    assert json.loads(body) == {"msgtype": "text",
                                "text": {"content": NOTICE.text + "\n@13800000002"},
                                "at": {"atMobiles": ["13800000002"], "isAtAll": False}}


async def test_feishu_signs_as_documented(robot: Robot) -> None:
    async with aiohttp.ClientSession() as session:
        channels = await channels_for(robot, session)
        robot.replies.append((200, {"code": 0, "msg": "success"}))
        assert (await channels["feishu"].send(NOTICE, GUARD)).ok
    path, _, _, body = robot.requests[0]
    sent = json.loads(body)
    assert path == "/open-apis/bot/v2/hook/hook-id"
    assert sent["timestamp"] == str(int(NOW))
    # The documented check: base64(HMAC-SHA256(key=timestamp + "\n" + secret, msg="")).
    key = f"{sent['timestamp']}\n{FEISHU_SECRET}".encode()
    assert sent["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert sent["msg_type"] == "text"
    assert sent["content"] == {"text": NOTICE.text + '\n<at user_id="ou_lijh">李建华</at>'}


async def test_wecom_body_and_signed_webhook(robot: Robot) -> None:
    async with aiohttp.ClientSession() as session:
        channels = await channels_for(robot, session)
        assert (await channels["wecom"].send(NOTICE, GUARD)).ok
        assert (await channels["webhook"].send(NOTICE, GUARD)).ok
    path, query, _, body = robot.requests[0]
    assert (path, query) == ("/cgi-bin/webhook/send", {"key": "wkey"})
    assert json.loads(body) == {"msgtype": "text", "text": {
        "content": NOTICE.text, "mentioned_list": ["lijh"],
        "mentioned_mobile_list": ["13800000002"]}}
    path, _, headers, body = robot.requests[1]
    ts = headers["X-Facility-Timestamp"]
    mac = hmac.new(HOOK_SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256)
    assert headers["X-Facility-Signature"] == f"sha256={mac.hexdigest()}"
    assert json.loads(body)["thread"] == "inc-1.guard-li"


async def test_sms_gateway_and_email_through_apprise(robot: Robot,
                                                     smtp: tuple[Mailbox, int]) -> None:
    box, port = smtp
    async with aiohttp.ClientSession() as session:
        channels = await channels_for(robot, session, smtp_port=port)
        assert (await channels["sms"].send(NOTICE, GUARD)).ok
        assert (await channels["email"].send(NOTICE, GUARD)).ok
    path, _, _, body = robot.requests[0]
    sms = json.loads(body)
    assert path == "/sms" and sms["to"] == "13800000002" and sms["message"] == NOTICE.text
    [mail] = box.mails
    assert mail.rcpt_tos == ["li@campus.example"]
    assert isinstance(mail.content, bytes)
    parsed = email.message_from_bytes(mail.content, policy=email.policy.default)
    assert str(parsed["Subject"]) == NOTICE.title
    # One conversation per incident and person in the mail client.
    assert parsed["In-Reply-To"] == "<inc-1.guard-li@facility-duty>"
    assert parsed["References"] == "<inc-1.guard-li@facility-duty>"
    plain = parsed.get_body(("plain",))
    assert plain is not None and NOTICE.text in plain.get_content().replace("\r\n", "\n")


async def test_retries_backoff_fallback_and_a_row_per_attempt(robot: Robot) -> None:
    attempts: list[Attempt] = []
    slept: list[float] = []

    async def record(a: Attempt) -> None:
        attempts.append(a)

    async def sleep(s: float) -> None:
        slept.append(s)

    async with aiohttp.ClientSession() as session:
        channels = await channels_for(robot, session)
        deliver = Deliverer(channels, record, lambda: NOW, sleep=sleep)
        # WeCom: two 503s then taken.
        robot.replies += [(503, {}), (503, {}), (200, {"errcode": 0, "errmsg": "ok"})]
        assert await deliver.deliver(NOTICE, GUARD) == "wecom"
        assert [(a.channel, a.n, a.ok, a.retryable) for a in attempts] == [
            ("wecom", 1, False, True), ("wecom", 2, False, True), ("wecom", 3, True, False)]
        assert slept == [0.5, 1.0]
        # DingTalk refuses the signature (310000): permanent, no retry; WeCom's rate limit
        # outlasts its retries: the fallback chain ends at the webhook.
        attempts.clear()
        slept.clear()
        robot.replies += [(200, {"errcode": 310000, "errmsg": "sign not match"}),
                          (200, {"errcode": 45009, "errmsg": "api freq out of limit"}),
                          (200, {"errcode": 45009, "errmsg": "api freq out of limit"}),
                          (200, {"errcode": 45009, "errmsg": "api freq out of limit"}),
                          (400, {"error": "bad"}), (200, {})]
        notice = _with_channels(("dingtalk", "wecom", "feishu", "webhook"))
        assert await deliver.deliver(notice, GUARD) == "webhook"
    assert [(a.channel, a.n, a.ok, a.retryable) for a in attempts] == [
        ("dingtalk", 1, False, False), ("wecom", 1, False, True), ("wecom", 2, False, True),
        ("wecom", 3, False, True), ("feishu", 1, False, False), ("webhook", 1, True, False)]
    assert "sign not match" in attempts[0].detail
    assert slept == [0.5, 1.0]


def _with_channels(channels: tuple[str, ...]) -> Notice:
    return Notice(incident=NOTICE.incident, person=NOTICE.person, event=NOTICE.event,
                  step=NOTICE.step, ts=NOTICE.ts, title=NOTICE.title, text=NOTICE.text,
                  channels=channels, first=NOTICE.first)

