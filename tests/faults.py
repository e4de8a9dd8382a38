"""Fault injection on this machine: a TCP proxy that can delay, black-hole, drop replies
or cut connections, and an HTTP proxy that answers with errors for a while. Both listen
on free loopback ports and forward to a server the test started."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import ClientSession, web

Mode = Literal["pass", "delay", "blackhole", "drop_replies"]


@dataclass
class TcpProxy:
    """Forwards 127.0.0.1:<port> to target. Change `mode` at any time:
    pass; delay (each chunk held `delay` s); blackhole (take data, forward nothing in
    either direction); drop_replies (requests reach the server, its replies are lost)."""

    target_host: str
    target_port: int
    mode: Mode = "pass"
    delay: float = 0.0
    # In drop_replies mode, drop only server chunks this says yes to (all when None).
    reply_filter: Callable[[bytes], bool] | None = None
    port: int = 0
    dropped_replies: int = 0
    _server: asyncio.Server | None = None
    _links: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Close every open connection (new ones are still accepted)."""
        for writer in list(self._writers):
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host,
                                                                 self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        to_server = asyncio.ensure_future(self._pump(reader, up_writer, replies=False))
        to_client = asyncio.ensure_future(self._pump(up_reader, writer, replies=True))
        self._links |= {to_server, to_client}
        try:
            await asyncio.wait({to_server, to_client}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_server, to_client):
                task.cancel()
                self._links.discard(task)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    replies: bool) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self.mode == "blackhole":
                    continue
                if self.mode == "drop_replies" and replies and (
                        self.reply_filter is None or self.reply_filter(data)):
                    self.dropped_replies += 1
                    continue
                if self.mode == "delay" and self.delay > 0:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()


@dataclass
class HttpFaults:
    """An HTTP proxy that answers `fail_status` to the next `fail_next` requests (with an
    optional Retry-After), then forwards to the target. Counts what it saw."""

    target: str
    fail_next: int = 0
    fail_status: int = 503
    port: int = 0
    requests: int = 0
    failed: int = 0
    _runner: web.AppRunner | None = None
    _session: ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> HttpFaults:
        self._session = ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            self.failed += 1
            await request.read()
            headers = {"Retry-After": "1"} if self.fail_status == 429 else {}
            return web.json_response({"error": "injected fault"}, status=self.fail_status,
                                     headers=headers)
        assert self._session is not None
        async with self._session.request(request.method, self.target + request.path_qs,
                                         data=await request.read(),
                                         headers={k: v for k, v in request.headers.items()
                                                  if k.lower() not in ("host",
                                                                       "content-length")}
                                         ) as upstream:
            body = await upstream.read()
            return web.Response(body=body, status=upstream.status,
                                content_type=upstream.content_type)
