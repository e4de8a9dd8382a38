"""The acknowledge link's page. GET shows the button and changes nothing (chat apps and
mail scanners open links to preview them); the person's POST acknowledges."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable

from aiohttp import web

Redeem = Callable[[str], Awaitable[tuple[bool, str]]]

_PAGE = """<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>告警确认</title></head>
<body style="font:18px sans-serif;margin:2em">{body}</body></html>"""


def app(redeem: Redeem) -> web.Application:
    async def show(request: web.Request) -> web.Response:
        token = html.escape(request.match_info["token"])
        body = (f'<form method="post" action="/ack/{token}"><p>确认收到此告警并处理？</p>'
                '<button type="submit" style="font-size:1.2em;padding:.5em 2em">确认</button>'
                "</form>")
        return web.Response(text=_PAGE.format(body=body), content_type="text/html")

    async def ack(request: web.Request) -> web.Response:
        ok, text = await redeem(request.match_info["token"])
        return web.Response(text=_PAGE.format(body=f"<p>{html.escape(text)}</p>"),
                            content_type="text/html", status=200 if ok else 409)

    application = web.Application()
    application.add_routes([web.get("/ack/{token}", show), web.post("/ack/{token}", ack)])
    return application


async def serve(redeem: Redeem, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app(redeem), access_log=None)  # tokens stay out of logs
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
