"""The shared per-message guard: a refusal and a bug both become one counted dead letter,
the letter says why (the bug also where), and stopping a service is never swallowed."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facility import messages as m
from facility import topics
from facility.deadletters import QUARANTINED, REFUSED, DeadLetters, Letter
from facility.metrics import Metrics

SITE = "site-a"
TOPIC = f"{topics.PREFIX}/{SITE}/telemetry/fire/fd-1"


def letters(metrics: Metrics | None = None) -> DeadLetters:
    return DeadLetters("gw-test", SITE, metrics=metrics or Metrics("test"),
                       clock_ns=lambda: 1_800_000_000 * 10**9)


def _buggy() -> int:
    table: dict[str, int] = {}
    return table["missing"]


def test_a_result_passes_through() -> None:
    dl = letters()
    assert dl.run(lambda: 42, TOPIC, b"x") == 42
    assert dl.total == 0


def test_a_refusal_is_a_counted_letter_with_class_and_text() -> None:
    metrics = Metrics("test")
    dl = letters(metrics)

    def refuse() -> None:
        raise m.ContractError("value 'x' is nan")

    out = dl.run(refuse, TOPIC, b'{"v": 1}')
    assert isinstance(out, Letter) and out.kind == REFUSED
    assert out.topic == topics.deadletter(SITE, "gw-test")
    letter = m.decode(out.payload, m.DeadLetter)
    assert letter.reason == "ContractError: value 'x' is nan"
    assert (letter.source, letter.topic, letter.payload) == ("gw-test", TOPIC, '{"v": 1}')
    assert dl.counts == {(REFUSED, "ContractError"): 1}
    assert b'kind="refused",reason="ContractError"} 1.0' in metrics.exposition()


def test_a_bug_is_quarantined_with_its_last_frame() -> None:
    dl = letters()
    out = dl.run(_buggy, "vendor/topic", b"\xff\xfe")
    assert isinstance(out, Letter) and out.kind == QUARANTINED
    letter = m.decode(out.payload, m.DeadLetter)
    assert letter.reason.startswith("KeyError: 'missing' (at tests/test_deadletters.py:")
    assert letter.reason.endswith(" in _buggy)")
    assert letter.payload_encoding == "base64"  # not UTF-8: kept as it came
    # A vendor topic is no canonical topic: the letter goes to the service's own site.
    assert out.topic == topics.deadletter(SITE, "gw-test")
    assert dl.of_kind(QUARANTINED) == 1 and dl.of_kind(REFUSED) == 0


def test_the_letter_goes_to_the_site_of_a_canonical_topic() -> None:
    dl = letters()
    other = f"{topics.PREFIX}/site-b/event/fire/fd-2"
    out = dl.run(_buggy, other, b"{}")
    assert isinstance(out, Letter) and out.topic == topics.deadletter("site-b", "gw-test")


def test_a_payload_is_made_only_when_a_letter_needs_it() -> None:
    dl = letters()
    made: list[int] = []

    def payload() -> bytes:
        made.append(1)
        return b"registers"

    assert dl.run(lambda: None, TOPIC, payload) is None
    assert made == []
    out = dl.run(_buggy, TOPIC, payload)
    assert isinstance(out, Letter) and made == [1]

    def broken() -> bytes:
        raise RuntimeError("cannot say")

    out = dl.run(_buggy, TOPIC, broken)
    assert isinstance(out, Letter)
    assert m.decode(out.payload, m.DeadLetter).payload.startswith("(payload not shown: ")


def test_stopping_is_not_a_message_fault() -> None:
    dl = letters()

    def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        dl.run(cancelled, TOPIC, b"")
    with pytest.raises(KeyboardInterrupt):
        dl.run(lambda: (_ for _ in ()).throw(KeyboardInterrupt), TOPIC, b"")
    assert dl.total == 0


async def test_async_handlers_too() -> None:
    dl = letters()

    async def ok() -> str:
        return "shown"

    async def bad() -> str:
        raise ZeroDivisionError("division by zero")

    assert await dl.run_async(ok, TOPIC, b"") == "shown"
    out = await dl.run_async(bad, TOPIC, b"")
    assert isinstance(out, Letter) and out.kind == QUARANTINED and out.reason == "ZeroDivisionError"


def test_who_sends_a_refusal_letter() -> None:
    """Ingest letters contract breaches of what it stores: others only count them."""
    dl = letters()

    def refuse() -> None:
        raise m.ContractError("bad")

    for kind, needed in ((topics.Kind.TELEMETRY, False), (topics.Kind.ALERT, True),
                         (topics.Kind.DISPLAY, True)):
        topic = f"{topics.PREFIX}/{SITE}/{kind}/fire/fd-1" if kind is topics.Kind.TELEMETRY \
            else f"{topics.PREFIX}/{SITE}/{kind}/x-1"
        out = dl.run(refuse, topic, b"")
        assert isinstance(out, Letter) and dl.needs_letter(out) is needed, kind
    crashed = dl.run(_buggy, TOPIC, b"")
    assert isinstance(crashed, Letter)
    assert dl.needs_letter(crashed)


@given(topic=st.text(max_size=300), payload=st.binary(max_size=2000),
       text=st.text(max_size=2000))
def test_any_topic_payload_and_reason_make_a_valid_letter(topic: str, payload: bytes,
                                                          text: str) -> None:
    """Stored or refused: whatever came, the letter itself is a valid message."""
    dl = letters()

    def refuse() -> None:
        raise m.ContractError(text)

    out = dl.run(refuse, topic, payload)
    assert isinstance(out, Letter)
    letter = m.decode(out.payload, m.DeadLetter)
    assert letter.topic == topic and letter.size == len(payload)
    assert topics.parse(out.topic).kind is topics.Kind.DEADLETTER


@given(value=st.integers(min_value=-10**6, max_value=10**6))
def test_what_works_is_never_lettered(value: int) -> None:
    """The positive side: a handler that works is returned as it is, nothing counted."""
    dl = letters()
    assert dl.run(lambda: value, TOPIC, b"") == value
    assert dl.total == 0
