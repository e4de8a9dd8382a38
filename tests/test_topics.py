"""Topics: whatever string a device id or site holds, a topic is either refused or built
so that it parses back to exactly the same parts (never a broken or widened topic)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facility import topics
from facility.topics import Kind, TopicError

ids = st.text(max_size=70)


@given(site=ids, family=ids, device=ids)
def test_device_topics_roundtrip_or_refuse(site: str, family: str, device: str) -> None:
    for kind, build in ((Kind.TELEMETRY, topics.telemetry), (Kind.STATUS, topics.status),
                        (Kind.EVENT, topics.event), (Kind.COMMAND, topics.command),
                        (Kind.COMMAND_RESULT, topics.command_result)):
        try:
            topic = build(site, family, device)
        except TopicError:
            continue
        assert "+" not in topic and "#" not in topic and "\x00" not in topic
        parsed = topics.parse(topic)
        assert (parsed.kind, parsed.site, parsed.family, parsed.name) == \
            (kind, site, family, device)


@given(site=ids, name=ids)
def test_named_topics_roundtrip_or_refuse(site: str, name: str) -> None:
    for build in (topics.alert, topics.display, topics.display_ack, topics.broadcast,
                  topics.deadletter):
        try:
            topic = build(site, name)
        except TopicError:
            continue
        parsed = topics.parse(topic)
        assert (parsed.site, parsed.name) == (site, name)


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a+b", "x\x00", "空格 id", "a" * 65, "-x"])
def test_refused_ids(bad: str) -> None:
    with pytest.raises(TopicError):
        topics.telemetry("site", "energy", bad)
