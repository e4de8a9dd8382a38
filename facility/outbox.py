"""At-least-once publishing that survives broker outages, for services that produce data.

While the broker is reachable and nothing is spooled, messages wait in a small in-memory
queue and are published QoS 1 in windows; a message leaves the queue only when the
broker acknowledged it. When the connection drops, the queue is written to a SQLite
spool on disk and every new message goes there too, in order, until the spool has been
replayed after reconnecting. A crash loses at most the in-memory window, never the spool.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from facility import sqlite
from facility.mqtt import Connection

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    rowid: int = 0  # set when the message lives in the spool


class Spool:
    """An append-only FIFO of messages in SQLite (WAL), read back in insertion order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite.open_file(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "topic TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        self.count: int = self.db.execute("SELECT count(*) FROM spool").fetchone()[0]

    def append(self, items: list[Outgoing]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO spool (topic, payload) VALUES (?, ?)",
                                [(m.topic, m.payload) for m in items])
        self.count += len(items)

    def read(self, after: int, limit: int) -> list[Outgoing]:
        rows = self.db.execute(
            "SELECT id, topic, payload FROM spool WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Outgoing(topic, bytes(payload), rowid) for rowid, topic, payload in rows]

    def delete_through(self, rowid: int) -> None:
        with self.db:
            cur = self.db.execute("DELETE FROM spool WHERE id <= ?", (rowid,))
        self.count -= cur.rowcount

    def close(self) -> None:
        self.db.close()


class Outbox:
    def __init__(self, spool_path: Path, *, memory_limit: int = 20_000, window: int = 200,
                 qos: int = 1) -> None:
        self.spool = Spool(spool_path)
        self.memory: deque[Outgoing] = deque()
        self.memory_limit = memory_limit
        self.window = window
        self.qos = qos
        self.connected = False
        self._wake = asyncio.Event()
        self._last_loaded = 0  # highest spool id already copied into memory
        self.published = 0
        self.spooled = 0

    def put(self, topic: str, payload: bytes) -> None:
        """Queue a message. Never blocks and never drops: overflow goes to disk."""
        item = Outgoing(topic, payload)
        if self.connected and self.spool.count == 0 and len(self.memory) < self.memory_limit:
            self.memory.append(item)
        else:
            self.spool.append([item])
            self.spooled += 1
        self._wake.set()

    def pending(self) -> int:
        return len([m for m in self.memory if not m.rowid]) + self.spool.count

    def disconnected(self) -> None:
        """The connection is gone: move what only lives in memory to disk, in order."""
        self.connected = False
        in_memory = [m for m in self.memory if not m.rowid]
        if in_memory:
            # Only happens in direct mode, where the spool was empty: order is preserved.
            self.spool.append(in_memory)
            self.spooled += len(in_memory)
        self.memory.clear()
        self._last_loaded = 0

    async def drain(self, client: Connection) -> None:
        """Publish until cancelled or the connection fails (MqttError)."""
        self.connected = True
        try:
            while True:
                if not self.memory and self.spool.count:
                    loaded = self.spool.read(self._last_loaded, self.window * 4)
                    if loaded:
                        self._last_loaded = loaded[-1].rowid
                        self.memory.extend(loaded)
                if not self.memory:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = [self.memory[i] for i in range(min(self.window, len(self.memory)))]
                await asyncio.gather(
                    *(client.publish(m.topic, m.payload, qos=self.qos) for m in batch)
                )
                for _ in batch:
                    self.memory.popleft()
                self.published += len(batch)
                spooled_ids = [m.rowid for m in batch if m.rowid]
                if spooled_ids:
                    self.spool.delete_through(max(spooled_ids))
                    if self.spool.count == 0:
                        self._last_loaded = 0
        except BaseException:
            self.disconnected()
            raise

    def close(self) -> None:
        self.disconnected()
        self.spool.close()
