"""The soak benchmark's mutator (bench/mutate.py): it finds every field the vendor
mappings read, builds good messages the real decoder accepts, and each mutation changes
exactly the field it names (or the whole message)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from bench import mutate
from bench.mutate import Index, Key, Where


def test_reads_walks_the_mappings_jmespath() -> None:
    assert mutate.reads("payload.data[?ch==`1`].val | [0]") == [
        (Key("payload"), Key("data"), Where("ch", 1), Key("val"))]
    assert mutate.reads("payload.rxInfo[0].rssi") == [
        (Key("payload"), Key("rxInfo"), Index(0), Key("rssi"))]
    assert mutate.reads("join('/', topic[1:4])") == [
        (Key("topic"), Index(1)), (Key("topic"), Index(2)), (Key("topic"), Index(3))]
    assert set(mutate.reads(
        "payload.evtNo && join('-', [payload.panel, to_string(payload.evtNo)])")) == {
        (Key("payload"), Key("evtNo")), (Key("payload"), Key("panel"))}


def test_every_shape_of_every_mapping_has_its_fields() -> None:
    shapes = {s.id: s for s in mutate.load_shapes()}
    assert {s.split("/")[0] for s in shapes} == {p.stem for p in mutate.VENDORS_DIR.glob("*.yaml")}
    names = {f.name for f in shapes["acrel-efm/monitor report"].fields}
    assert {"payload.sn", "payload.ts", "payload.data[?ch==1].val", "payload.alarm"} <= names
    assert {f.name for f in shapes["gst-fire/detector data"].fields} >= {
        "topic[1]", "topic[2]", "topic[3]", "payload.time", "payload.state"}
    mutations = mutate.all_mutations(list(shapes.values()))
    fields = sum(len(s.fields) for s in shapes.values())
    assert len(mutations) == fields * len(mutate.FIELD_RULES) + \
        len(shapes) * len(mutate.MESSAGE_RULES)


def _good(shape: mutate.Shape) -> tuple[str, dict[str, object]]:
    key = {"gst/+/+/+/data": "FP-EB/1/1", "gst/+/+/+/event": "FP-EB/1/1",
           "gst/+/status": "FP-EB", "gst/+/event": "FP-EB"}.get(shape.topic, "KEY-1")
    return mutate.synthesize(shape, key, time.time(), 7)


@pytest.mark.parametrize("shape", mutate.load_shapes(), ids=lambda s: s.id)
def test_each_mutation_changes_its_field_only(shape: mutate.Shape) -> None:
    topic, body = _good(shape)
    assert mutate.shape_of([shape], topic) is shape
    for mutation in mutate.all_mutations([shape]):
        new_topic, payload = mutate.apply(mutation, topic, body)
        assert isinstance(payload, bytes)
        if mutation.field is None:
            assert len(payload) < len(mutate.encode(body))
            continue
        if mutation.field.in_topic:
            assert payload == mutate.encode(body)
            assert new_topic != topic, mutation.label
            assert "+" not in new_topic and "#" not in new_topic and "\x00" not in new_topic
            continue
        assert new_topic == topic
        if mutation.rule in ("NaN literal", "-1e309 literal", "non-UTF-8 bytes", "1e308",
                             "subnormal 5e-324"):
            continue  # not JSON, or a float json reads back the same
        doc = {"topic": topic.split("/"), "payload": json.loads(payload)}
        for other in shape.fields:
            if other.path != mutation.field.path and not other.in_topic:
                expected = mutate.get({"topic": [], "payload": body}, other.path)
                assert mutate.get(doc, other.path) == expected, (mutation.label, other.name)


def test_raw_literals_are_written_as_they_are() -> None:
    text = mutate.encode({"a": mutate.Raw(b"NaN"), "b": [mutate.Raw(b"-1e309")], "c": "x"})
    assert text == b'{"a":NaN,"b":[-1e309],"c":"x"}'


def test_the_mutator_covers_everything_in_one_round() -> None:
    shapes = mutate.load_shapes()
    mutator = mutate.Mutator(shapes, seed=3)
    for _ in range(len(mutator.mutations)):
        mutator.next()
    assert len(mutator.covered) == len(mutate.all_mutations(shapes))


def test_good_messages_are_accepted_by_the_gateways_decoder() -> None:
    """The synthesized good message of every shape decodes without a dead letter."""
    from facility.settings import load_settings
    from facility.site import load_site
    from facility.vendormaps import load_vendors
    from gateway.vendors import VendorDecoder

    settings = load_settings(None)
    site = load_site(settings.site_path)
    vendors = load_vendors(mutate.VENDORS_DIR)
    gateway = next(g.id for g in site.gateways if g.vendors)
    for shape in mutate.load_shapes():
        device = next(d for d in site.devices_of(gateway)
                      if d.mqtt is not None and d.mqtt.vendor == shape.vendor
                      and (("/" in d.mqtt.key) == ("+/+/+" in shape.topic)))
        assert device.mqtt is not None
        decoder = VendorDecoder(vendors[shape.vendor], site, gateway, time.time_ns)
        topic, body = mutate.synthesize(shape, device.mqtt.key, time.time(), 3)
        out = decoder.decode(topic, mutate.encode(body), iter(range(1, 100)).__next__)
        assert out.device_id == device.id


@pytest.mark.parametrize("shape", mutate.load_shapes(), ids=lambda s: s.id)
def test_mutations_of_fields_a_message_lacks(shape: mutate.Shape) -> None:
    """A real device's message carries only some optional fields: every mutation still
    applies (a missing field stays missing, others are added)."""
    topic, body = _good(shape)
    sparse = {k: v for n, (k, v) in enumerate(body.items()) if n % 2 == 0}
    for mutation in mutate.all_mutations([shape]):
        mutate.apply(mutation, topic, sparse)


@pytest.mark.servers
async def test_the_supervisor_counts_each_exit_and_starts_the_service_again(
        tmp_path: Path) -> None:
    from bench.bench_soak import Crash, Supervised

    crashes: list[Crash] = []
    service = Supervised("failing", ["-c", "import sys; print('ValueError: boom'); sys.exit(3)"],
                         tmp_path, crashes, time.monotonic())
    await service.start()
    try:
        for _ in range(2):
            await asyncio.wait_for(service.crashed.wait(), 30)
            service.crashed.clear()
    finally:
        await service.stop()
    assert [c.code for c in crashes[:2]] == [3, 3]
    assert crashes[0].why == "ValueError: boom"
    assert service.process is not None and service.process.returncode is not None


def test_reasons_group_by_class_and_kind() -> None:
    from bench.bench_soak import reason_class, reason_detail

    assert reason_class("MappingError: power: '12.5' is a str, not a number") == "MappingError"
    assert reason_class("no device key at 'payload.sn'") == "(no class named)"
    assert reason_detail("MappingError: power: '12.5' is a str, not a number") == \
        reason_detail("MappingError: temperature: 'x' is a str, not a number")


@pytest.mark.servers
async def test_scrape_sums_each_metric_over_its_labels() -> None:
    from aiohttp import web

    from bench.bench_soak import scrape
    from facility.localservers import free_port

    text = ("# HELP facility_ingest_spooled_points x\n"
            "facility_ingest_spooled_points 12.0\n"
            'facility_ingest_sequence_lost_total{gateway="gw-iot"} 2.0\n'
            'facility_ingest_sequence_lost_total{gateway="gw-energy"} 1.0\n')

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        got = await scrape(port)
    finally:
        await runner.cleanup()
    assert got["facility_ingest_spooled_points"] == 12.0
    assert got["facility_ingest_sequence_lost_total"] == 3.0
    assert await scrape(free_port()) == {}
