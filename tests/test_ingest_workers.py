"""Loss detection shared by N ingest workers (ingest/gaps.py, ingest/ledger.py).

The rule first, without servers: numbers spread over three workers and none lost give
zero; numbers never published are counted exactly, after the grace and not before; a
gateway restart, a late number, windows across a boundary, a huge gap. Then the ledger in
a real PostgreSQL (three workers, one checker at a time, the lock passing on), and three
Ingest workers on one shared subscription of a real Mosquitto, storing into a real
InfluxDB: zero false losses, the skipped numbers counted exactly.
"""

from __future__ import annotations

import random
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from bench.ingest_workers import Servers, run_kill
from facility import messages as m
from facility import topics
from facility.influx import InfluxClient
from facility.localservers import InfluxServer, MosquittoServer
from facility.settings import Settings, StateSettings
from ingest.gaps import MAX_NOTICED, WINDOW, Marks, judge
from ingest.ledger import SequenceLedger
from ingest.service import Ingest
from tests.helpers import count_points, eventually, publish_all

GRACE = 60.0


def spread(numbers: list[int], workers: int = 3, gateway: str = "gw", seed: int = 1
           ) -> list[Marks]:
    """The numbers as the broker would spread them: each to one of the workers."""
    rng = random.Random(seed)
    marks = [Marks() for _ in range(workers)]
    for n in numbers:
        marks[rng.randrange(workers)].seen(gateway, n)
    return marks


def union(marks: list[Marks], gateway: str = "gw") -> dict[int, int]:
    out: dict[int, int] = {}
    for one in marks:
        for (g, base), mask in one.windows.items():
            if g == gateway:
                out[base] = out.get(base, 0) | mask
    return out


def kept(windows: dict[int, int], below: int) -> dict[int, int]:
    """The windows the checker leaves in the store after a round (it deletes the judged)."""
    return {b: mask for b, mask in windows.items() if b >= below}


def test_numbers_spread_over_three_workers_none_lost_give_zero() -> None:
    marks = spread(list(range(1, 10_001)))
    assert all(len(w) > 0 for w in marks)
    # Each worker alone sees about two thirds of the numbers missing.
    alone = judge(0, union(marks[:1]), {}, GRACE, 0.0)
    assert alone.lost_count > 6000
    noticed: dict[int, float] = {}
    verdict = judge(0, union(marks), noticed, 0.0, GRACE)
    assert (verdict.lost, verdict.next_seq) == ([], 10_001)
    later = judge(verdict.next_seq, kept(union(marks), verdict.delete_below), noticed,
                  10 * GRACE, GRACE)
    assert later.lost == [] and later.late == 0 and not later.restart
    assert verdict.delete_below == 10_001 - 10_001 % WINDOW


def test_numbers_never_published_are_counted_exactly_after_the_grace() -> None:
    never = {17, *range(500, 510), 4095, 4096, 8191, 11_999}
    numbers = [n for n in range(1, 12_001) if n not in never]
    windows = union(spread(numbers))
    noticed: dict[int, float] = {}
    first = judge(0, windows, noticed, 100.0, GRACE)
    assert first.lost == [] and first.next_seq == 17  # within the grace: not yet
    early = judge(first.next_seq, windows, noticed, 100.0 + GRACE - 0.1, GRACE)
    assert early.lost == [] and early.next_seq == 17
    due = judge(early.next_seq, kept(windows, early.delete_below), noticed, 100.0 + GRACE,
                GRACE)
    assert due.lost == [(17, 17), (500, 509), (4095, 4096), (8191, 8191), (11_999, 11_999)]
    assert due.lost_count == len(never) and due.next_seq == 12_001 and noticed == {}


def test_a_late_number_fills_its_gap_and_is_not_lost() -> None:
    windows = union(spread([n for n in range(1, 101) if n != 50]))
    noticed: dict[int, float] = {}
    assert judge(0, windows, noticed, 0.0, GRACE).next_seq == 50
    windows[0] |= 1 << 50  # another worker stored it meanwhile
    verdict = judge(50, windows, noticed, GRACE + 1, GRACE)
    assert verdict.lost == [] and verdict.next_seq == 101


def test_a_number_counted_lost_that_turns_up_is_late_once() -> None:
    windows = union(spread([n for n in range(1, 101) if n != 50]))
    noticed: dict[int, float] = {}
    judged: set[int] = set()
    judge(0, windows, noticed, 0.0, GRACE, judged)
    counted = judge(50, windows, noticed, GRACE, GRACE, judged)
    assert counted.lost == [(50, 50)] and counted.next_seq == 101 and judged == {50}
    windows[0] |= 1 << 50  # held for a dead worker longer than the grace
    back = judge(101, windows, noticed, GRACE + 1, GRACE, judged)
    assert (back.late, back.lost, judged) == (1, [], set())
    assert judge(101, windows, noticed, GRACE + 2, GRACE, judged).late == 0


def test_a_number_in_a_closed_window_is_late() -> None:
    windows = {WINDOW: (1 << 10) - 1}  # window 0 was judged and deleted
    verdict = judge(WINDOW + 10, {**windows, 0: 1 << 100}, {}, 0.0, GRACE)
    assert verdict.late == 1 and not verdict.restart and verdict.lost == []


def test_a_gateway_restart_counts_the_old_runs_gaps_and_starts_again() -> None:
    old = [n for n in range(1, 5001) if n != 4998]
    noticed: dict[int, float] = {}
    first = judge(0, union(spread(old)), noticed, 0.0, GRACE)
    assert first.next_seq == 4998 and first.delete_below == WINDOW
    windows = kept(union(spread(old)), first.delete_below)
    windows[0] = sum(1 << n for n in range(1, 21))  # the restarted gateway's 1..20
    verdict = judge(first.next_seq, windows, noticed, 1.0, GRACE)
    assert verdict.restart and verdict.lost == [(4998, 4998)]
    assert verdict.next_seq == 21 and verdict.delete_from == WINDOW


def test_a_gap_too_big_to_time_is_counted_at_once() -> None:
    top = MAX_NOTICED + 10
    windows = union(spread([1, 2, top]))
    verdict = judge(0, windows, {}, 0.0, GRACE)
    assert verdict.lost == [(3, top - 1)] and verdict.next_seq == top + 1


# --- the ledger in PostgreSQL ----------------------------------------------------------

@pytest.mark.servers
async def test_three_workers_in_postgresql_one_checker_exact_counts(pg_url: str) -> None:
    never = {3, *range(1000, 1100), 5000}
    numbers = [n for n in range(1, 6001) if n not in never]
    async with AsyncExitStack() as stack:
        ledgers = [await stack.enter_async_context(SequenceLedger(pg_url, f"w{i}", grace=1.0))
                   for i in range(3)]
        for ledger, marks in zip(ledgers, spread(numbers, gateway="gw-a"), strict=True):
            await ledger.record(marks)
        for ledger, marks in zip(ledgers, spread(list(range(1, 6001)), gateway="gw-b"),
                                 strict=True):
            await ledger.record(marks)
        rounds = [await ledger.check(0.0) for ledger in ledgers]
        assert [bool(r) for r in rounds] == [True, False, False]  # one checker at a time
        assert rounds[0]["gw-a"].lost == [] and rounds[0]["gw-b"].next_seq == 6001
        verdicts = await ledgers[0].check(1.0)
        assert verdicts["gw-a"].lost == [(3, 3), (1000, 1099), (5000, 5000)]
        assert verdicts["gw-b"].lost == []
        assert await ledgers[1].totals() == {"gw-a": (102, 0, 0), "gw-b": (0, 0, 0)}
        engine = ledgers[0].engine
        assert engine is not None
        async with engine.connect() as conn:
            listed = (await conn.execute(text(
                "SELECT first_seq, last_seq FROM ingest_seq_lost ORDER BY first_seq"))).all()
            windows = (await conn.execute(text(
                "SELECT DISTINCT base FROM ingest_seq_marks ORDER BY base"))).scalars().all()
        assert [tuple(r) for r in listed] == [(3, 3), (1000, 1099), (5000, 5000)]
        assert windows == [WINDOW]  # the judged window is gone, the open one stays

        # The checker stops: another worker takes the lock and carries on from the cursor.
        await ledgers[0].__aexit__(None, None, None)
        more = Marks()
        for n in range(6001, 6101):
            if n != 6050:
                more.seen("gw-a", n)
        await ledgers[2].record(more)
        assert await ledgers[1].check(10.0) != {}
        taken = await ledgers[1].check(11.0)
        assert taken["gw-a"].lost == [(6050, 6050)] and taken["gw-a"].next_seq == 6101
        assert (await ledgers[2].totals())["gw-a"] == (103, 0, 0)


# --- three Ingest workers on one shared subscription -----------------------------------

def reading(site: str, gateway: str, seq: int, ts: int) -> tuple[str, bytes]:
    r = m.Reading(site=site, family=m.Family.DRAINAGE, device=f"wl-{gateway}", ts=ts,
                  seq=seq, gateway=gateway, values={"level": float(seq)})
    return topics.telemetry(site, "drainage", r.device), m.encode(r)


async def test_three_workers_on_a_shared_subscription_count_loss_exactly(
        settings: Settings, influx: InfluxClient, pg_url: str, unique: str) -> None:
    site = f"t{unique}"
    shared = settings.model_copy(update={
        "state": StateSettings(url=SecretStr(pg_url)),
        "ingest": settings.ingest.model_copy(update={
            "site": site, "shared_group": f"g{unique}", "loss_grace": 1.0,
            "batch_interval": 0.05, "session_expiry": 60})})
    never = {5, *range(700, 720), 1499}
    start = time.time_ns() - 3600 * 10**9
    clean = [reading(site, "gw-clean", n, start + n * 10**6) for n in range(1, 1501)]
    gaps = [reading(site, "gw-gaps", n, start + n * 10**6) for n in range(1, 1501)
            if n not in never]
    async with AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(
            Ingest(shared, client_id=f"ingest-{i}-{unique}")) for i in range(3)]
        for worker in workers:
            await worker.wait_ready()
        assert all(w.ledger is not None for w in workers)
        await publish_all(shared.mqtt, clean + gaps)
        total = len(clean) + len(gaps)

        async def stored() -> int:
            return await count_points(influx, "drainage", f"site = '{site}'")
        await eventually(stored, lambda n: n == total, 30, "every reading stored")
        assert all(w.received > 0 for w in workers), [w.received for w in workers]
        assert sum(w.received for w in workers) == total

        ledger = workers[0].ledger
        assert ledger is not None

        async def judged() -> list[int]:
            return [await ledger.cursor("gw-clean"), await ledger.cursor("gw-gaps")]
        await eventually(judged, lambda c: min(c) > 1500, 20, "every number judged")
        assert await ledger.totals() == {"gw-clean": (0, 0, 0),
                                         "gw-gaps": (len(never), 0, 0)}
        assert sum(w.sequences.lost["gw-gaps"] for w in workers) == len(never)
        assert sum(w.sequences.lost["gw-clean"] for w in workers) == 0


# --- kill -9 a worker process of three, with a sequence audit ---------------------------

@pytest.mark.parametrize("mode", ["restarted", "replaced", "retired", "adopted"])
async def test_kill_9_one_worker_of_three_nothing_lost(
        mosquitto_server: MosquittoServer, influx_server: InfluxServer, pg_url: str,
        tmp_path: Path, unique: str, mode: str) -> None:
    """Slot 2 is SIGKILLed a third of the way through 3,000 numbered readings at
    1,000/s. Restarted at once; or left dead until the run is over (the broker holds what
    it had given the slot, and keeps giving it its share) and then replaced by a new
    process with the slot's client id, or retired (`ingest --retire`: what the slot's
    session holds is stored, then 300 more numbers go to the two survivors); or adopted:
    nobody acts, a live worker retires the slot once its lease (3 s) runs out, then 300
    more. Every number the broker confirmed is in InfluxDB, and the shared loss check
    counted none lost."""
    servers = Servers(mosquitto_server.url, influx_server.url, f"kill_{unique}", pg_url,
                      f"k{unique}", tmp_path)
    outcome = await run_kill(servers, count=3000, rate=1000.0, restart=mode == "restarted",
                             grace=30.0, retire=mode == "retired", adopt=mode == "adopted",
                             slot_ttl=3.0 if mode == "adopted" else 0.0)
    total = 3300 if mode in ("retired", "adopted") else 3000
    assert outcome.published == total
    assert outcome.missing == [], f"{len(outcome.missing)} lost: {outcome.missing[:20]}"
    assert outcome.stored == total
    assert (outcome.lost_counted, outcome.late_counted) == (0, 0)
    if mode == "adopted":
        assert outcome.drain_seconds < 20, outcome  # after the run: what was held
    elif mode != "restarted":
        # Mosquitto 2.0.11 kept giving the dead slot its third of what came after the kill.
        after = 3000 - outcome.killed_at
        assert after * 0.25 < outcome.held_after_kill < after * 0.42, outcome
