"""An independent MQTT client (aiomqtt over paho-mqtt) for tests and benchmarks.

The platform's services all speak through facility.mqttlink; a check made with the same
code it checks could share its bugs, so probes, load generators and the tests' publishers
use this library the project did not write.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from facility.mqtt import MqttError, parse_url
from facility.settings import MqttSettings


def make_client(settings: MqttSettings, client_id: str, *, session_expiry: int = 0,
                receive_maximum: int = 0, max_inflight: int = 100) -> aiomqtt.Client:
    """An MQTT v5 client. A session_expiry > 0 makes the session persistent."""
    address = parse_url(settings.url.get_secret_value())
    tls_context = None
    if address.tls:
        tls_context = ssl.create_default_context(
            cafile=str(settings.tls_ca) if settings.tls_ca else None)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho-mqtt: Properties.__init__ is unannotated
    if session_expiry:
        props.SessionExpiryInterval = session_expiry
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    client = aiomqtt.Client(
        address.host, address.port, username=address.username, password=address.password,
        identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
        keepalive=settings.keepalive, clean_start=not session_expiry, properties=props,
        max_inflight_messages=max_inflight, tls_context=tls_context, timeout=10)
    # aiomqtt warns above 10 unconfirmed publishes; windows of QoS 1 publishes are normal here.
    client.pending_calls_threshold = max(10, max_inflight * 2)
    return client


@asynccontextmanager
async def connected(settings: MqttSettings, client_id: str, *, session_expiry: int = 0,
                    receive_maximum: int = 0, max_inflight: int = 100
                    ) -> AsyncIterator[aiomqtt.Client]:
    """A connected client for facility.mqtt.run_connected: aiomqtt's errors, from the
    connection or the session run on it, become MqttError, which run_connected retries."""
    try:
        async with make_client(settings, client_id, session_expiry=session_expiry,
                               receive_maximum=receive_maximum,
                               max_inflight=max_inflight) as client:
            yield client
    except aiomqtt.MqttError as exc:
        raise MqttError(str(exc)) from exc
