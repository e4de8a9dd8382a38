"""Site leases in PostgreSQL: which rules worker acts for which site, and fencing.

Two tables in the state database (beside the rules tables, so a lease and the state it
guards live and fail together):

- rules_leases   one row per site: owner (worker id, '' when released), epoch (the
                 fencing token, +1 at each acquisition), expires_at, writes (fenced
                 transactions of the current epoch)
- rules_lease_epochs  each ended epoch of a site: its owner, when it began and ended,
                 and how many fenced transactions it wrote (the audit of who acted when)
- rules_workers  one row per live worker: its heartbeat's expires_at

Every expiry is reckoned on the database's clock (now()), never the workers': a worker
whose clock is wrong, or that was paused, cannot think a lease is still its own. A
worker acquires a site whose lease is free or expired (the epoch goes up by one), renews
it every ttl/3, and releases it when it stops cleanly.

Fencing: every transaction a worker writes for a site first runs
`UPDATE rules_leases SET writes = writes + 1 WHERE site = ... AND owner = ... AND
epoch = ...` in the same transaction (Fence.check). If the row is no longer this
worker's at this epoch, the transaction raises LeaseLost and rolls back. The update
locks the lease row until the commit, so a rival's acquisition waits for an in-flight
write and then sees its result: nothing is written for a site under an old epoch once a
newer epoch was granted. A holder paused inside a transaction must not keep that lock:
each fenced transaction and each lease transaction sets its own
idle_in_transaction_session_timeout (ttl/2), so PostgreSQL ends it, and releases the
row, before the lease can expire. Leases need PostgreSQL (several processes on several machines);
a single `facility rules run` on SQLite has none.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from facility.configfile import ConfigError
from facility.db import open_store

log = logging.getLogger(__name__)
metadata = sa.MetaData()
Stamp = sa.DateTime(timezone=True)

leases_t = sa.Table(
    "rules_leases", metadata,
    sa.Column("site", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("expires_at", Stamp, nullable=False),
    sa.Column("acquired_at", Stamp, nullable=False),
    sa.Column("writes", sa.BigInteger, nullable=False, default=0),
)

epochs_t = sa.Table(
    "rules_lease_epochs", metadata,
    sa.Column("site", sa.String(64), primary_key=True),
    sa.Column("epoch", sa.BigInteger, primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("acquired_at", Stamp, nullable=False),
    sa.Column("ended_at", Stamp, nullable=False),
    sa.Column("writes", sa.BigInteger, nullable=False),
)

workers_t = sa.Table(
    "rules_workers", metadata,
    sa.Column("owner", sa.String(128), primary_key=True),
    sa.Column("started_at", Stamp, nullable=False),
    sa.Column("expires_at", Stamp, nullable=False),
)


class LeaseLost(Exception):
    """This worker no longer holds the site's lease at its epoch: stop acting for it."""


# One round trip: the guard on the transaction's idle time, and the fence.
FENCE = sa.text(
    "WITH guard AS (SELECT set_config('idle_in_transaction_session_timeout', :idle, true)) "
    "UPDATE rules_leases SET writes = writes + 1 FROM guard "
    "WHERE site = :site AND owner = :owner AND epoch = :epoch")
IDLE = sa.text("SELECT set_config('idle_in_transaction_session_timeout', :idle, true)")


@dataclass(frozen=True, slots=True)
class Fence:
    """The check every state-store transaction of a site runs first (same transaction)."""

    site: str
    owner: str
    epoch: int
    idle_ms: int  # this transaction's idle_in_transaction_session_timeout

    def check(self, conn: sa.Connection) -> None:
        done = conn.execute(FENCE, {"idle": str(self.idle_ms), "site": self.site,
                                    "owner": self.owner, "epoch": self.epoch})
        if done.rowcount != 1:
            raise LeaseLost(f"site {self.site}: lease of epoch {self.epoch} is no longer "
                            f"held by {self.owner}")


@dataclass(frozen=True, slots=True)
class Holder:
    owner: str
    epoch: int
    expired: bool


class Leases:
    """One worker's view of the lease tables: `owner` is this worker's id."""

    def __init__(self, engine: AsyncEngine, owner: str, ttl: float) -> None:
        self.db = engine
        self.owner = owner
        self.ttl = ttl
        self._ttl = datetime.timedelta(seconds=ttl)
        # A transaction left idle this long is ended by PostgreSQL, and its locks with it.
        self.idle_ms = max(100, round(ttl * 500))

    @classmethod
    async def open(cls, url: str, owner: str, ttl: float) -> Leases:
        if not make_url(url).drivername.startswith("postgres"):
            raise ConfigError(f"state.url: leases need PostgreSQL (several workers share "
                              f"the state), not {make_url(url).drivername}")
        return cls(await open_store(url, metadata), owner, ttl)

    async def close(self) -> None:
        await self.db.dispose()

    def _expiry(self) -> sa.ColumnElement[datetime.datetime]:
        return sa.func.now() + sa.literal(self._ttl, sa.Interval)

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.db.begin() as conn:
            await conn.execute(IDLE, {"idle": str(self.idle_ms)})
            yield conn

    # --- workers -------------------------------------------------------------------------

    async def beat(self) -> int:
        """Register or renew this worker's heartbeat; how many workers are live now."""
        insert = postgresql.insert(workers_t).values(
            owner=self.owner, started_at=sa.func.now(), expires_at=self._expiry())
        async with self._begin() as conn:
            await conn.execute(insert.on_conflict_do_update(
                index_elements=["owner"], set_={"expires_at": insert.excluded.expires_at}))
            live = await conn.scalar(sa.select(sa.func.count()).select_from(workers_t).where(
                workers_t.c.expires_at > sa.func.now()))
        return int(live or 1)

    async def leave(self) -> None:
        async with self._begin() as conn:
            await conn.execute(workers_t.delete().where(workers_t.c.owner == self.owner))

    # --- sites ---------------------------------------------------------------------------

    async def holders(self, sites: list[str]) -> dict[str, Holder]:
        """Who holds each of these sites (sites never leased are missing)."""
        async with self.db.connect() as conn:
            rows = await conn.execute(sa.select(
                leases_t.c.site, leases_t.c.owner, leases_t.c.epoch,
                (leases_t.c.expires_at <= sa.func.now()).label("expired")).where(
                leases_t.c.site.in_(sites)))
            return {r.site: Holder(r.owner, r.epoch, bool(r.expired)) for r in rows}

    async def acquire(self, site: str) -> int | None:
        """Take the site if its lease is free, released or expired: the new epoch, or
        None if another worker holds it. One statement: two workers cannot both win."""
        insert = postgresql.insert(leases_t).values(
            site=site, owner=self.owner, epoch=1, expires_at=self._expiry(),
            acquired_at=sa.func.now(), writes=0)
        stmt = insert.on_conflict_do_update(
            index_elements=["site"],
            set_={"owner": self.owner, "epoch": leases_t.c.epoch + 1,
                  "expires_at": insert.excluded.expires_at,
                  "acquired_at": insert.excluded.acquired_at, "writes": 0},
            where=leases_t.c.expires_at <= sa.func.now()).returning(leases_t.c.epoch)
        async with self._begin() as conn:
            old = (await conn.execute(sa.select(
                leases_t, (leases_t.c.expires_at <= sa.func.now()).label("free")).where(
                leases_t.c.site == site).with_for_update())).first()
            if old is not None and not old.free:
                return None
            if old is not None and old.owner:  # expired: its epoch ends now
                await conn.execute(self._ended(old.site, old.epoch, old.owner,
                                               old.acquired_at, old.writes))
            epoch = (await conn.execute(stmt)).scalar()
        return int(epoch) if epoch is not None else None

    @staticmethod
    def _ended(site: str, epoch: int, owner: str, acquired_at: Any,
               writes: Any) -> sa.Executable:
        insert = postgresql.insert(epochs_t).values(
            site=site, epoch=epoch, owner=owner, acquired_at=acquired_at,
            ended_at=sa.func.now(), writes=writes)
        return insert.on_conflict_do_nothing(index_elements=["site", "epoch"])

    async def renew(self, held: dict[str, int]) -> set[str]:
        """Extend the leases of these sites (site -> epoch); the ones still ours. A lease
        that expired but that nobody took is still ours: its epoch proves nobody acted."""
        if not held:
            return set()
        async with self._begin() as conn:
            rows = await conn.execute(leases_t.update().where(
                leases_t.c.owner == self.owner,
                sa.tuple_(leases_t.c.site, leases_t.c.epoch).in_(list(held.items())))
                .values(expires_at=self._expiry()).returning(leases_t.c.site))
            return {r.site for r in rows}

    async def confirm(self, site: str, epoch: int) -> None:
        """Renew one lease or raise LeaseLost: asked before each (re)connection to the
        broker, whose client id is the site's (a stale worker would take the connection
        from the owner)."""
        if site not in await self.renew({site: epoch}):
            raise LeaseLost(f"site {site}: lease of epoch {epoch} is no longer held by "
                            f"{self.owner}")

    async def release(self, site: str, epoch: int) -> None:
        """Give the site up (after its service stopped): free for the next worker now."""
        async with self._begin() as conn:
            old = (await conn.execute(leases_t.update().where(
                leases_t.c.site == site, leases_t.c.owner == self.owner,
                leases_t.c.epoch == epoch).values(owner="", expires_at=sa.func.now())
                .returning(leases_t.c.acquired_at, leases_t.c.writes))).first()
            if old is not None:
                await conn.execute(self._ended(site, epoch, self.owner, old.acquired_at,
                                               old.writes))

    async def epochs(self, site: str) -> list[dict[str, Any]]:
        """The ended epochs of a site, oldest first (who held it, how many writes)."""
        async with self.db.connect() as conn:
            rows = await conn.execute(sa.select(epochs_t).where(
                epochs_t.c.site == site).order_by(epochs_t.c.epoch))
            return [r._asdict() for r in rows]


@dataclass(frozen=True, slots=True)
class SiteLease:
    """What a RulesService needs of its lease: the fence for its writes, and the check
    before each connection to the broker."""

    leases: Leases
    site: str
    epoch: int

    @property
    def fence(self) -> Fence:
        return Fence(self.site, self.leases.owner, self.epoch, self.leases.idle_ms)

    async def confirm(self) -> None:
        await self.leases.confirm(self.site, self.epoch)


def lost(exc: BaseException | None) -> bool:
    """Whether a service died of losing its lease (LeaseLost, maybe inside groups)."""
    if isinstance(exc, LeaseLost):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(lost(e) for e in exc.exceptions)
    return False
