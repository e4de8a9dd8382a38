"""The platform's MQTT v5 connection (facility.mqtt.Connection), on asyncio.Protocol.

paho-mqtt reads one packet per socket event and builds a Properties object for every
v5 PUBLISH; profiled, that was most of ingest's CPU. Here the framing is the mqtt5
library (the sans-I/O codec by aiomqtt's maintainer, in Rust): every chunk the socket
delivers is parsed in one loop, and the acknowledgements of a whole batch go out in one
write. It does what the services need: CONNECT with a persistent session, a Receive
Maximum and a last will, TLS, SUBSCRIBE/UNSUBSCRIBE at QoS 0 or 1, QoS 0/1 PUBLISH in both
directions, retained or not (`send` writes a QoS 1 publish without waiting for its PUBACK:
rules' display messages are confirmed end to end by their endpoints, so 14 for one fire go
out in 14 writes, not 14 round trips), PUBACK only when the service says (`ack`),
keep-alive. asyncio turns Nagle off on its TCP sockets, so small messages and their
acknowledgements are not held back.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

import mqtt5

from facility.mqtt import MqttError, Will, parse_url
from facility.settings import MqttSettings

log = logging.getLogger(__name__)


_Request = mqtt5.SubscribePacket | mqtt5.UnsubscribePacket | mqtt5.PublishPacket
_Reply = TypeVar("_Reply", mqtt5.SubAckPacket, mqtt5.UnsubAckPacket, mqtt5.PubAckPacket)


class MqttLink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.incoming: deque[mqtt5.PublishPacket] = deque()
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._waiting: dict[tuple[type, int], asyncio.Future[object]] = {}
        self._connack: asyncio.Future[mqtt5.ConnAckPacket] = \
            asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._next_id = 0
        self._last_in = 0.0  # loop time of the last bytes from the broker
        self.pings = 0
        self._keepalive_task: asyncio.Task[None] | None = None
        self.session_present = False
        # QoS 0 has no flow control: stop reading the socket when this many messages wait,
        # so TCP pushes back on the broker and memory stays bounded.
        self.high_water = 50_000
        self._paused = False

    # --- opening and closing ------------------------------------------------------------

    @classmethod
    async def open(cls, settings: MqttSettings, client_id: str, *, session_expiry: int = 0,
                   receive_maximum: int = 65535, will: Will | None = None,
                   timeout: float = 10.0) -> Self:
        address = parse_url(settings.url.get_secret_value())
        context = None
        if address.tls:
            context = ssl.create_default_context(
                cafile=str(settings.tls_ca) if settings.tls_ca else None)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, link = await loop.create_connection(cls, address.host, address.port,
                                                       ssl=context)
        except (TimeoutError, OSError) as exc:
            raise MqttError(f"cannot connect: {exc!r}") from None
        connect = mqtt5.ConnectPacket(
            client_id=client_id, username=address.username,
            password=address.password.encode() if address.password is not None else None,
            clean_start=not session_expiry, keep_alive=settings.keepalive,
            session_expiry_interval=session_expiry, receive_max=receive_maximum,
            will=mqtt5.Will(will.topic, payload=will.payload, qos=mqtt5.QoS(will.qos),
                            retain=will.retain) if will is not None else None)
        link._write(connect.write())
        try:
            async with asyncio.timeout(timeout):
                connack = await asyncio.shield(link._connack)
        except TimeoutError:
            link.close()
            raise MqttError("no CONNACK from the broker") from None
        if connack.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            link.close()
            raise MqttError(f"broker refused the connection: {connack.reason_code.name}")
        link.session_present = connack.session_present
        link._keepalive_task = loop.create_task(link._keepalive(settings.keepalive),
                                                name=f"mqtt keepalive {client_id}")
        return link

    async def __aenter__(self) -> MqttLink:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write(mqtt5.DisconnectPacket().write())
        self.close()

    def close(self) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        error = MqttError(f"connection lost: {exc!r}" if exc else "connection closed")
        futures: list[asyncio.Future[Any]] = [self._connack, self.closed,
                                              *self._waiting.values()]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        # Nobody may be awaiting these; retrieve so asyncio does not log them.
        for future in (self._connack, self.closed):
            if future.done() and not future.cancelled():
                future.exception()
        self._waiting.clear()
        self._arrived.set()
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()

    def data_received(self, data: bytes) -> None:
        self._last_in = asyncio.get_running_loop().time()
        buffer = self._buffer
        buffer += data
        view = memoryview(buffer)
        offset = 0
        try:
            while offset < len(buffer):
                try:
                    packet, used = mqtt5.read(view[offset:])
                except IndexError:
                    break  # an incomplete packet: wait for more bytes
                offset += used
                if isinstance(packet, mqtt5.PublishPacket):
                    self.incoming.append(packet)
                else:
                    self._control(packet)
        except ValueError as exc:  # a malformed packet: a protocol error, drop the link
            log.error("malformed packet from the broker: %s", exc)
            if self.transport is not None:
                self.transport.abort()
        finally:
            view.release()
            del buffer[:offset]
        if self.incoming:
            self._arrived.set()
            if len(self.incoming) > self.high_water and not self._paused and self.transport:
                self.transport.pause_reading()
                self._paused = True

    def _control(self, packet: object) -> None:
        if isinstance(packet, mqtt5.ConnAckPacket):
            if not self._connack.done():
                self._connack.set_result(packet)
        elif isinstance(packet, mqtt5.PingRespPacket):
            pass  # any bytes from the broker show the link is alive (data_received)
        elif isinstance(packet, mqtt5.DisconnectPacket):
            log.warning("broker disconnected us: %s", packet.reason_code.name)
        else:
            packet_id = getattr(packet, "packet_id", None)
            future = self._waiting.pop((type(packet), packet_id), None) \
                if packet_id is not None else None
            if future is not None and not future.done():
                future.set_result(packet)

    # --- sending ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise MqttError("not connected")
        self.transport.write(data)

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def _request(self, packet: _Request, reply: type[_Reply], packet_id: int,
                       timeout: float) -> _Reply:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting[(reply, packet_id)] = future
        self._write(packet.write())
        try:
            async with asyncio.timeout(timeout):
                answer = await future
        except TimeoutError:
            self._waiting.pop((reply, packet_id), None)
            raise MqttError(f"no {reply.__name__} in {timeout}s") from None
        assert isinstance(answer, reply), answer  # waiters are keyed by the reply's type
        return answer

    async def subscribe(self, filters: Iterable[str], qos: int = 1,
                        timeout: float = 10.0) -> None:
        packet_id = self._packet_id()
        packet = mqtt5.SubscribePacket(packet_id, [
            mqtt5.TopicFilter(f, max_qos=mqtt5.QoS(qos)) for f in filters])
        suback = await self._request(packet, mqtt5.SubAckPacket, packet_id, timeout)
        refused = [code for code in suback.reason_codes
                   if code.value >= 0x80]
        if refused:
            raise MqttError(f"subscription refused: {[c.name for c in refused]}")

    async def unsubscribe(self, filters: Iterable[str], timeout: float = 10.0) -> None:
        packet_id = self._packet_id()
        await self._request(mqtt5.UnsubscribePacket(packet_id, list(filters)),
                            mqtt5.UnsubAckPacket, packet_id, timeout)

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish QoS 1 now, without waiting for the PUBACK; False if the connection is
        gone (the caller re-sends)."""
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, retain=retain,
                                     qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=self._packet_id())
        try:
            self._write(packet.write())
        except MqttError:
            return False
        return True

    async def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
                      timeout: float = 10.0) -> None:
        """Publish; for QoS 1, return once the broker acknowledged it."""
        if qos == 0:
            self._write(mqtt5.PublishPacket(topic=topic, payload=payload, retain=retain).write())
            return
        packet_id = self._packet_id()
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS(qos),
                                     retain=retain, packet_id=packet_id)
        puback = await self._request(packet, mqtt5.PubAckPacket, packet_id, timeout)
        code = puback.reason_code
        if code.value >= 0x80:
            raise MqttError(f"publish to {topic!r} refused: {code.name}")

    def ack(self, messages: Iterable[mqtt5.PublishPacket]) -> None:
        """Acknowledge QoS 1 messages, in order, with one write."""
        acks = b"".join(mqtt5.PubAckPacket(msg.packet_id).write() for msg in messages
                        if msg.qos == mqtt5.QoS.AT_LEAST_ONCE and msg.packet_id is not None)
        if acks:
            self._write(acks)

    # --- receiving ----------------------------------------------------------------------

    async def wait_closed(self) -> None:
        """Until the connection is lost; then MqttError (a session's watchdog: a service
        that only publishes now and then learns of a dead link at once)."""
        await asyncio.shield(self.closed)

    async def next_batch(self, limit: int, timeout: float | None) -> list[mqtt5.PublishPacket]:
        """Up to `limit` messages already here; if none, wait up to `timeout` for some.

        Raises MqttError once the connection is gone (unacknowledged messages come again
        on the next connection of a persistent session).
        """
        if not self.incoming:
            if self.closed.done():
                self.closed.result()
            self._arrived.clear()
            if timeout is None:
                await self._arrived.wait()
            else:
                try:
                    async with asyncio.timeout(timeout):
                        await self._arrived.wait()
                except TimeoutError:
                    return []
            if self.closed.done() and not self.incoming:
                self.closed.result()
        incoming = self.incoming
        count = min(limit, len(incoming))
        batch = [incoming.popleft() for _ in range(count)]
        if self._paused and len(incoming) < self.high_water // 2 and self.transport:
            self.transport.resume_reading()
            self._paused = False
            self._last_in = asyncio.get_running_loop().time()  # not read while paused
        return batch

    async def _keepalive(self, interval: int) -> None:
        """Ping every interval/2; drop the link if nothing came back in that time. While
        reading is paused (our own backpressure), the PINGRESP waits behind messages not
        yet read: that is no sign of a dead broker, so the link is not judged then."""
        if interval <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            pinged = loop.time()
            self._write(mqtt5.PingReqPacket().write())
            self.pings += 1
            await asyncio.sleep(interval / 2)
            if not self._paused and self._last_in < pinged:
                log.warning("nothing from the broker within %ss of a PINGREQ; dropping the "
                            "connection", interval / 2)
                if self.transport is not None:
                    self.transport.abort()
                return


def connector(settings: MqttSettings, client_id: str, *, session_expiry: int = 0,
              receive_maximum: int = 65535, will: Will | None = None
              ) -> Callable[[], AbstractAsyncContextManager[MqttLink]]:
    """A factory of connections for facility.mqtt.run_connected (a persistent session
    if session_expiry > 0)."""

    @asynccontextmanager
    async def connect() -> AsyncIterator[MqttLink]:
        link = await MqttLink.open(settings, client_id, session_expiry=session_expiry,
                                   receive_maximum=receive_maximum, will=will)
        async with link:
            yield link

    return connect
