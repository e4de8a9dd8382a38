"""The state store: alerts, acknowledgements, the command audit log, users, displays.

SQLAlchemy Core over asyncio: SQLite by default (a file under var/), PostgreSQL where
several processes or machines share the state. Each package declares its own tables on
its own MetaData; `open_store` creates what is missing. URLs are written the plain way
(sqlite:///path, postgresql://user@host/db) and mapped to the async drivers here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from facility.sqlite import set_pragmas

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
    """An engine with every given schema created (idempotent)."""
    engine = create_engine(url)
    async with engine.begin() as conn:
        for metadata in metadatas:
            await conn.run_sync(metadata.create_all)
    return engine
