"""The lean MQTT link ingest uses: its stream reassembly is checked property-based (any
packets, the stream cut anywhere), and on the real broker it receives exactly what
aiomqtt over paho-mqtt (the library it replaces) receives."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path

import mqtt5
from hypothesis import given, settings
from hypothesis import strategies as st

from facility.localservers import MosquittoServer
from facility.mqttlink import MqttLink
from facility.settings import MqttSettings, Settings
from tests.conftest import make_settings
from tests.helpers import Collector, eventually, publish_all

topics_ = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00+#"),
                  min_size=1, max_size=40)
messages_ = st.lists(st.tuples(topics_, st.binary(max_size=300), st.sampled_from([0, 1]),
                               st.integers(1, 65535)), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(messages=messages_, cuts=st.lists(st.integers(0, 20_000), max_size=40))
def test_reassembles_a_stream_cut_anywhere(
        messages: list[tuple[str, bytes, int, int]], cuts: list[int]) -> None:
    stream = b"".join(mqtt5.PublishPacket(topic=t, payload=p, qos=mqtt5.QoS(q),
                                          packet_id=mid if q else None).write()
                      for t, p, q, mid in messages)

    async def feed() -> list[mqtt5.PublishPacket]:
        link = MqttLink()
        points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        for a, b in itertools.pairwise(points):
            link.data_received(stream[a:b])
        return list(link.incoming)

    got = asyncio.run(feed())
    assert [(p.topic, p.payload, int(p.qos), p.packet_id if p.qos else None) for p in got] == \
           [(t, pl, q, mid if q else None) for t, pl, q, mid in messages]


async def test_link_and_aiomqtt_receive_the_same(settings: Settings, unique: str) -> None:
    mqtt: MqttSettings = settings.mqtt
    topic = f"test/{unique}/x"
    sent = [(topic, f"消息 {i}".encode() * (i % 7 + 1)) for i in range(500)]
    link = await MqttLink.open(mqtt, f"link-{unique}", session_expiry=60, receive_maximum=100)
    async with link, Collector(mqtt, topic) as reference:
        await link.subscribe([topic], qos=1)
        await publish_all(mqtt, sent)
        got: list[mqtt5.PublishPacket] = []

        async def receive() -> int:
            batch = await link.next_batch(1000, 0.1)
            link.ack(batch)  # receive maximum 100: without acks the broker would stop
            got.extend(batch)
            return len(got)

        await eventually(receive, lambda n: n >= len(sent), 20, "500 messages over the link")
        await reference.wait_for(len(sent))
    assert [(p.topic, p.payload) for p in got] == reference.messages == sent


async def test_unacknowledged_messages_come_again(settings: Settings, unique: str) -> None:
    """A persistent session redelivers what the link received but did not acknowledge."""
    topic = f"test/{unique}/redeliver"
    client_id = f"link-{unique}-{uuid.uuid4().hex[:6]}"
    async with await MqttLink.open(settings.mqtt, client_id, session_expiry=60) as link:
        await link.subscribe([topic], qos=1)
        await publish_all(settings.mqtt, [(topic, b"one"), (topic, b"two")])
        first = await eventually(lambda: link.next_batch(10, 0.1), lambda b: len(b) == 2, 10,
                                 "two messages")
        link.ack(first[:1])  # only the first
    async with await MqttLink.open(settings.mqtt, client_id, session_expiry=60) as again:
        assert again.session_present
        redelivered = await eventually(lambda: again.next_batch(10, 0.1), bool, 10,
                                       "the redelivery")
        again.ack(redelivered)
    assert [p.payload for p in redelivered] == [b"two"]
    assert redelivered[0].duplicate


async def test_a_stalled_broker_is_noticed(own_mosquitto: MosquittoServer, tmp_path: Path,
                                           unique: str) -> None:
    """A broker that stops answering (SIGSTOP) costs the link one keepalive window."""
    mqtt = make_settings(tmp_path, own_mosquitto.url, "http://127.0.0.1:1", unique).mqtt
    mqtt = mqtt.model_copy(update={"keepalive": 5})
    async with await MqttLink.open(mqtt, f"link-{unique}") as link:
        own_mosquitto.pause()
        try:
            stalled = time.monotonic()
            done, _ = await asyncio.wait({link.closed}, timeout=10)
            assert done, "the link never noticed"
            took = time.monotonic() - stalled
        finally:
            own_mosquitto.resume()
    assert took <= 5.5, took  # at most two half-keepalive windows


async def test_backpressure_does_not_drop_the_link(settings: Settings, unique: str) -> None:
    """Reading paused because the consumer is behind: the PINGRESP waits behind unread
    messages, which is no sign of a dead broker; the link stays and nothing is lost."""
    topic = f"test/{unique}/flood"
    mqtt = settings.mqtt.model_copy(update={"keepalive": 5})
    async with await MqttLink.open(mqtt, f"link-{unique}") as link:
        link.high_water = 20
        await link.subscribe([topic], qos=0)
        sent = 3000
        await publish_all(mqtt, [(topic, b"x" * 200)] * sent, qos=0)

        async def state() -> tuple[bool, int]:
            return link._paused, link.pings

        paused = await eventually(state, lambda s: s[0], 10, "reading paused")
        # Two keepalive windows judged while paused.
        await eventually(state, lambda s: s[1] >= paused[1] + 3, 10, "three pings")
        assert link._paused and not link.closed.done()
        got = 0

        async def receive() -> int:
            nonlocal got
            got += len(await link.next_batch(1000, 0.1))
            return got

        await eventually(receive, lambda n: n >= sent, 20, "every message")
    assert got == sent
