"""The rules service's broker connections: facility.mqttlink's lean MQTT v5 link (asyncio,
TCP_NODELAY, packets parsed per socket read, acknowledgements written per batch), plus
what the rules service needs beyond ingest:

- `send`: a QoS 1 publish written at once, retained if asked, without waiting for the
  broker's acknowledgement. Display messages and broadcasts are confirmed end to end by
  their endpoints and re-sent by the router until they are; 14 of them for one fire go
  out in 14 writes, not 14 round trips (paho took about a millisecond each).
- `unsubscribe`: a session from before the split into two connections may still hold
  the telemetry subscription.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import mqtt5

from facility.mqttlink import LinkError, MqttLink
from facility.settings import MqttSettings


class Link(MqttLink):
    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish QoS 1 now; False if the connection is gone (the caller's retry will)."""
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, retain=retain,
                                     qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=self._packet_id())
        try:
            self._write(packet.write())
        except LinkError:
            return False
        return True

    async def unsubscribe(self, filters: Iterable[str], timeout: float = 10.0) -> None:
        packet_id = self._packet_id()
        await self._request(mqtt5.UnsubscribePacket(packet_id, list(filters)),
                            mqtt5.UnsubAckPacket, packet_id, timeout)


def connector(settings: MqttSettings, client_id: str, *, session_expiry: int = 0,
              receive_maximum: int = 65535
              ) -> Callable[[], AbstractAsyncContextManager[Link]]:
    """A factory of Link connections for facility.mqtt.run_connected."""

    @asynccontextmanager
    async def connect() -> AsyncIterator[Link]:
        link = await Link.open(settings, client_id, session_expiry=session_expiry,
                               receive_maximum=receive_maximum)
        assert isinstance(link, Link)
        async with link:
            yield link

    return connect
