"""Small helpers shared by the tests: publish, collect, wait for a condition, and serve Modbus."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiomqtt
from pymodbus.server import ModbusTcpServer

from bench.aioclient import make_client
from facility import messages as m
from facility.influx import InfluxClient
from facility.settings import MqttSettings

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool],
                     timeout: float, what: str, step: float = 0.1) -> T:
    """Poll `probe` until `done(result)`; fail with the last result after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: "
                                 f"{str(result)[:500]}")
        await asyncio.sleep(step)


async def publish_all(mqtt: MqttSettings, messages: list[tuple[str, bytes]], qos: int = 1,
                      retain: bool = False) -> None:
    async with make_client(mqtt, f"test-pub-{uuid.uuid4().hex[:8]}") as client:
        await asyncio.gather(*(client.publish(t, p, qos=qos, retain=retain)
                               for t, p in messages))


class Collector:
    """Subscribes to filters on the real broker and keeps what arrives. A persistent one
    keeps its session at the broker and reconnects, so it misses nothing across a broker
    restart."""

    def __init__(self, mqtt: MqttSettings, *filters: str, persistent: bool = False) -> None:
        self.mqtt = mqtt
        self.filters = filters
        self.persistent = persistent
        self.client_id = f"test-sub-{uuid.uuid4().hex[:8]}"
        self.messages: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run(), name="collector")
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        expiry = 600 if self.persistent else 0
        while True:
            try:
                async with make_client(self.mqtt, self.client_id,
                                       session_expiry=expiry) as client:
                    for flt in self.filters:
                        await client.subscribe(flt, qos=1)
                    self._ready.set()
                    try:
                        async for message in client.messages:
                            self._keep(message)
                    finally:
                        # Acknowledged on arrival: what is still queued must not be lost.
                        queue = client._queue
                        while not queue.empty():
                            self._keep(queue.get_nowait())
            except aiomqtt.MqttError:
                if not self.persistent:
                    raise
                await asyncio.sleep(0.2)

    def _keep(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        self.messages.append((message.topic.value, payload if isinstance(payload, bytes)
                              else bytes(payload)))

    def decoded(self, kind: type[T]) -> list[T]:
        return [m.decode(p, kind) for _, p in self.messages]

    async def wait_for(self, count: int, timeout: float = 20) -> list[tuple[str, bytes]]:
        async def probe() -> int:
            return len(self.messages)
        await eventually(probe, lambda n: n >= count, timeout, f"{count} messages")
        return self.messages


async def rows(influx: InfluxClient, query: str) -> list[dict[str, Any]]:
    result = await influx.query(query)
    out: list[dict[str, Any]] = []
    for series in result[0] if result else []:
        out.extend(series.rows())
    return out


async def count_points(influx: InfluxClient, measurement: str, where: str = "") -> int:
    query = f'SELECT count("quality") FROM "{measurement}"' + (f" WHERE {where}" if where else "")
    found = await rows(influx, query)
    return int(found[0]["count"]) if found else 0


def modbus_port(server: ModbusTcpServer) -> int:
    """The port a started pymodbus server listens on."""
    sockets = server.transport.sockets  # type: ignore[attr-defined]  # pymodbus: a server's transport (an asyncio.Server) is typed as BaseTransport
    return int(sockets[0].getsockname()[1])


async def stop_modbus(server: ModbusTcpServer) -> None:
    await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus: ModbusBaseServer.shutdown is unannotated
