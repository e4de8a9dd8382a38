"""Rule evaluation: the campus rules plus 1,000 generated rules over about 2,100 devices, in
one process, one core, no broker and no store.

The site is the campus site file plus generated devices of its own kinds
(bench/campus_load.py); the rules are config/rules/*.yaml plus 1,000 generated rules,
loaded and checked by the real loader (rules.config.load_rules). Every device reports at
its own period on a simulated clock (about 113 readings per simulated second), so rate()
and avg() windows hold as many samples as they would on the campus; the engine ticks once
per simulated second. What is timed per reading is what the rules service does with a
message short of MQTT and the store: parse the topic, decode and check the JSON, evaluate,
and collect the effects of each batch of 500. Ticks are timed apart and counted once per
real second in the capacity figure.

Faults are injected on chosen devices (hot cables, a faulted charger, low voltage, rising
water, rising gas, a fast temperature rise, residual current, the south gate's emergency
mode). The alerts raised must be exactly the ones those faults call for, and nothing else.
"""

from __future__ import annotations

import gc
import heapq
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.campus_load import (
    ENDPOINTS_FILE,
    EXTRA,
    RULES_DIR,
    Device,
    Readings,
    catalog_of,
    generated_rules,
    scaled_site,
    write_yaml,
)
from bench.common import Figure, figure, peak_rss_mb
from facility import messages as m
from facility.endpoints import load_endpoints
from facility.site import load_site
from facility.topology import Topology
from rules.clock import NS
from rules.config import RuleSet, load_rules, rule_files
from rules.engine import Effects, Engine
from rules.intake import Intake

T0 = 1_795_854_600 * NS  # 2026-11-28 16:30 Asia/Shanghai, a Saturday afternoon
BATCH = 500  # messages per batch, as the service takes them
Values = dict[str, m.Scalar]


@dataclass
class Fault:
    """From `start` (s after T0) for `seconds`, `values(elapsed)` override what the device
    reports; `campus` are the shipped rules it must raise, and every generated rule on the
    device that reads `reads` must raise too."""

    device: str
    start: float
    seconds: float
    values: Callable[[float], Values]
    reads: str
    campus: tuple[str, ...] = ()


def faults(readings: Readings) -> list[Fault]:
    kinds: dict[str, list[Device]] = {}
    for device in readings.devices:
        key = "meter3" if device.kind == "meter" and not device.single_phase else device.kind
        kinds.setdefault(key, []).append(device)
    out: list[Fault] = []
    for n in range(5):
        start = 120.0 + 60 * n
        out += [
            Fault(kinds["electrical_fire_monitor"][-1 - n].id, start, 180,
                  lambda e: {"cable_temperature_1": 120.0}, "cable_temperature_1",
                  ("electrical-cable-temperature",)),
            Fault(kinds["electrical_fire_monitor"][-10 - n].id, start, 180,
                  lambda e: {"residual_current": 650.0}, "residual_current",
                  ("electrical-residual-current",)),
            Fault(kinds["ac_charger"][-1 - n].id, start, 1200,
                  lambda e: {"status": "faulted", "error_code": "GroundFailure"}, "status",
                  ("ev-charger-faulted",)),
            Fault(kinds["meter3"][-1 - n].id, start, 300,
                  lambda e: {"voltage_a": 180.0}, "voltage_a"),
            Fault(kinds["water_level"][-1 - n].id, start, 900,
                  lambda e: {"water_level": min(45.0, 6 + 5 * e / 60)}, "water_level",
                  ("waterlogging",)),
            Fault(kinds["gas_sensor"][-1 - n].id, start, 900,
                  lambda e: {"h2s": min(12.0, 1 + 2.2 * e / 60)}, "h2s",
                  ("septic-gas-high",)),
            Fault(kinds["heat_detector"][-1 - n].id, start, 150,
                  lambda e: {"temperature": 27 + 10 * e / 60}, "temperature"),
        ]
    out.append(Fault("bollard-plc-south", 200.0, 60, lambda e: {"mode": "emergency"}, "mode",
                     ("south-gate-emergency",)))
    return out


def expected_alerts(rules: RuleSet, injected: list[Fault]) -> set[tuple[str, str]]:
    """(rule, source) pairs the faults must raise, read off the rule set, not the engine."""
    out: set[tuple[str, str]] = set()
    for fault in injected:
        out |= {(rule, fault.device) for rule in fault.campus}
        for compiled in rules.rules.values():
            if not compiled.id.startswith("gen-") or fault.device not in compiled.sources:
                continue
            names = set()
            for expression in compiled.expressions.values():
                names |= expression.names | expression.sampled
            if fault.reads in names:
                out.add((compiled.id, fault.device))
    return out


def stream(readings: Readings, injected: list[Fault], seconds: float
           ) -> Iterator[tuple[int, str, bytes]]:
    """(time, topic, payload) of every report in time order over `seconds`."""
    by_device: dict[str, list[Fault]] = {}
    for fault in injected:
        by_device.setdefault(fault.device, []).append(fault)
    heap = [(T0 + round(n * 997 % 1000 / 1000 * d.period * NS), n, d)
            for n, d in enumerate(readings.devices)]
    heapq.heapify(heap)
    end = T0 + round(seconds * NS)
    while heap[0][0] < end:
        ts, n, device = heap[0]
        values = readings.values(device)
        for fault in by_device.get(device.id, ()):
            elapsed = (ts - T0) / NS - fault.start
            if 0 <= elapsed < fault.seconds:
                values.update(fault.values(elapsed))
        topic, payload = readings.message(device, ts, values)
        yield ts, topic, payload
        heapq.heapreplace(heap, (ts + round(device.period * NS), n, device))


def build(folder: Path, quick: bool) -> tuple[Engine, Readings, RuleSet]:
    extra = {k: v // 4 for k, v in EXTRA.items()} if quick else EXTRA
    site = load_site(write_yaml(folder / "site.yaml", scaled_site(extra)))
    topology = Topology(catalog_of(site))
    generated = write_yaml(folder / "generated.yaml", generated_rules(topology))
    endpoints = load_endpoints(ENDPOINTS_FILE, site)
    rules = load_rules([*rule_files(RULES_DIR), generated], topology, endpoints)
    return Engine(topology, rules, endpoints, now=T0), Readings(site, topology), rules


async def run(quick: bool) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="facility-bench-rules-") as tmp:
        started = time.process_time()
        engine, readings, rules = build(Path(tmp), quick)
        load_s = time.process_time() - started
    injected = faults(readings)
    expected = expected_alerts(rules, injected)
    seconds = 1500.0  # 25 simulated minutes: every fault's duration has passed
    raised: set[tuple[str, str]] = set()
    reading_cpu = tick_cpu = 0.0
    count = ticks = 0
    next_tick = T0 + NS
    batch: list[tuple[int, str, bytes]] = []

    def confirm(effects: Effects, now: int) -> None:
        """The screens and PA zones confirm what they were sent, as the real ones do."""
        raised.update((a.rule, a.source) for a, action, _, _ in effects.alerts
                      if action == "raised")
        for delivery in effects.deliveries:
            engine.display_ack(m.DisplayAck(site=engine.site, endpoint=delivery.endpoint,
                                            message=delivery.message.id, ts=now), now)

    intake = Intake(engine.site, frozenset(engine.topology.sources))
    intake.warm({s.id: s.family for s in engine.topology.sources.values()})
    decode_cpu = 0.0
    decoded = 0

    def process(items: list[tuple[int, str, bytes]]) -> None:
        for now, topic, payload in items:
            intake.take(engine, topic, payload, now)  # as the service: checks, decode, engine
        confirm(engine.take(), items[-1][0])

    gc.collect()
    for item in stream(readings, injected, seconds):
        while item[0] >= next_tick:  # the ticker runs between batches, as in the service
            if batch:
                t = time.process_time()
                process(batch)
                reading_cpu += time.process_time() - t
                count += len(batch)
                batch = []
            t = time.process_time()
            engine.tick(next_tick)
            confirm(engine.take(), next_tick)
            tick_cpu += time.process_time() - t
            ticks += 1
            next_tick += NS
        batch.append(item)
        if count % 10 == 0 and len(batch) == 1:  # what decoding and checking costs alone
            t = time.process_time()
            for _ in range(20):
                m.decode_reading(item[2])  # as the intake decodes
            decode_cpu += time.process_time() - t
            decoded += 20
        if len(batch) >= BATCH:
            t = time.process_time()
            process(batch)
            reading_cpu += time.process_time() - t
            count += len(batch)
            batch = []
    if batch:
        t = time.process_time()
        process(batch)
        reading_cpu += time.process_time() - t
        count += len(batch)

    per_reading_us = reading_cpu / count * 1e6
    decode_us = decode_cpu / decoded * 1e6
    refused = sum(intake.refused.values())
    per_tick_ms = tick_cpu / ticks * 1e3
    # One core: a tick per real second, the rest of the second for readings.
    capacity = (1.0 - per_tick_ms / 1e3) / (per_reading_us / 1e6)
    missing = expected - raised
    unexpected = raised - expected
    note = ""
    if missing or unexpected:
        note = (f"missing {sorted(missing)[:5]}{'...' if len(missing) > 5 else ''}; "
                f"unexpected {sorted(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}")
    sources = len(engine.topology.sources)
    return [
        figure("rules loaded and checked", len(rules.rules), "rules",
               note=f"{sources} sources, {load_s:.1f} s CPU to build and load"),
        figure("readings evaluated (simulated 25 min)", count, "readings",
               note=f"{count / seconds:.0f} per simulated s, {ticks} ticks"),
        figure("CPU per reading (topic, checks, decode, evaluate, effects)", per_reading_us,
               "us", note=f"of which decoding and checking the JSON {decode_us:.1f} us; "
                          f"{refused} refused"),
        figure("CPU per tick (timers, absence, escalation, outputs)", per_tick_ms, "ms"),
        figure("readings per second on one core, with a tick each second", capacity,
               "/s", at_least=50_000),
        figure("the same without decoding (evaluation pipeline only)",
               (1.0 - per_tick_ms / 1e3) / ((per_reading_us - decode_us) / 1e6), "/s",
               note="Reading objects in, effects out"),
        figure("alerts raised by the injected faults", len(raised & expected), "alerts",
               note=f"{len(expected)} expected"),
        figure("alerts missing or unexpected", len(missing) + len(unexpected), "alerts",
               at_most=0, note=note),
        figure("peak RSS", peak_rss_mb(), "MB"),
    ]
