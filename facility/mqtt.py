"""Connecting to the broker: URL parsing, client construction, and one reconnect loop.

Every service runs its broker work as `session(client)` inside `run_connected`, which
reconnects with the shared jittered backoff whenever the connection drops. Shutdown is
cancellation of the task running it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from facility.backoff import Backoff
from facility.settings import MqttSettings, redact_url

log = logging.getLogger(__name__)


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


def connect_properties(*, session_expiry: int = 0, receive_maximum: int = 0) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho-mqtt: Properties.__init__ is unannotated
    if session_expiry:
        props.SessionExpiryInterval = session_expiry
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    return props


def make_client(
    settings: MqttSettings,
    client_id: str,
    *,
    will: aiomqtt.Will | None = None,
    session_expiry: int = 0,
    receive_maximum: int = 0,
    max_inflight: int = 100,
) -> aiomqtt.Client:
    """An MQTT v5 client. A session_expiry > 0 makes the session persistent."""
    address = parse_url(settings.url.get_secret_value())
    tls_context = None
    if address.tls:
        tls_context = ssl.create_default_context(
            cafile=str(settings.tls_ca) if settings.tls_ca else None
        )
    client = aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        keepalive=settings.keepalive,
        clean_start=not session_expiry,
        properties=connect_properties(session_expiry=session_expiry,
                                      receive_maximum=receive_maximum),
        max_inflight_messages=max_inflight,
        tls_context=tls_context,
        timeout=10,
        # paho leaves Nagle on: small QoS 1 messages and their acks would wait for ACKs.
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
    )
    # aiomqtt warns above 10 unconfirmed publishes; windows of QoS 1 publishes are normal here.
    client.pending_calls_threshold = max(10, max_inflight * 2)
    return client


C = TypeVar("C")


async def run_connected(
    settings: MqttSettings,
    client_factory: Callable[[], AbstractAsyncContextManager[C]],
    session: Callable[[C], Awaitable[None]],
    *,
    name: str,
    backoff: Backoff | None = None,
    on_disconnect: Callable[[], None] | None = None,
) -> None:
    """Run `session(client)` on a live connection, reconnecting forever until cancelled."""
    backoff = backoff or Backoff(initial=0.2, cap=15.0)
    url = redact_url(settings.url.get_secret_value())
    while True:
        try:
            async with client_factory() as client:
                if backoff.attempts:
                    log.info("%s: connected to %s again", name, url)
                backoff.reset()
                await session(client)
                return  # the session ended on its own
        except aiomqtt.MqttError as exc:
            if on_disconnect is not None:
                on_disconnect()
            delay = backoff.next_delay()
            # One line per outage, not one per attempt, at warning level.
            level = logging.WARNING if backoff.attempts == 1 else logging.DEBUG
            log.log(level, "%s: broker %s: %s; retrying in %.1fs (attempt %d)",
                    name, url, exc, delay, backoff.attempts)
            await asyncio.sleep(delay)


class ManualAck:
    """Receive QoS 1 messages and acknowledge each only when told to.

    aiomqtt has no public manual-ack API yet (empicano/aiomqtt#345); this wraps the
    workaround its maintainers point to (paho's manual_ack_set/ack on the inner client),
    in this one place. `enable` must run before connecting, so that messages queued in a
    persistent session are not acknowledged on arrival.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self._paho = client._client
        self._queue: asyncio.Queue[aiomqtt.Message] = client._queue

    @staticmethod
    def enable(client: aiomqtt.Client) -> aiomqtt.Client:
        client._client.manual_ack_set(True)
        return client

    def ack(self, message: aiomqtt.Message) -> None:
        if message.qos > 0:
            self._paho.ack(message.mid, message.qos)

    async def next_batch(self, limit: int, timeout: float | None) -> list[aiomqtt.Message]:
        """Up to `limit` messages already here; if none, wait up to `timeout` for one.

        Raises aiomqtt.MqttError when the connection is lost.
        """
        disconnected = self.client._disconnected
        if disconnected.done():
            raise aiomqtt.MqttError("Disconnected") from disconnected.exception()
        batch: list[aiomqtt.Message] = []
        queue = self._queue
        while len(batch) < limit and not queue.empty():
            batch.append(queue.get_nowait())
        if batch:
            return batch
        getter = asyncio.ensure_future(queue.get())
        try:
            waiters: set[asyncio.Future[Any]] = {getter, disconnected}
            done, _ = await asyncio.wait(waiters, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return [getter.result()]
        if disconnected.done():
            raise aiomqtt.MqttError("Disconnected") from disconnected.exception()
        return []
