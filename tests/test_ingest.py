"""Ingest against the real broker and the real InfluxDB: values stored exactly, bad
messages dead-lettered without losing the good ones beside them, and nothing lost when
InfluxDB restarts in the middle of a stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from facility import messages as m
from facility import topics
from facility.influx import InfluxClient
from facility.localservers import InfluxServer, MosquittoServer
from facility.messages import Family, Reading
from facility.settings import Settings
from ingest.service import Ingest
from tests.conftest import make_settings
from tests.helpers import Collector, count_points, eventually, publish_all, rows


def reading(site: str, device: str, ts: int, seq: int, **values: m.Scalar) -> Reading:
    return Reading(site=site, family=Family.DRAINAGE, device=device, ts=ts, seq=seq,
                   values=values, units={k: "cm" for k in values if k == "level"},
                   tags={"place": "西门排水管（地铁施工沉降）", "zone": "west-gate"},
                   gateway="gw-test")


def for_site(settings: Settings, site: str) -> Settings:
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(
        update={"site": site, "client_id": f"ingest-{site}", "batch_interval": 0.05,
                "session_expiry": 300})})


async def test_readings_are_stored_exactly(settings: Settings, influx: InfluxClient,
                                           unique: str) -> None:
    site = f"t{unique}"
    settings = for_site(settings, site)
    now = time.time_ns()
    sent = [reading(site, f"wl-{i % 5}", now + i * 1000, i, level=i * 0.1 + 0.05,
                    battery=3.6, pump_running=i % 2 == 0, note=f"备注 {i} \"quoted\" \\ ,=")
            for i in range(200)]
    async with Ingest(settings) as ingest:
        await ingest.wait_ready()
        await publish_all(settings.mqtt, [(topics.telemetry(r.site, r.family, r.device),
                                           m.encode(r)) for r in sent])
        await eventually(lambda: count_points(influx, "drainage", f"site = '{site}'"),
                         lambda n: n == 200, 20, "200 points")
    stored = await rows(influx, f"SELECT * FROM drainage WHERE site = '{site}'")
    by_time = {row["time"]: row for row in stored}
    for r in sent:
        row = by_time[r.ts]
        assert row["device"] == r.device
        assert row["level"] == r.values["level"]
        assert row["battery"] == 3.6
        assert row["pump_running"] is r.values["pump_running"]
        assert row["note"] == r.values["note"]
        assert row["place"] == "西门排水管（地铁施工沉降）"
        assert row["quality"] == "good"
        assert row["gateway"] == "gw-test"


async def test_bad_messages_are_dead_lettered_and_the_good_ones_kept(
        settings: Settings, influx: InfluxClient, unique: str) -> None:
    site = f"t{unique}"
    settings = for_site(settings, site)
    now = time.time_ns()
    good = [reading(site, "wl-1", now + i, i, level=float(i)) for i in range(10)]
    topic = topics.telemetry(site, Family.DRAINAGE, "wl-1")
    bad = [
        (topic, b"not json at all"),
        (topic, b'{"v": 2, "site": "x"}'),  # a future schema version
        (topic, m.encode(reading(site, "wl-2", now, 1, level=1.0))),  # device mismatch
        (topic, b'{"site":"%s","family":"drainage","device":"wl-1","ts":%d,"values":{"level":NaN}}'
         % (site.encode(), now)),
        (topic, m.encode(Reading(site=site, family=Family.DRAINAGE, device="wl-1", ts=now + 99,
                                 values={"level": 1.0}, tags={"place": "back\\slash"}))),
        (topics.telemetry(site, Family.DRAINAGE, "wl-1").replace("drainage", "unknownfam"),
         m.encode(good[0])),
    ]
    messages = [(topic, m.encode(r)) for r in good[:5]] + bad + \
               [(topic, m.encode(r)) for r in good[5:]]
    async with Collector(settings.mqtt, topics.subscription(topics.Kind.DEADLETTER, site)) as dl, \
            Ingest(settings) as ingest:
        await ingest.wait_ready()
        await publish_all(settings.mqtt, messages)
        letters = await dl.wait_for(len(bad))
        await eventually(lambda: count_points(influx, "drainage", f"site = '{site}'"),
                         lambda n: n == 10, 20, "the 10 good points")
        assert ingest.dead_letters == len(bad)
        # The dead letters themselves are stored for the control room, with the payload.
        stored = await eventually(
            lambda: rows(influx, f"SELECT * FROM dead_letter WHERE site = '{site}'"),
            lambda r: len(r) == len(bad), 20, "stored dead letters")
    assert "not json at all" in {row["payload"] for row in stored}
    reasons = [m.decode(p, m.DeadLetter).reason for _, p in letters]
    assert any("JSON" in r or "malformed" in r for r in reasons)
    assert any("schema version 2" in r for r in reasons)
    assert any("arrived on the topic of" in r for r in reasons)
    assert any("cannot be stored exactly" in r for r in reasons)
    assert any("unknownfam" in r or "family" in r for r in reasons)


async def test_type_conflict_rejects_only_the_bad_point(settings: Settings, influx: InfluxClient,
                                                        unique: str) -> None:
    site = f"t{unique}"
    settings = for_site(settings, site).model_copy(
        update={"ingest": for_site(settings, site).ingest.model_copy(
            update={"batch_interval": 1.0})})
    now = time.time_ns()
    first = reading(site, "wl-1", now, 0, level=1.0)
    # 'level' is a float field now; a string 'level' in the next batch conflicts.
    batch = [reading(site, "wl-1", now + i, i, level=float(i)) for i in range(1, 100)]
    conflicting = reading(site, "wl-1", now + 50_000, 50, level="high")
    topic = topics.telemetry(site, Family.DRAINAGE, "wl-1")
    async with Collector(settings.mqtt, topics.subscription(topics.Kind.DEADLETTER, site)) as dl, \
            Ingest(settings) as ingest:
        await ingest.wait_ready()
        await publish_all(settings.mqtt, [(topic, m.encode(first))])
        await eventually(lambda: count_points(influx, "drainage", f"site = '{site}'"),
                         lambda n: n == 1, 20, "the first point")
        await publish_all(settings.mqtt, [(topic, m.encode(r)) for r in batch[:40]]
                          + [(topic, m.encode(conflicting))]
                          + [(topic, m.encode(r)) for r in batch[40:]])
        letters = await dl.wait_for(1)
        await eventually(lambda: count_points(influx, "drainage", f"site = '{site}'"),
                         lambda n: n == 100, 20, "100 good points")
    letter = m.decode(letters[0][1], m.DeadLetter)
    assert "field type conflict" in letter.reason
    assert m.decode(letter.payload, Reading).values["level"] == "high"


@pytest.mark.slow
async def test_influxdb_restart_loses_nothing(tmp_path: Path, mosquitto_server: MosquittoServer,
                                              own_influx: InfluxServer, unique: str) -> None:
    site = f"t{unique}"
    settings = for_site(make_settings(tmp_path, mosquitto_server.url, own_influx.url,
                                      f"restart_{unique}"), site)
    topic = topics.telemetry(site, Family.DRAINAGE, "wl-1")
    start = time.time_ns()
    sent = 0

    async def stream(n: int) -> None:
        nonlocal sent
        batch = [reading(site, "wl-1", start + (sent + i) * 1_000_000, sent + i,
                         level=float(sent + i)) for i in range(n)]
        await publish_all(settings.mqtt, [(topic, m.encode(r)) for r in batch])
        sent += n

    async with Ingest(settings) as ingest, InfluxClient(settings.influx) as influx:
        await ingest.wait_ready()
        await stream(300)
        await eventually(lambda: count_points(influx, "drainage"), lambda n: n == 300, 20,
                         "the first 300 points")
        own_influx.stop()
        for _ in range(5):  # keeps publishing while InfluxDB is down
            await stream(200)
            await asyncio.sleep(0.2)
        writer = ingest.writer
        assert writer is not None
        await eventually(lambda: asyncio.sleep(0, writer.stats.retries),
                         lambda n: n > 0, 20, "ingest to notice the outage")
        own_influx.start()
        await stream(300)
        stored = await eventually(lambda: count_points(influx, "drainage"),
                                  lambda n: n == sent, 60, f"all {sent} points after restart")
    assert stored == sent == 1600


def test_shared_subscriptions_are_the_canonical_filters_under_the_group(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "mqtt://127.0.0.1:1", "http://127.0.0.1:1", "unused")
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(
        update={"site": "site-a", "shared_group": "ingest"})})
    assert Ingest(settings).subscriptions() == [
        f"$share/ingest/{topics.subscription(kind, site='site-a')}"
        for kind in (topics.Kind.TELEMETRY, topics.Kind.STATUS, topics.Kind.EVENT,
                     topics.Kind.DEADLETTER)]


async def test_copies_on_a_shared_subscription_store_each_reading_once(
        settings: Settings, influx: InfluxClient, unique: str) -> None:
    """N copies share the load; each one's loss count takes the others' messages for lost
    (the limit ingest/service.py documents: loss counting is right for one copy only)."""
    site = f"t{unique}"
    settings = for_site(settings, site)
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(
        update={"shared_group": f"g{unique}"})})
    now = time.time_ns()
    sent = [reading(site, f"wl-{i % 5}", now + i * 1000, i + 1, level=i * 0.5)
            for i in range(300)]
    async with Ingest(settings, client_id=f"ingest-a-{unique}") as a, \
            Ingest(settings, client_id=f"ingest-b-{unique}") as b:
        await a.wait_ready()
        await b.wait_ready()
        await publish_all(settings.mqtt, [(topics.telemetry(r.site, r.family, r.device),
                                           m.encode(r)) for r in sent])
        await eventually(lambda: count_points(influx, "drainage", f"site = '{site}'"),
                         lambda n: n == 300, 20, "300 points")
        await eventually(lambda: asyncio.sleep(0, a.written + b.written),
                         lambda n: n == 300, 10, "both copies' counts")
        assert a.written > 0 and b.written > 0, "the broker gave every message to one copy"
        for copy in (a, b):
            copy.sequences.check(float("inf"))  # past any grace
        # Each copy saw only its share of gw-test's numbers 1..300: the rest are gaps.
        assert a.sequences.lost["gw-test"] + b.sequences.lost["gw-test"] > 0
