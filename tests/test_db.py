"""The state store opens on SQLite and on the machine's PostgreSQL alike, with UTF-8 text."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from facility.db import open_store

meta = sa.MetaData()
notes = sa.Table("notes", meta, sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("text", sa.Text, nullable=False))


async def test_store_roundtrip(state_url: str) -> None:
    engine = await open_store(state_url, meta)
    await open_store(state_url, meta)  # idempotent
    try:
        async with engine.begin() as conn:
            await conn.execute(notes.insert().values(text="西门车棚火警 ✓"))
        async with engine.connect() as conn:
            got = (await conn.execute(sa.select(notes.c.text))).scalar_one()
        assert got == "西门车棚火警 ✓"
    finally:
        await engine.dispose()


async def test_workers_starting_together_create_the_schema_once(state_url: str) -> None:
    """Eight processes' first open at the same moment on an empty database: each one
    finds or makes the tables (PostgreSQL's CREATE TABLE races without the lock: a unique
    violation on its catalogue stopped one of two rules workers started together)."""
    many = sa.MetaData()
    for n in range(6):
        sa.Table(f"t{n}", many, sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("v", sa.Text))
    engines = await asyncio.gather(*(open_store(state_url, many) for _ in range(8)))
    try:
        async with engines[0].connect() as conn:
            names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert {f"t{n}" for n in range(6)} <= set(names)
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))
