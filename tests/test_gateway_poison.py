"""A message that makes the gateway's handler fail is quarantined at its first failure and
never comes back: the gateway carries on with the next message, across restarts on the
same persistent session, and the sequence numbers stay gap-free (nothing counted lost)."""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest

from facility import messages as m
from facility import topics
from facility.messages import Quality, Reading
from facility.settings import Settings
from gateway.service import Gateway
from gateway.vendors import VendorDecoder
from tests.conftest import catalog
from tests.helpers import Collector, eventually, publish_all, stop_modbus
from tests.test_gateway import SITE, Meter, campus, modbus_site, serve, vendor_messages

MARK = "POISON"
# The first register of a meter reading 229.0 V (float32, high word first).
BROKEN_WORD = struct.unpack(">2H", struct.pack(">f", 229.0))[0]


@pytest.fixture
def buggy_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder with a bug that only one payload triggers, after it took a sequence
    number (the case that used to leave a gap)."""
    original = VendorDecoder.decode

    def decode(self: VendorDecoder, topic: str, payload: bytes, seq: Any) -> Any:
        if MARK.encode() in payload:
            seq()
            raise RuntimeError("a bug met on this payload")
        return original(self, topic, payload, seq)

    monkeypatch.setattr(VendorDecoder, "decode", decode)


def smoke(now: float, desc: str = "") -> tuple[str, bytes]:
    topic, payload = vendor_messages(now)[0]  # a GST detector's data report
    if desc:
        payload = payload.replace(b'"state"', f'"note":"{desc}","state"'.encode())
    return topic, payload


async def test_poison_is_quarantined_once_and_the_gateway_goes_on(
        settings: Settings, buggy_decoder: None) -> None:
    site = campus()
    tel = topics.subscription(topics.Kind.TELEMETRY, SITE)
    dead = topics.subscription(topics.Kind.DEADLETTER, SITE)
    async with Collector(settings.mqtt, tel) as readings, \
            Collector(settings.mqtt, dead) as letters:
        # First start: the gateway's persistent session is made, then it stops.
        async with Gateway(settings, catalog(site), "gw-iot") as gw:
            await gw.wait_ready()
        # While it is away, the poison and a good report wait in its session.
        await publish_all(settings.mqtt, [smoke(time.time(), MARK), smoke(time.time())])
        async with Gateway(settings, catalog(site), "gw-iot") as gw:
            await gw.wait_ready()
            await letters.wait_for(1)
            await readings.wait_for(1)
            assert gw.failed is None
            assert gw.dead_letters == 1
        # Restarted on the same session: the poison is not redelivered, new data flows.
        async with Gateway(settings, catalog(site), "gw-iot") as gw:
            await gw.wait_ready()
            await publish_all(settings.mqtt, [smoke(time.time()), smoke(time.time(), MARK),
                                              smoke(time.time())])
            await readings.wait_for(3)
            await letters.wait_for(2)
            await eventually(lambda: _after(gw.dead_letters), lambda n: n == 1, 10,
                             "the second poison's letter")
            assert gw.failed is None
    assert len(letters.messages) == 2  # once each: the first poison never came back
    for _, payload in letters.messages:
        letter = m.decode(payload, m.DeadLetter)
        assert letter.source == "gw-iot" and MARK in letter.payload
        assert letter.reason.startswith("RuntimeError: a bug met on this payload (at "
                                        "tests/test_gateway_poison.py:")
    seqs = [r.seq for r in readings.decoded(Reading)]
    # Each gateway run counts from 1; within a run no number is skipped for the poison.
    assert seqs == [1, 1, 2]


async def _after(value: int) -> int:
    return value


async def test_a_decode_bug_on_a_modbus_block_is_quarantined(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding one meter's registers fails (a bug): its registers are dead-lettered, its
    reading says which values are missing and why, and its neighbour on the same link and
    the meter's own next polls go on."""
    import gateway.service as service
    from gateway.modbus.decode import decode_block as original  # what gateway.service calls
    failures: list[str] = []

    def decode_block(block: Any, data: Any, values: Any, errors: Any) -> None:
        if not failures and block.fields[0].unit == 0 and data and data[0] == BROKEN_WORD:
            failures.append("once")
            raise ZeroDivisionError("a bug met on these registers")
        original(block, data, values, errors)

    monkeypatch.setattr(service, "decode_block", decode_block)
    broken, fine = Meter(1, 229.0), Meter(2, 231.0)
    server, port = await serve(broken, fine)
    site = modbus_site({"em-1": (port, 1), "em-2": (port, 2)})
    tel = topics.subscription(topics.Kind.TELEMETRY, SITE)
    dead = topics.subscription(topics.Kind.DEADLETTER, SITE)
    try:
        async with Collector(settings.mqtt, tel) as readings, \
                Collector(settings.mqtt, dead) as letters, \
                Gateway(settings, catalog(site), "gw-m") as gw:
            await gw.wait_ready()
            [(_, raw)] = await letters.wait_for(1)
            letter = m.decode(raw, m.DeadLetter)
            assert letter.reason.startswith("ZeroDivisionError: a bug met on these registers "
                                            "(at tests/test_gateway_poison.py:")
            assert letter.topic == topics.telemetry(SITE, "energy", "em-1")
            assert '"registers":[' in letter.payload

            def good(device: str) -> int:
                return sum(1 for r in readings.decoded(Reading)
                           if r.device == device and r.quality is Quality.GOOD)

            await eventually(lambda: _after(min(good("em-1"), good("em-2"))),
                             lambda n: n >= 3, 10, "both meters reading on")
            assert gw.failed is None
        hurt = [r for r in readings.decoded(Reading) if r.quality is Quality.BAD_VALUE]
        assert len(hurt) == 1 and hurt[0].device == "em-1"
        assert set(hurt[0].errors.values()) == {"decode failed (registers quarantined)"}
        assert not set(hurt[0].errors) & set(hurt[0].values)
    finally:
        await stop_modbus(server)


async def test_a_command_that_meets_a_bug_is_answered_failed() -> None:
    """A bug while executing a command must not leave the operator without an answer: the
    result is FAILED with the error and where it happened; nothing is repeated."""
    from types import SimpleNamespace

    from gateway.commands import CommandExecutor

    finished: list[tuple[str, m.CommandStatus, str]] = []
    results: list[tuple[m.CommandStatus, str]] = []

    async def broken(command: m.Command) -> tuple[m.CommandStatus, str]:
        raise KeyError("register map has no 'ack_seq'")

    fake = SimpleNamespace(
        _execute=broken,
        history=SimpleNamespace(finish=lambda cid, status, detail: finished.append(
            (cid, status, detail))),
        _result=lambda command, status, detail: results.append((status, detail)))
    now = time.time_ns()
    command = m.Command(id="cmd-1", site=SITE, family=m.Family.BOLLARD, device="bollard-s01",
                        action="raise", issued_at=now, expires_at=now + 10**10,
                        issued_by="guard", reason="drill")
    status = await CommandExecutor.execute(fake, command)  # type: ignore[arg-type]  # not a library's: a stand-in with only what execute() touches
    assert status is m.CommandStatus.FAILED
    [(cid, stored, detail)] = finished
    assert cid == "cmd-1" and stored is m.CommandStatus.FAILED
    assert detail.startswith("internal error: KeyError: \"register map has no 'ack_seq'\" (at "
                             "tests/test_gateway_poison.py:")
    assert results == [(m.CommandStatus.FAILED, detail)]
