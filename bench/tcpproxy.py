"""A TCP proxy the test can cut and restore: the link between a site broker and the centre.

`cut("close")` is a link that fails loudly: every connection through it is reset and new
ones are refused, so both brokers see the link drop at once. `cut("blackhole")` is a link
that goes quiet, as a WAN does: connections stay open but nothing passes either way, and
the brokers find out by their keepalives; bytes in flight are lost with the connection.
`restore()` lets new connections through (the dead ones are closed first).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Mode = Literal["close", "blackhole"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.cut_mode: Mode | None = None
        self.connections = 0  # accepted, in all
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = asyncio.Event()
        self._open.set()

    async def __aenter__(self) -> TcpProxy:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._open.set()  # held connections go on to find theirs closed
        self._close_all()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def cut(self, mode: Mode = "close") -> None:
        self.cut_mode = mode
        if mode == "close":
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            self._close_all()  # reset what was open: both ends see it go
        else:
            self._open.clear()

    async def restore(self) -> None:
        if self.cut_mode == "blackhole":
            self._close_all()  # dead already, for both brokers' keepalives
            self._open.set()
        elif self.cut_mode == "close":
            await self._listen()
        self.cut_mode = None

    def _close_all(self) -> None:
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                if writer is not None:
                    with contextlib.suppress(Exception):
                        writer.transport.abort()
        self._pairs.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._pairs.add(pair)
        try:
            await self._open.wait()  # a blackholed link: the connection hangs
            if pair not in self._pairs:
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._pairs.discard(pair)
            pair = (writer, up_writer)
            self._pairs.add(pair)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pairs.discard(pair)
            for w in pair:
                if w is not None:
                    w.transport.abort()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self._open.is_set():
                    await self._open.wait()  # held, then dropped with the connection
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.transport.abort()
