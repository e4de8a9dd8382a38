"""What the central system must remember across reconnects and restarts: transactions (so
a StartTransaction or StopTransaction sent again after an outage gets the same answer and
is counted once) and the ids of commands already executed (at most once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facility import sqlite


@dataclass(frozen=True)
class Transaction:
    id: int
    charge_point: str
    connector: int
    id_tag: str
    meter_start: int  # Wh
    started: str  # the charge point's timestamp, as sent
    meter_stop: int | None = None
    stopped: str | None = None
    reason: str = ""


class CsmsStore:
    def __init__(self, path: Path) -> None:
        self.db = sqlite.open_file(path)
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS tx (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            " cp TEXT NOT NULL, connector INTEGER NOT NULL, id_tag TEXT NOT NULL, "
            " meter_start INTEGER NOT NULL, started TEXT NOT NULL, meter_stop INTEGER, "
            " stopped TEXT, reason TEXT NOT NULL DEFAULT '', "
            " UNIQUE (cp, connector, started, meter_start));"
            "CREATE TABLE IF NOT EXISTS command (id TEXT PRIMARY KEY, ts INTEGER NOT NULL);")

    def start(self, cp: str, connector: int, id_tag: str, meter_start: int,
              started: str) -> tuple[Transaction, bool]:
        """The transaction, and whether it is new (False: the same start sent again)."""
        with self.db:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO tx (cp, connector, id_tag, meter_start, started) "
                "VALUES (?, ?, ?, ?, ?)", (cp, connector, id_tag, meter_start, started))
        new = cur.rowcount == 1
        row = self.db.execute("SELECT * FROM tx WHERE cp = ? AND connector = ? AND started = ? "
                              "AND meter_start = ?",
                              (cp, connector, started, meter_start)).fetchone()
        return _tx(row), new

    def get(self, cp: str, tx_id: int) -> Transaction | None:
        row = self.db.execute("SELECT * FROM tx WHERE id = ? AND cp = ?", (tx_id, cp)).fetchone()
        return _tx(row) if row else None

    def active(self, cp: str, connector: int | None = None) -> list[Transaction]:
        rows = self.db.execute("SELECT * FROM tx WHERE cp = ? AND meter_stop IS NULL "
                               "ORDER BY id", (cp,)).fetchall()
        return [t for t in map(_tx, rows) if connector is None or t.connector == connector]

    def stop(self, cp: str, tx_id: int, meter_stop: int, stopped: str,
             reason: str) -> tuple[Transaction | None, bool]:
        """The stopped transaction (None: unknown here) and whether this stop is new."""
        with self.db:
            cur = self.db.execute(
                "UPDATE tx SET meter_stop = ?, stopped = ?, reason = ? "
                "WHERE id = ? AND cp = ? AND meter_stop IS NULL",
                (meter_stop, stopped, reason, tx_id, cp))
        return self.get(cp, tx_id), cur.rowcount == 1

    def claim_command(self, command_id: str, ts: int) -> bool:
        """True the first time an id is seen, ever."""
        with self.db:
            cur = self.db.execute("INSERT OR IGNORE INTO command (id, ts) VALUES (?, ?)",
                                  (command_id, ts))
        return cur.rowcount == 1

    def close(self) -> None:
        self.db.close()


def _tx(row: tuple[object, ...]) -> Transaction:
    tx_id, cp, connector, id_tag, meter_start, started, meter_stop, stopped, reason = row
    assert isinstance(tx_id, int)
    assert isinstance(connector, int)
    assert isinstance(meter_start, int)
    return Transaction(tx_id, str(cp), connector, str(id_tag), meter_start, str(started),
                       meter_stop if isinstance(meter_stop, int) else None,
                       str(stopped) if stopped is not None else None, str(reason))
