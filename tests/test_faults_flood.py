"""Bad input at a flood rate, and hostile strings, through the real gateway and ingest:
malformed, oversized, NaN, wrong-type and unknown-device payloads are dead-lettered and
counted, the services keep running, the good messages beside them all arrive, and their
latency stays bounded. Hostile text is stored exactly or refused, never altered."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from functools import partial
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facility import messages as m
from facility import topics
from facility.influx import InfluxClient
from facility.messages import Family, Reading
from facility.settings import Settings
from facility.site import load_site
from gateway.service import Gateway
from ingest.service import Ingest
from tests.conftest import SITE_FILE, catalog
from tests.helpers import count_points, eventually, publish_all, rows

pytestmark = pytest.mark.slow
SITE = "panyu-admin-centre"
LEVEL = "application/app/device/a84041000181c102/event/up"  # the west gate's level sensor


def uplink(level: float, when: datetime, eui: str = "a84041000181c102") -> bytes:
    return msgspec.json.encode({"time": when.isoformat(), "deviceInfo": {"devEui": eui},
                                "object": {"water_level_cm": level}})


def malformed(i: int) -> tuple[str, bytes]:
    kind = i % 6
    if kind == 0:
        return LEVEL, b"\x00\xff not json"
    if kind == 1:
        return LEVEL, b'{"deviceInfo": {"devEui": "a84041000181c102"}, "time": "' + \
            b"x" * 70_000 + b'"}'  # oversized
    if kind == 2:
        return LEVEL, b'{"time": "2026-11-28T01:00:00Z", "deviceInfo": {"devEui": '\
            b'"a84041000181c102"}, "object": {"water_level_cm": "NaN"}}'  # wrong type
    if kind == 3:
        eui = f"ffff{i:012x}"  # a device nobody configured
        return f"application/app/device/{eui}/event/up", uplink(1.0, datetime.now(UTC), eui)
    if kind == 4:  # canonical, but NaN: JSON has no NaN, so not even the contract's JSON
        return (topics.telemetry(SITE, "drainage", "wl-west-gate"),
                b'{"site":"%s","family":"drainage","device":"wl-west-gate","ts":1,'
                b'"values":{"water_level":NaN}}' % SITE.encode())
    return (topics.telemetry(SITE, "drainage", "no-such-device"),  # unknown, and bad ts
            m.encode(Reading(site=SITE, family=Family.DRAINAGE, device="no-such-device",
                             ts=time.time_ns(), values={"water_level": 1.0})).replace(
                                 b'"ts":', b'"ts":-'))


async def test_flood_of_bad_input_is_dead_lettered_and_the_rest_flows(
        settings: Settings, influx: InfluxClient, unique: str) -> None:
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={
        "client_id": f"ingest-{unique}", "batch_interval": 0.05, "session_expiry": 300})})
    bad = [malformed(i) for i in range(6000)]
    vendor_bad = sum(1 for t, _ in bad if not t.startswith(topics.PREFIX))
    canonical_bad = len(bad) - vendor_bad
    async with AsyncExitStack() as stack:
        ingest = await stack.enter_async_context(Ingest(settings))
        gateway = await stack.enter_async_context(Gateway(settings, catalog(load_site(SITE_FILE)),
                                                          "gw-iot"))
        await ingest.wait_ready()
        await gateway.wait_ready()
        base = float(int(datetime.now(UTC).timestamp()))  # whole seconds: exact times
        latencies: list[float] = []

        async def good_ones() -> None:
            for n in range(20):
                when = datetime.fromtimestamp(base - 60 + n, UTC)
                sent = time.monotonic()
                await publish_all(settings.mqtt, [(LEVEL, uplink(10.0 + n, when))])
                ts = int(when.timestamp()) * 10**9
                await eventually(partial(rows, influx, "SELECT water_level FROM drainage "
                                                       f"WHERE time = {ts}"),
                                 bool, 60, f"good reading {n}", step=0.02)
                latencies.append(time.monotonic() - sent)

        flood_started = time.monotonic()
        await asyncio.gather(publish_all(settings.mqtt, bad), good_ones())
        flood_took = time.monotonic() - flood_started
        await eventually(lambda: asyncio.sleep(0, gateway.dead_letters),
                         lambda n: n >= vendor_bad, 60, "every bad vendor payload dead-lettered")
        await eventually(lambda: asyncio.sleep(0, ingest.dead_letters),
                         lambda n: n >= canonical_bad, 60, "every bad canonical message")
        stored_letters = await eventually(lambda: count_dead(influx), lambda n: n >= len(bad),
                                          60, "the dead letters stored")
        assert gateway.failed is None
        assert ingest.failed is None
    assert gateway.dead_letters == vendor_bad
    assert ingest.dead_letters == canonical_bad
    assert stored_letters == len(bad)
    assert await count_points(influx, "drainage") == 20
    worst = max(latencies)
    print(f"{len(bad)} bad messages in {flood_took:.1f}s; good reading to InfluxDB: "
          f"median {sorted(latencies)[10]:.3f}s, worst {worst:.3f}s")
    assert worst < 10.0


async def count_dead(influx: InfluxClient) -> int:
    found = await rows(influx, 'SELECT count("reason") FROM dead_letter')
    return int(found[0]["count"]) if found else 0


hostile = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=hostile, code=hostile)
def test_hostile_strings_are_stored_exactly(text: str, code: str, settings: Settings,
                                            unique: str) -> None:
    """Event text and a vendor error code full of quotes, backslashes, newlines, NULs,
    emoji and right-to-left marks: exactly as sent in InfluxDB, or dead-lettered."""
    asyncio.run(_hostile(text, code, settings, unique))


# Text with nothing to refuse: no control characters, no surrogates, not empty.
plain = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=plain, code=plain)
def test_plain_strings_are_always_stored_exactly(text: str, code: str, settings: Settings,
                                                 unique: str) -> None:
    """The positive side: quotes, backslashes, emoji, Chinese and right-to-left marks with
    nothing to refuse must be stored as sent, never dead-lettered (a pipeline that
    refused everything would pass the test above)."""
    asyncio.run(_hostile(text, code, settings, unique, must_store=True))


async def _hostile(text: str, code: str, settings: Settings, unique: str,
                   must_store: bool = False) -> None:
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={
        "client_id": f"ingest-{unique}", "batch_interval": 0.05, "session_expiry": 300})})
    now = datetime.now(UTC)
    charger_ts = int(now.timestamp()) * 10**9 + now.microsecond * 1000
    event_no = time.monotonic_ns() % 10**9
    local = now.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")
    event = msgspec.json.encode({"panel": "FP-EB", "loop": 1, "addr": 2, "evt": "FAULT",
                                 "evtNo": event_no, "desc": text, "time": local})
    charger = msgspec.json.encode({
        "chargePointId": "PYGOV-CP-01", "connectorId": 1, "status": "Faulted",
        "errorCode": code, "power": 0.0, "energy": 0, "temperature": 30.0,
        "timestamp": now.isoformat()})
    async with AsyncExitStack() as stack:
        influx = await stack.enter_async_context(InfluxClient(settings.influx))
        await influx.ensure_database()
        ingest = await stack.enter_async_context(Ingest(settings))
        gateway = await stack.enter_async_context(Gateway(settings, catalog(load_site(SITE_FILE)),
                                                          "gw-iot"))
        await ingest.wait_ready()
        await gateway.wait_ready()
        before = ingest.dead_letters + gateway.dead_letters
        await publish_all(settings.mqtt, [("gst/FP-EB/1/2/event", event),
                                          ("evcp/PYGOV-CP-01/status", charger)])

        async def landed() -> tuple[list[dict[str, object]], list[dict[str, object]], int]:
            events = await rows(influx, "SELECT text FROM device_event WHERE "
                                        f"device = 'fd-ebw-02' AND id = 'FP-EB-{event_no}'")
            codes = await rows(influx, "SELECT error_code FROM ev_charger WHERE "
                                       f"device = 'evc-cp-01' AND time = {charger_ts}")
            letters = ingest.dead_letters + gateway.dead_letters - before
            return events, codes, letters

        events, codes, letters = await eventually(
            landed, lambda r: len(r[0]) + len(r[1]) + r[2] >= 2, 30, "both messages")
    assert [e["text"] for e in events] in ([text], [])
    assert [c["error_code"] for c in codes] in ([code], [])
    assert len(events) + len(codes) + letters == 2
    if must_store:
        assert ([e["text"] for e in events], [c["error_code"] for c in codes]) == \
            ([text], [code])
