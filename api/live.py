"""The live stream's hub: numbered events, a bounded replay buffer, and subscribers.

Every event gets an id `<epoch>-<seq>`: the epoch is new for each API process, the
sequence counts up. A client that reconnects with the id of the last event it saw gets
every later event it wants from the buffer. If that id is from another process, or too
old for the buffer, the client gets a `reset` event instead, followed by the open alerts
as the state store has them now, so no alert is lost either way.

A subscriber that cannot keep up (its queue fills) is disconnected rather than silently
skipped: it reconnects with its last id and is replayed or reset.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("reading", "status", "event", "alert", "display", "display_ack", "broadcast",
         "command", "reset")


@dataclass(frozen=True)
class LiveEvent:
    id: str
    seq: int
    kind: str
    zones: tuple[str, ...]  # where it happens (a PA zone covers several)
    family: str
    data: str  # JSON text, encoded once for every subscriber

    def sse(self) -> bytes:
        return f"id: {self.id}\nevent: {self.kind}\ndata: {self.data}\n\n".encode()


@dataclass(frozen=True)
class Filter:
    zones: frozenset[str] = frozenset()
    families: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()

    def wants(self, event: LiveEvent) -> bool:
        if self.kinds and event.kind not in self.kinds:
            return False
        if self.zones and not self.zones.intersection(event.zones):
            return False
        return not (self.families and event.family not in self.families)


@dataclass(eq=False)
class Subscription:
    filter: Filter
    queue: asyncio.Queue[LiveEvent | None]
    overflowed: bool = False
    closed: bool = field(default=False)


class LiveHub:
    def __init__(self, buffer_size: int, queue_size: int = 10_000) -> None:
        self.epoch = uuid.uuid4().hex[:8]
        self.buffer: deque[LiveEvent] = deque(maxlen=buffer_size)
        self.queue_size = queue_size
        self.subscribers: set[Subscription] = set()
        self._seq = 0
        self.published = 0

    def publish(self, kind: str, data: dict[str, Any], *, zones: Iterable[str] = (),
                family: str = "") -> LiveEvent:
        self._seq += 1
        event = LiveEvent(f"{self.epoch}-{self._seq}", self._seq, kind,
                          tuple(z for z in zones if z), family,
                          json.dumps(data, ensure_ascii=False, separators=(",", ":")))
        self.buffer.append(event)
        self.published += 1
        for sub in list(self.subscribers):
            if sub.filter.wants(event):
                self._offer(sub, event)
        return event

    def _offer(self, sub: Subscription, event: LiveEvent) -> None:
        try:
            sub.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Better a reconnect that replays or resets than a gap nobody notices.
            sub.overflowed = True
            self.unsubscribe(sub)

    def subscribe(self, flt: Filter, last_event_id: str | None
                  ) -> tuple[Subscription, list[LiveEvent] | None, str]:
        """A new subscription, the events to replay first (None: the client must reset),
        and the id of the last event before it (where a reset client resumes)."""
        sub = Subscription(flt, asyncio.Queue(self.queue_size))
        replay = self.replay(flt, last_event_id) if last_event_id else None
        self.subscribers.add(sub)
        return sub, replay, f"{self.epoch}-{self._seq}"

    def replay(self, flt: Filter, last_event_id: str) -> list[LiveEvent] | None:
        epoch, _, seq_text = last_event_id.partition("-")
        if epoch != self.epoch or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        oldest = self.buffer[0].seq if self.buffer else self._seq + 1
        if seq > self._seq or seq < oldest - 1:
            return None  # from the future, or events after it fell out of the buffer
        return [e for e in self.buffer if e.seq > seq and flt.wants(e)]

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            sub.closed = True
            try:
                sub.queue.put_nowait(None)  # wakes the stream so it ends
            except asyncio.QueueFull:
                _drop_one_and_end(sub.queue)

    def close(self) -> None:
        """End every stream (the API is shutting down)."""
        for sub in list(self.subscribers):
            self.unsubscribe(sub)

    def make_filter(self, zones: Iterable[str] = (), families: Iterable[str] = (),
                    kinds: Iterable[str] = ()) -> Filter:
        return Filter(frozenset(zones), frozenset(families), frozenset(kinds))


def _drop_one_and_end(queue: asyncio.Queue[LiveEvent | None]) -> None:
    queue.get_nowait()
    queue.put_nowait(None)
