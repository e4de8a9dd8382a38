"""Ingest workers killed mid-run: a worker of three SIGKILLed and restarted, or dead until
the run is over and then replaced or retired, or retired by the survivors when its lease
runs out; every number audited in InfluxDB (bench/ingest_workers.py)."""

from __future__ import annotations

import uuid

from bench.common import Figure, figure, servers
from bench.ingest_workers import Outcome, Servers, run_kill
from facility.localservers import postgres_database


def describe(label: str, o: Outcome, *, none_lost: bool) -> list[Figure]:
    missing = figure(f"{label}: numbers missing from InfluxDB (audit)", len(o.missing),
                     "msgs", at_most=0 if none_lost else None)
    out = [figure(f"{label}: numbers confirmed by the broker", o.published, "msgs"), missing,
           figure(f"{label}: lost by the shared loss check", o.lost_counted, "msgs"),
           figure(f"{label}: late by the shared loss check", o.late_counted, "msgs")]
    if o.after_retire and not o.held:  # adopted: the survivors retired the slot
        out.append(figure(f"{label}: run over -> all stored", o.drain_seconds, "s"))
    if o.held:
        out += [figure(f"{label}: held by the broker for the dead slot", o.held, "msgs"),
                figure(f"{label}:   of them confirmed before the kill", o.held_before_kill,
                       "msgs"),
                figure(f"{label}:   of them confirmed after the kill", o.held_after_kill,
                       "msgs"),
                figure(f"{label}: slot taken again -> all stored", o.drain_seconds, "s")
                if not o.missing else
                figure(f"{label}: slot taken again, never all stored", len(o.missing), "msgs")]
    return out


async def run(quick: bool = False, minutes: float | None = None) -> list[Figure]:
    count = 3000 if quick else 30_000
    rate = 1000.0 if quick else 500.0
    if minutes is not None:
        count = int(minutes * 60 * rate)
    figures: list[Figure] = []
    # (label, restart at once, session expiry, broker's queue per client, loss grace, whether
    # the design must lose nothing there)
    cases = [("restart", True, None, 100_000, 30.0, True),
             ("gone", False, None, 100_000, 30.0, True),
             ("retired", False, None, 100_000, 30.0, True),
             ("adopted", False, None, 100_000, 30.0, True),
             ("gone, clean session", False, 0, 100_000, 5.0, False),
             ("gone, queue of 200", False, None, 200, 5.0, False)]
    for label, restart, expiry, queue, grace, none_lost in cases:
        with postgres_database("facility_bench") as state, \
                servers(f"max_queued_messages {queue}\n") as (broker, influx, folder):
            site = f"b{uuid.uuid4().hex[:6]}"
            s = Servers(broker.url, influx.url, f"bench_{site}", state, site, folder)
            outcome = await run_kill(s, count=count, rate=rate, restart=restart,
                                     grace=grace, session_expiry=expiry,
                                     retire=label == "retired", adopt=label == "adopted",
                                     slot_ttl=5.0 if label == "adopted" else 0.0)
        figures += describe(f"{label} ({count} at {rate:g}/s)", outcome,
                            none_lost=none_lost)
    return figures
