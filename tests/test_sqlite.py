"""SQLite files are opened one way: facility/sqlite.py's PRAGMA list on every connection
(the spools, the gateway's command log, the state store's pool and the rules writer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from facility import sqlite
from facility.db import create_engine
from facility.outbox import Spool as OutboxSpool
from gateway.commands import CommandLog
from ingest.spool import Spool as IngestSpool
from rules.store import AlertStore

WANTED = {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1}


class Connection(Protocol):
    """sqlite3's connection, or the DB-API one SQLAlchemy hands out."""

    def cursor(self) -> Any: ...


def pragmas(conn: Connection) -> dict[str, object]:
    cursor = conn.cursor()
    try:
        return {name: cursor.execute(f"PRAGMA {name}").fetchone()[0] for name in WANTED}
    finally:
        cursor.close()


def test_process_local_files_get_the_list(tmp_path: Path) -> None:
    db = sqlite.open_file(tmp_path / "new" / "a.db")
    assert pragmas(db) == WANTED
    db.close()
    outbox = OutboxSpool(tmp_path / "outbox.db")
    assert pragmas(outbox.db) == WANTED
    outbox.db.close()
    ingest = IngestSpool(tmp_path / "ingest.db")
    assert pragmas(ingest.db) == WANTED
    ingest.db.close()
    log = CommandLog(tmp_path / "commands.db")  # FULL on top: a taken id survives a power cut
    assert pragmas(log.db) == {**WANTED, "synchronous": 2}
    log.db.close()


async def test_the_state_store_gets_the_same_list(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_engine(url)
    async with engine.connect() as conn:
        found = {name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                 for name in WANTED}
        assert found == WANTED
    await engine.dispose()
    async with await AlertStore.open(url) as store:
        assert store.writer is not None
        with store.writer.connect() as conn:
            raw_writer = conn.connection.driver_connection
            assert raw_writer is not None
            assert pragmas(raw_writer) == WANTED
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
