"""SQLite files, opened one way: the one PRAGMA list for every connection to a SQLite file
(the state store's pool and the rules engine's writer, facility/db.py and rules/store.py;
the spools of the outbox and of ingest; the gateway's command log), and the one helper
for a process-local file (a spool or a journal that only its own process opens).

WAL lets readers (the API) work while a writer (the rules engine) commits; with WAL,
synchronous=NORMAL is durable across a crash of the process (a power cut may lose the
last commits; a connection that must not asks for FULL in `extra`); foreign keys are
enforced. Only sqlite3 here, so the gateway does not import SQLAlchemy for its spool.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON")


def set_pragmas(conn: Any, extra: Sequence[str] = ()) -> None:
    """The PRAGMA list (then `extra`, which may override it) on a new DB-API connection:
    sqlite3's, or the one SQLAlchemy's aiosqlite adapter hands to a "connect" listener."""
    cursor = conn.cursor()
    try:
        for pragma in (*PRAGMAS, *extra):
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def open_file(path: Path, *, extra: Sequence[str] = ()) -> sqlite3.Connection:
    """A process-local SQLite file, its folder created: autocommit (each caller's
    transactions are explicit, `with db:` or BEGIN) and the PRAGMA list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    set_pragmas(conn, extra)
    return conn
