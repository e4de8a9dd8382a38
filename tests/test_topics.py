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


def test_device_topic_builds_each_device_kind_and_refuses_the_others() -> None:
    assert topics.device_topic(Kind.STATUS, "s", "fire", "d-1") == topics.status("s", "fire", "d-1")
    with pytest.raises(TopicError):
        topics.device_topic(Kind.ALERT, "s", "fire", "d-1")


@pytest.mark.parametrize(("topic", "kind", "site", "expected"), [
    ("facility/v1/s/command/bollard/b-1", Kind.COMMAND, "s", True),
    ("facility/v1/s/command/bollard/b-1", Kind.COMMAND, None, True),
    ("facility/v1/s/command/bollard/b-1", Kind.COMMAND, "other", False),
    ("facility/v1/s/command-result/bollard/b-1", Kind.COMMAND, "s", False),
    ("facility/v1/s/deadletter/gw-1", Kind.DEADLETTER, None, True),
    ("facility/v2/s/deadletter/gw-1", Kind.DEADLETTER, None, False),
    ("x/facility/v1/deadletter/gw-1", Kind.DEADLETTER, None, False),
    ("facility/v1/s/deadletter", Kind.DEADLETTER, None, False),
    ("(spooled line)", Kind.DEADLETTER, None, False),
    ("vendor/s/deadletter/x", Kind.DEADLETTER, None, False),
])
def test_is_kind(topic: str, kind: Kind, site: str | None, expected: bool) -> None:
    assert topics.is_kind(topic, kind, site=site) is expected


@given(site=ids, device=ids)
def test_is_kind_agrees_with_parse(site: str, device: str) -> None:
    try:
        topic = topics.command(site, "bollard", device)
    except TopicError:
        return
    assert topics.is_kind(topic, Kind.COMMAND, site=site)
    assert topics.parse(topic).kind is Kind.COMMAND


def test_shared_subscription() -> None:
    flt = topics.subscription(Kind.TELEMETRY, site="s")
    assert topics.shared("ingest", flt) == "$share/ingest/facility/v1/s/telemetry/+/+"
    for bad in ("", "a/b", "+", "#"):
        with pytest.raises(TopicError):
            topics.shared(bad, flt)


def test_acl_filters() -> None:
    assert topics.acl_filter(Kind.TELEMETRY) == "facility/v1/+/telemetry/+/+"
    assert topics.acl_filter(Kind.COMMAND_RESULT, "s", "alert") == \
        "facility/v1/s/command-result/alert/+"
    assert topics.acl_filter(Kind.DISPLAY, "s", "%u") == "facility/v1/s/display/%u"
    assert topics.acl_filter(Kind.DEADLETTER, "s", "gw-1") == "facility/v1/s/deadletter/gw-1"
    for bad in (("a/b",), ("#",), ("x", "y")):
        with pytest.raises(TopicError):
            topics.acl_filter(Kind.ALERT, "s", *bad)


levels = st.sampled_from(["a", "b", "", "$sys", "设备", "+", "#"])


@given(filter_levels=st.lists(levels, min_size=1, max_size=5),
       topic_levels=st.lists(levels.filter(lambda x: x not in ("+", "#")), min_size=1,
                             max_size=5))
def test_filter_matching_agrees_with_paho(filter_levels: list[str],
                                          topic_levels: list[str]) -> None:
    from paho.mqtt.client import topic_matches_sub

    topic_filter = "/".join(filter_levels)
    if "#" in filter_levels[:-1]:
        return  # not a valid filter: '#' only last
    topic = "/".join(topic_levels)
    assert topics.matches(topic_filter, topic) == topic_matches_sub(topic_filter, topic)


def test_filter_matching_examples() -> None:
    assert topics.matches("gst/+/+/+/data", "gst/FP-EB/1/1/data")
    assert topics.matches("sport/#", "sport")
    assert not topics.matches("gst/+/data", "gst/a/b/data")
    assert not topics.matches("#", "$SYS/broker")
