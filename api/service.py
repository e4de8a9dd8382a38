"""The API as a facility Service: `async with ApiService(settings, catalog) as api:` serves
the API and the page with uvicorn on the service's own event loop.

The listening socket is bound in open(), so `url` is known (port 0 picks a free port) and
a busy port fails the start with a clear error. Stopping is cancellation: uvicorn is
asked to exit, open live streams are ended, and the lifespan closes the MQTT connection,
the state store and InfluxDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator, Mapping

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from facility.catalog import Catalog
from facility.service import Service
from facility.settings import Settings

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process (facility up, the CLI) owns those
    and stops the service by cancelling it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ApiService(Service):
    def __init__(self, settings: Settings, catalog: Catalog, *, host: str | None = None,
                 port: int | None = None,
                 district: Mapping[str, Catalog] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.app: FastAPI = create_app(settings, catalog, district)
        self.host = host if host is not None else settings.api.host
        self.port = port if port is not None else settings.api.port
        self.name = "api"
        self.url = ""
        self._socket: socket.socket | None = None

    async def open(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets
        # that say they are TCP, and with Nagle on every answer waited 40 ms for an ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"the API cannot listen on {self.host}:{self.port}: {exc}") from None
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def run(self) -> None:
        assert self._socket is not None
        # The service enters the app's lifespan itself (not uvicorn), so a failing start-up
        # (broker settings, state store) raises its own error here.
        async with self.app.router.lifespan_context(self.app):
            config = uvicorn.Config(self.app, lifespan="off", access_log=False,
                                    log_config=None, timeout_graceful_shutdown=5,
                                    proxy_headers=False)
            server = _Server(config)
            serving = asyncio.create_task(server.serve(sockets=[self._socket]),
                                          name="api uvicorn")
            try:
                while not server.started:
                    done, _ = await asyncio.wait({serving}, timeout=0.05)
                    if done:
                        serving.result()
                        raise RuntimeError("the API server stopped while starting")
                self.ready.set()
                log.info("control-room API and page at %s/", self.url)
                await asyncio.wait({serving})
                serving.result()
                raise RuntimeError("the API server stopped")
            except asyncio.CancelledError:
                self.app.state.ctx.hub.close()  # live streams end, connections can close
                server.should_exit = True
                await asyncio.wait({serving})
                raise
            finally:
                self.ready.clear()
