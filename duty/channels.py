"""Channels: how a notice reaches a person, and whether a failure is worth a retry.

E-mail and SMS go through `apprise` (mailto://, and json:// to an SMS gateway's HTTP API;
any other apprise URL works as type `apprise`). The three group robots are spoken to
directly, after each vendor's documented API: apprise's robot plugins have the public
hosts built in (no on-premises relay, no local server in a test), and its Feishu plugin
cannot sign. A robot message @-mentions the person in the team's group. Every send
returns an Outcome instead of raising: retryable (network, 5xx, 429, a robot's rate limit)
or permanent (4xx, a refused signature or key), after Alertmanager's notifier.

URLs and secrets come from environment variables named in config/duty.yaml.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import apprise

from duty.config import ChannelSpec
from duty.escalate import Notice
from duty.roster import Person


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    retryable: bool = False
    detail: str = ""


class Channel(Protocol):
    name: str
    contact: str  # the contact kind it needs ("" when a group robot needs none)

    async def send(self, notice: Notice, person: Person) -> Outcome: ...


class _Http:
    """A JSON POST with the classification every HTTP channel shares."""

    def __init__(self, name: str, spec: ChannelSpec, url: str, secret: str,
                 session: aiohttp.ClientSession, clock: Callable[[], float]) -> None:
        self.name = name
        self.spec = spec
        self.url = url
        self.secret = secret
        self.session = session
        self.clock = clock

    async def post(self, url: str, body: dict[str, Any],
                   headers: dict[str, str] | None = None) -> tuple[Outcome, Any]:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            async with self.session.post(
                    url, data=data, timeout=aiohttp.ClientTimeout(total=10),
                    headers={"Content-Type": "application/json; charset=utf-8",
                             **(headers or {})}) as resp:
                text = await resp.text()
                if resp.status == 429 or resp.status >= 500:
                    return Outcome(False, True, f"HTTP {resp.status}"), None
                if resp.status >= 400:
                    return Outcome(False, False, f"HTTP {resp.status}: {text[:200]}"), None
                try:
                    return Outcome(True), json.loads(text) if text else {}
                except ValueError:
                    return Outcome(True), {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome(False, True, f"{type(exc).__name__}: {exc}"), None


# Robot error codes that mean "later", not "never".
_RATE_LIMITED = {"dingtalk": {130101, 130102}, "feishu": {11232, 9499}, "wecom": {45009}}


def _robot_result(kind: str, outcome: Outcome, reply: Any) -> Outcome:
    if not outcome.ok or not isinstance(reply, dict):
        return outcome
    code = reply.get("errcode", reply.get("code", 0))
    if code in (0, None):
        return Outcome(True)
    message = reply.get("errmsg", reply.get("msg", ""))
    return Outcome(False, code in _RATE_LIMITED[kind], f"{kind} error {code}: {message}")


class DingTalk(_Http):
    """DingTalk custom robot: the `sign` is base64(HMAC-SHA256(secret,
    f"{timestamp}\\n{secret}")), URL-encoded, with the millisecond timestamp in the URL."""

    contact = "mobile"

    async def send(self, notice: Notice, person: Person) -> Outcome:
        url = self.url
        if self.secret:
            ts = str(int(self.clock() * 1000))
            mac = hmac.new(self.secret.encode(), f"{ts}\n{self.secret}".encode(),
                           hashlib.sha256).digest()
            sign = urllib.parse.quote_plus(base64.b64encode(mac))
            url += ("&" if "?" in url else "?") + f"timestamp={ts}&sign={sign}"
        mobile = person.contact("mobile")
        body = {"msgtype": "text", "text": {"content": f"{notice.text}\n@{mobile}"},
                "at": {"atMobiles": [mobile], "isAtAll": False}}
        return _robot_result("dingtalk", *await self.post(url, body))


class Feishu(_Http):
    """Feishu custom bot: `sign` is base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}",
    msg=b"")), the timestamp in seconds; both go in the body."""

    contact = "feishu"

    async def send(self, notice: Notice, person: Person) -> Outcome:
        uid = person.contact("feishu")
        body: dict[str, Any] = {"msg_type": "text", "content": {
            "text": f'{notice.text}\n<at user_id="{uid}">{person.name}</at>'}}
        if self.secret:
            ts = str(int(self.clock()))
            mac = hmac.new(f"{ts}\n{self.secret}".encode(), b"", hashlib.sha256).digest()
            body = {"timestamp": ts, "sign": base64.b64encode(mac).decode(), **body}
        return _robot_result("feishu", *await self.post(self.url, body))


class WeCom(_Http):
    """WeCom group robot: the key is in the webhook URL; mentions by user id or mobile."""

    contact = "mobile"

    async def send(self, notice: Notice, person: Person) -> Outcome:
        text: dict[str, Any] = {"content": notice.text}
        if person.contact("wecom"):
            text["mentioned_list"] = [person.contact("wecom")]
        if person.contact("mobile"):
            text["mentioned_mobile_list"] = [person.contact("mobile")]
        return _robot_result("wecom", *await self.post(self.url, {"msgtype": "text",
                                                                   "text": text}))


class Webhook(_Http):
    """A generic webhook: the notice as JSON, signed like GitHub's and Stripe's:
    X-Facility-Signature: sha256=hex(HMAC-SHA256(secret, f"{timestamp}.{body}"))."""

    contact = ""

    async def send(self, notice: Notice, person: Person) -> Outcome:
        body = {"incident": notice.incident, "person": person.id, "name": person.name,
                "event": notice.event, "step": notice.step, "thread": notice.thread,
                "ts": notice.ts, "first": notice.first,
                "title": notice.title, "text": notice.text}
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        ts = str(int(self.clock()))
        mac = hmac.new(self.secret.encode(), f"{ts}.{data}".encode(), hashlib.sha256)
        outcome, _ = await self.post(self.url, body, {
            "X-Facility-Timestamp": ts, "X-Facility-Signature": f"sha256={mac.hexdigest()}"})
        return outcome


class Apprise:
    """E-mail (`mailto://` URL: the person's address is added as `to`, and the thread as
    In-Reply-To/References so a mail client shows one conversation per incident), SMS
    (`json://` to the gateway: the mobile number is added as `to` in the body) or any
    apprise URL. Apprise only says yes or no: a failure is taken as retryable."""

    def __init__(self, name: str, spec: ChannelSpec, url: str) -> None:
        self.name = name
        self.spec = spec
        self.url = url
        self.contact = {"email": "email", "sms": "mobile"}.get(spec.type, "")

    def _target(self, notice: Notice, person: Person) -> str:
        sep = "&" if "?" in self.url else "?"
        quote = urllib.parse.quote
        if self.spec.type == "email":
            root = f"<{notice.incident}.{person.id}@facility-duty>"
            return (f"{self.url}{sep}to={quote(person.contact('email'))}&format=text"
                    f"&+In-Reply-To={quote(root)}&+References={quote(root)}")
        if self.spec.type == "sms":
            return f"{self.url}{sep}:to={quote(person.contact('mobile'))}"
        return self.url

    async def send(self, notice: Notice, person: Person) -> Outcome:
        # In this worker thread and nowhere else: apprise's parallel mode and its service
        # deadline each run the call on a process-wide thread pool of its own. The
        # plugin's own socket timeouts bound it.
        box = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False, service_timeout=0))
        if not box.add(self._target(notice, person)):
            return Outcome(False, False, "apprise does not take this URL")
        ok = await asyncio.to_thread(box.notify, body=notice.text, title=notice.title,
                                     body_format=apprise.NotifyFormat.TEXT)
        return Outcome(True) if ok else Outcome(False, True, "apprise: not delivered")


def build(channels: dict[str, ChannelSpec], session: aiohttp.ClientSession,
          clock: Callable[[], float] = time.time,
          env: dict[str, str] | None = None) -> tuple[dict[str, Channel], list[str]]:
    """The channels whose URL (and secret) the environment has; and a line for each one
    left out, for the log."""
    env = dict(os.environ) if env is None else env
    out: dict[str, Channel] = {}
    missing = []
    for name, spec in channels.items():
        url, secret = env.get(spec.url_env, ""), env.get(spec.secret_env, "") \
            if spec.secret_env else ""
        if not url or (spec.secret_env and not secret):
            missing.append(f"channel {name}: {spec.url_env}"
                           + (f"/{spec.secret_env}" if spec.secret_env else "") + " not set")
            continue
        robots: dict[str, type[DingTalk | Feishu | WeCom | Webhook]] = {
            "dingtalk": DingTalk, "feishu": Feishu, "wecom": WeCom, "webhook": Webhook}
        if spec.type in robots:
            out[name] = robots[spec.type](name, spec, url, secret, session, clock)
        else:
            out[name] = Apprise(name, spec, url)
    return out, missing
