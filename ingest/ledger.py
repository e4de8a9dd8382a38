"""Loss detection shared by N ingest workers on one shared subscription.

Each worker sees only the sequence numbers the broker gave it, so no worker can tell a
lost message from one another worker took (ingest/sequence.py is right only alone). Here
every worker, once InfluxDB accepted a batch (or its spool took it), records which numbers
it stored as bitmaps of WINDOW numbers per gateway, in PostgreSQL (`ingest_seq_marks`, one
row per gateway, window and worker, merged with OR by an upsert). One worker at a time,
the one holding a PostgreSQL advisory lock, is the checker: it ORs the windows of every
worker and judges the numbers between the gateway's cursor (`ingest_seq_cursor`, all
numbers below it are judged) and the highest number stored. A number still missing
`grace` seconds after the checker first saw the gap is lost, counted per gateway in the
cursor row and listed in `ingest_seq_lost`; windows wholly below the cursor are deleted.

As ingest/sequence.py: a gateway that restarts counts from 1 again. Numbers at most
RESTART_BELOW arriving in a window the checker has already closed mean a restart: the old
run's missing numbers are counted at once and the cursor starts again. Other numbers
arriving in a closed window were late (counted as such). `judge` is the rule, without I/O.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import defaultdict

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from facility.configfile import ConfigError
from facility.db import create_engine
from ingest.gaps import WINDOW, LedgerUnavailable, Marks, Verdict, judge

log = logging.getLogger(__name__)

LOCK_KEY = 0x1A6E57  # the checker's advisory lock (any constant the campus does not use)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ingest_seq_marks (gateway text NOT NULL, base bigint NOT "
    "NULL, worker text NOT NULL, bits bit(4096) NOT NULL, updated timestamptz NOT NULL "
    "DEFAULT now(), PRIMARY KEY (gateway, base, worker))",
    "CREATE TABLE IF NOT EXISTS ingest_seq_cursor (gateway text PRIMARY KEY, next_seq "
    "bigint NOT NULL, lost bigint NOT NULL DEFAULT 0, late bigint NOT NULL DEFAULT 0, "
    "restarts bigint NOT NULL DEFAULT 0, updated timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS ingest_seq_lost (gateway text NOT NULL, first_seq bigint "
    "NOT NULL, last_seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS ingest_slots (slot text PRIMARY KEY, holder text NOT NULL, "
    "expires timestamptz NOT NULL)",
)


def _bits(mask: int) -> str:
    """A window's mask as PostgreSQL bit(4096) text: character i is number base + i."""
    return format(mask, f"0{WINDOW}b")[::-1]


def _mask(bits: str) -> int:
    return int(bits[::-1], 2)


class SequenceLedger:
    """The shared store of the workers' marks, and the checker's round. One per worker:
    `async with SequenceLedger(url, worker) as ledger:`."""

    def __init__(self, url: str, worker: str, grace: float = 60.0) -> None:
        if make_url(url).get_backend_name() not in ("postgresql", "postgres"):
            raise ConfigError(f"shared loss detection needs PostgreSQL (state.url), not {url}")
        self.url = url
        self.worker = f"{worker}/{uuid.uuid4().hex[:8]}"  # this process's rows
        self.grace = grace
        self.engine: AsyncEngine | None = None
        self._lock: AsyncConnection | None = None
        self.noticed: dict[str, dict[int, float]] = defaultdict(dict)
        self.judged: dict[str, set[int]] = defaultdict(set)
        self.checking = False  # whether this worker holds the checker's lock

    async def __aenter__(self) -> SequenceLedger:
        self.engine = create_engine(self.url)
        async with self.engine.begin() as conn:
            # Workers starting together: one creates the tables, the others wait for it.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY + 1})
            for statement in SCHEMA:
                await conn.execute(text(statement))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._release()
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    async def record(self, marks: Marks) -> None:
        """Merge a worker's marks into the store (one statement, many rows)."""
        if not marks.windows:
            return
        assert self.engine is not None, "use inside 'async with'"
        # Rows in one order (gateway, window) here and in the checker's deletes, so two
        # transactions never wait for each other in a cycle (a deadlock PostgreSQL aborts).
        rows = [{"g": g, "b": b, "w": self.worker, "bits": _bits(mask)}
                for (g, b), mask in sorted(marks.windows.items())]
        try:
            async with self.engine.begin() as conn:
                await conn.execute(text(
                    "INSERT INTO ingest_seq_marks (gateway, base, worker, bits) "
                    "VALUES (:g, :b, :w, CAST(CAST(:bits AS text) AS bit(4096))) "
                    "ON CONFLICT (gateway, base, worker) DO UPDATE "
                    "SET bits = ingest_seq_marks.bits | excluded.bits, updated = now()"), rows)
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerUnavailable(str(exc)) from exc

    async def check(self, now: float) -> dict[str, Verdict]:
        """A checker's round if this worker holds (or can take) the lock; {} otherwise."""
        try:
            return await self._check(now)
        except (SQLAlchemyError, OSError) as exc:
            await self._release()  # another worker may check while this one cannot
            raise LedgerUnavailable(str(exc)) from exc

    async def _check(self, now: float) -> dict[str, Verdict]:
        if not await self._hold():
            return {}
        assert self.engine is not None
        async with self.engine.begin() as conn:
            marks = (await conn.execute(text(
                "SELECT gateway, base, bit_or(bits)::text FROM ingest_seq_marks "
                "GROUP BY gateway, base"))).all()
            cursors: dict[str, int] = {g: int(n) for g, n in (await conn.execute(text(
                "SELECT gateway, next_seq FROM ingest_seq_cursor"))).all()}
        windows: dict[str, dict[int, int]] = defaultdict(dict)
        for gateway, base, bits in marks:
            windows[gateway][int(base)] = _mask(bits)
        verdicts = {g: judge(cursors.get(g, 0), w, self.noticed[g], now, self.grace,
                             self.judged[g])
                    for g, w in windows.items()}
        async with self.engine.begin() as conn:
            for gateway, v in sorted(verdicts.items()):
                await self._save(conn, gateway, v)
        for gateway, v in verdicts.items():
            if v.lost:
                log.error("gateway %s: %d messages never arrived (sequence %s)", gateway,
                          v.lost_count, ", ".join(f"{a}..{b}" for a, b in v.lost[:10]))
            if v.restart:
                log.warning("gateway %s started counting again", gateway)
        return verdicts

    async def _save(self, conn: AsyncConnection, gateway: str, v: Verdict) -> None:
        await conn.execute(text(
            "INSERT INTO ingest_seq_cursor (gateway, next_seq, lost, late, restarts) "
            "VALUES (:g, :n, :lost, :late, :r) ON CONFLICT (gateway) DO UPDATE SET "
            "next_seq = :n, lost = ingest_seq_cursor.lost + :lost, "
            "late = ingest_seq_cursor.late + :late, "
            "restarts = ingest_seq_cursor.restarts + :r, updated = now()"),
            {"g": gateway, "n": v.next_seq, "lost": v.lost_count, "late": v.late,
             "r": int(v.restart)})
        if v.lost:
            await conn.execute(text(
                "INSERT INTO ingest_seq_lost (gateway, first_seq, last_seq) "
                "VALUES (:g, :a, :b)"), [{"g": gateway, "a": a, "b": b} for a, b in v.lost])
        if v.delete_from is not None:
            await conn.execute(text("DELETE FROM ingest_seq_marks WHERE gateway = :g AND "
                                    "base >= :f"), {"g": gateway, "f": v.delete_from})
        await conn.execute(text("DELETE FROM ingest_seq_marks WHERE gateway = :g AND "
                                "base < :b"), {"g": gateway, "b": v.delete_below})

    async def totals(self) -> dict[str, tuple[int, int, int]]:
        """Per gateway: (lost, late, restarts), as every checker so far counted them."""
        assert self.engine is not None
        async with self.engine.connect() as conn:
            found = await conn.execute(text(
                "SELECT gateway, lost, late, restarts FROM ingest_seq_cursor"))
            return {g: (int(a), int(b), int(c)) for g, a, b, c in found.all()}

    # --- worker slots: a lease per client id, so a dead slot can be retired -------------

    async def hold_slot(self, slot: str, ttl: float, holder: str | None = None) -> bool:
        """Take or renew the lease of a slot (a worker's client id) for `ttl` seconds;
        False while another holds it. The slot's own process holds it as the slot itself
        (so a restarted process renews at once), a worker retiring it as that worker."""
        assert self.engine is not None
        try:
            async with self.engine.begin() as conn:
                got = await conn.execute(text(
                    "INSERT INTO ingest_slots (slot, holder, expires) VALUES (:s, :h, "
                    "now() + make_interval(secs => :t)) ON CONFLICT (slot) DO UPDATE SET "
                    "holder = excluded.holder, expires = excluded.expires WHERE "
                    "ingest_slots.holder = excluded.holder OR ingest_slots.expires < now() "
                    "RETURNING slot"), {"s": slot, "h": holder or self.worker, "t": ttl})
                return got.first() is not None
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerUnavailable(str(exc)) from exc

    async def orphans(self) -> list[str]:
        """Slots whose lease ran out: their process is gone."""
        assert self.engine is not None
        try:
            async with self.engine.connect() as conn:
                found = await conn.execute(text(
                    "SELECT slot FROM ingest_slots WHERE expires < now() ORDER BY slot"))
                return [str(slot) for slot in found.scalars()]
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerUnavailable(str(exc)) from exc

    async def drop_slot(self, slot: str) -> None:
        """A retired slot is no slot (its process registers again when it comes back)."""
        assert self.engine is not None
        try:
            async with self.engine.begin() as conn:
                await conn.execute(text("DELETE FROM ingest_slots WHERE slot = :s AND "
                                        "holder = :h"), {"s": slot, "h": self.worker})
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerUnavailable(str(exc)) from exc

    async def cursor(self, gateway: str) -> int:
        """The gateway's cursor: every number below it has been judged (0: none yet)."""
        assert self.engine is not None
        async with self.engine.connect() as conn:
            found = await conn.execute(text(
                "SELECT next_seq FROM ingest_seq_cursor WHERE gateway = :g"), {"g": gateway})
            return int(found.scalar() or 0)

    async def _hold(self) -> bool:
        """Whether this worker is the checker: the session-level advisory lock on a
        connection of its own, released when the worker stops or its connection dies."""
        assert self.engine is not None
        if self._lock is not None:
            try:
                await self._lock.execute(text("SELECT 1"))
                return True
            except (SQLAlchemyError, OSError):  # the connection died, and the lock with it
                log.warning("ingest: lost the loss checker's connection; trying again")
                await self._release()
        conn = await self.engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                      {"k": LOCK_KEY})).scalar()
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._lock = conn
        self.checking = True
        self.noticed.clear()  # a new checker times every gap afresh: late, never false
        self.judged.clear()
        log.info("ingest: %s checks the sequence numbers of all workers", self.worker)
        return True

    async def _release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            self.checking = False
            with contextlib.suppress(SQLAlchemyError, OSError):  # a dead connection
                await lock.close()
