"""The state store opens on SQLite and on the machine's PostgreSQL alike, with UTF-8 text."""

from __future__ import annotations

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
