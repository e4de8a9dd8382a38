"""The duty service's own HTTP server.

- /ack/{token}: the acknowledge link's page. GET shows the button and changes nothing
  (chat apps and mail scanners open links to preview them); the person's POST
  acknowledges.
- /sms/inbound: the SMS gateway forwards a reply ("确认 123456"), signed with
  FACILITY_DUTY_SMS_INBOUND_SECRET; the code acknowledges like the link.
- /workorders...: the service is the one writer of work orders (it alone knows whether a
  device is still faulty), so the CLI and the control-room API act on them here, with the
  service's key (FACILITY_DUTY_SECRET) as a bearer token; they read them from the store.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

from aiohttp import web

from duty.workorders import WorkOrder, WorkOrderRefused

_PAGE = """<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>告警确认</title></head>
<body style="font:18px sans-serif;margin:2em">{body}</body></html>"""

ACTIONS = {"assign": "assigned", "start": "in_progress", "resolve": "resolved"}


class Desk(Protocol):
    """What the server asks of the service."""

    async def redeem(self, token: str) -> tuple[bool, str]: ...

    async def reply(self, mobile: str, text: str) -> tuple[bool, str]: ...

    async def open_order(self, fields: dict[str, Any], by: str) -> WorkOrder: ...

    async def move_order(self, order_id: str, state: str, by: str, assignee: str,
                         note: str) -> WorkOrder: ...


def app(desk: Desk, key: str, sms_secret: str = "",
        clock: Callable[[], float] = time.time) -> web.Application:
    async def show(request: web.Request) -> web.Response:
        token = html.escape(request.match_info["token"])
        body = (f'<form method="post" action="/ack/{token}"><p>确认收到此告警并处理？</p>'
                '<button type="submit" style="font-size:1.2em;padding:.5em 2em">确认</button>'
                "</form>")
        return web.Response(text=_PAGE.format(body=body), content_type="text/html")

    async def ack(request: web.Request) -> web.Response:
        ok, text = await desk.redeem(request.match_info["token"])
        return web.Response(text=_PAGE.format(body=f"<p>{html.escape(text)}</p>"),
                            content_type="text/html", status=200 if ok else 409)

    def authorised(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return hmac.compare_digest(given.encode(), key.encode())

    async def acting(request: web.Request,
                     act: Callable[[dict[str, Any]], Awaitable[WorkOrder]]) -> web.Response:
        if not authorised(request):
            return web.json_response({"detail": "bad key"}, status=401)
        try:
            body = await request.json()
            if not isinstance(body, dict) or not str(body.get("by", "")).strip():
                return web.json_response({"detail": "须注明操作人 (by)"}, status=422)
            order = await act(body)
        except WorkOrderRefused as exc:
            return web.json_response({"detail": str(exc)}, status=409)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"detail": f"{type(exc).__name__}: {exc}"}, status=422)
        return web.json_response(asdict(order))

    async def open_order(request: web.Request) -> web.Response:
        return await acting(request, lambda body: desk.open_order(body, str(body["by"])))

    async def move_order(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ACTIONS:
            return web.json_response({"detail": f"no action {action!r}"}, status=404)
        return await acting(request, lambda body: desk.move_order(
            request.match_info["id"], ACTIONS[action], str(body["by"]),
            str(body.get("assignee", "")), str(body.get("note", ""))))

    async def sms_inbound(request: web.Request) -> web.Response:
        """The SMS gateway forwards a reply: {"from": mobile, "text": ...}, signed like
        the webhook channel (X-Facility-Timestamp, X-Facility-Signature), 5 minutes."""
        if not sms_secret:
            return web.json_response({"detail": "reply codes are off"}, status=404)
        body = await request.read()
        stamp = request.headers.get("X-Facility-Timestamp", "")
        mac = hmac.new(sms_secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        given = request.headers.get("X-Facility-Signature", "")
        if not stamp.isdigit() or abs(clock() - int(stamp)) > 300 or \
                not hmac.compare_digest(given, f"sha256={mac.hexdigest()}"):
            return web.json_response({"detail": "bad signature"}, status=401)
        try:
            data = json.loads(body)
            mobile, text = str(data["from"]), str(data["text"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"detail": "needs from and text"}, status=422)
        ok, answer = await desk.reply(mobile, text)
        return web.json_response({"ok": ok, "text": answer})

    application = web.Application()
    application.add_routes([web.get("/ack/{token}", show), web.post("/ack/{token}", ack),
                            web.post("/workorders", open_order),
                            web.post("/workorders/{id}/{action}", move_order),
                            web.post("/sms/inbound", sms_inbound)])
    return application


async def serve(desk: Desk, key: str, host: str, port: int, *, sms_secret: str = "",
                clock: Callable[[], float] = time.time) -> web.AppRunner:
    runner = web.AppRunner(app(desk, key, sms_secret, clock),
                           access_log=None)  # tokens stay out of logs
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
