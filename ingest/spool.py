"""Ingest's overflow for long InfluxDB outages: batches on disk, replayed in order.

While InfluxDB answers, batches go straight to it. When it has been failing for longer
than `spool_after`, ingest stops holding the broker's messages (the broker would queue
them without end, or drop them at its limits): each batch is written here, compressed,
then acknowledged. A replayer writes the batches back in the order they came, and while
any are waiting, new batches queue behind them. Memory stays at about one batch.
"""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

from facility import sqlite


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite.open_file(path)  # WAL + NORMAL: durable across a crash
        self.db.execute("CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY "
                        "AUTOINCREMENT, lines INTEGER NOT NULL, body BLOB NOT NULL)")
        self.batches, self.lines = self.db.execute(
            "SELECT count(*), coalesce(sum(lines), 0) FROM batches").fetchone()
        self._waiting = asyncio.Event()
        if self.batches:
            self._waiting.set()

    def append(self, lines: list[bytes]) -> None:
        body = zlib.compress(b"\n".join(lines), 1)
        with self.db:
            self.db.execute("INSERT INTO batches (lines, body) VALUES (?, ?)", (len(lines), body))
        self.batches += 1
        self.lines += len(lines)
        self._waiting.set()

    async def oldest(self) -> tuple[int, list[bytes]]:
        """The oldest batch, waiting until there is one."""
        while True:
            row = self.db.execute(
                "SELECT id, body FROM batches ORDER BY id LIMIT 1").fetchone()
            if row is not None:
                return int(row[0]), zlib.decompress(row[1]).split(b"\n")
            self._waiting.clear()
            await self._waiting.wait()

    def remove(self, batch_id: int, lines: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        self.batches -= 1
        self.lines -= lines

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))

    def close(self) -> None:
        self.db.close()
