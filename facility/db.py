"""The state store: alerts, acknowledgements, the command audit log, users, displays.

SQLAlchemy Core over asyncio: SQLite by default (a file under var/), PostgreSQL where
several processes or machines share the state. Each package declares its own tables on
its own MetaData; `open_store` creates what is missing. URLs are written the plain way
(sqlite:///path, postgresql://user@host/db) and mapped to the async drivers here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from facility.sqlite import set_pragmas

SCHEMA_LOCK = 0x66616369  # the advisory lock key that serialises schema creation ("faci")

DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg",
           "postgres": "postgresql+asyncpg"}


def async_url(url: str) -> str:
    parsed = make_url(url)
    driver = DRIVERS.get(parsed.drivername, parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def create_engine(url: str) -> AsyncEngine:
    full = async_url(url)
    if full.startswith("sqlite"):
        database = make_url(full).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(full, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            set_pragmas(conn)  # the one PRAGMA list (facility/sqlite.py)

        return engine
    return create_async_engine(full, pool_pre_ping=True)


async def open_store(url: str, *metadatas: MetaData) -> AsyncEngine:
    """An engine with every given schema created (idempotent, also for processes that
    open the same store at the same moment, as workers started together do)."""
    engine = create_engine(url)
    for attempt in range(3):
        try:
            await _create(engine, metadatas)
            break
        except OperationalError as exc:
            # SQLite: another connection created a table between this one's check and
            # its CREATE; the next check finds it.
            if "already exists" not in str(exc) or attempt == 2:
                raise
    return engine


async def _create(engine: AsyncEngine, metadatas: tuple[MetaData, ...]) -> None:
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # PostgreSQL's CREATE TABLE is not idempotent under concurrency (a unique
            # violation on its catalogue): one at a time; the lock ends with the
            # transaction, and the later ones find the tables there.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        for metadata in metadatas:
            await conn.run_sync(metadata.create_all)
