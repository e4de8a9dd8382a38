"""The one way a service talks to the broker: a connection interface, the broker's
address, and one reconnect loop.

`Connection` is what every service's code is written against; `facility.mqttlink.MqttLink`
is its one implementation (MQTT v5 on asyncio, the mqtt5 codec). A service runs its broker
work as `session(connection)` inside `run_connected`, which reconnects with the shared
jittered backoff whenever the connection drops; shutdown is cancellation of the task
running it. aiomqtt/paho remain only in tests and benchmarks, as an independent client to
check the platform against.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import mqtt5

from facility.backoff import Backoff
from facility.settings import MqttSettings, redact_url

log = logging.getLogger(__name__)

Message = mqtt5.PublishPacket  # .topic (str), .payload (bytes), .qos, .retain, .packet_id


class MqttError(Exception):
    """The connection failed, was refused or was lost; run_connected reconnects."""


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us when the connection dies unannounced."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def parse_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


class Connection(Protocol):
    """A live MQTT v5 connection. Every method raises MqttError once it is gone.

    Received QoS 1 messages are acknowledged only by `ack`, after the service has done
    what it must with them: a message in hand when the link drops comes again.
    """

    session_present: bool

    async def subscribe(self, filters: Iterable[str], qos: int = 1,
                        timeout: float = 10.0) -> None: ...

    async def unsubscribe(self, filters: Iterable[str], timeout: float = 10.0) -> None: ...

    async def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
                      timeout: float = 10.0) -> None:
        """QoS 1: returns once the broker acknowledged it."""

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """QoS 1 now, not waiting for the PUBACK; False if the connection is gone."""

    def ack(self, messages: Iterable[Message]) -> None: ...

    async def next_batch(self, limit: int, timeout: float | None) -> list[Message]:
        """Up to `limit` messages already here; if none, wait up to `timeout` for some."""

    async def wait_closed(self) -> None:
        """Until the connection is lost; then raises MqttError."""


C = TypeVar("C")


async def run_connected(
    settings: MqttSettings,
    connect: Callable[[], AbstractAsyncContextManager[C]],
    session: Callable[[C], Awaitable[None]],
    *,
    name: str,
    backoff: Backoff | None = None,
    on_disconnect: Callable[[], None] | None = None,
) -> None:
    """Run `session(connection)` on a live connection, reconnecting forever until cancelled."""
    backoff = backoff or Backoff(initial=0.2, cap=15.0)
    url = redact_url(settings.url.get_secret_value())
    while True:
        try:
            async with connect() as connection:
                if backoff.attempts:
                    log.info("%s: connected to %s again", name, url)
                backoff.reset()
                await session(connection)
                return  # the session ended on its own
        except MqttError as exc:
            if on_disconnect is not None:
                on_disconnect()
            delay = backoff.next_delay()
            # One line per outage, not one per attempt, at warning level.
            level = logging.WARNING if backoff.attempts == 1 else logging.DEBUG
            log.log(level, "%s: broker %s: %s; retrying in %.1fs (attempt %d)",
                    name, url, exc, delay, backoff.attempts)
            await asyncio.sleep(delay)


async def until_lost(connection: Connection,
                     tasks: Mapping[str, Coroutine[Any, Any, object]]) -> None:
    """Run a session's tasks (by name) until one fails or the connection is lost; the
    first MqttError, not a group of them, goes on to run_connected."""
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(connection.wait_closed(), name="mqtt connection")
            for name, task in tasks.items():
                tg.create_task(task, name=name)
    except* MqttError as group:
        raise group.exceptions[0] from None
