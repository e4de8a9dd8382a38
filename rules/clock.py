"""The rules engine's clock, passed in from outside (Alertmanager puts `now` in the context).

`SystemClock` follows the wall clock. `ManualClock` stands still until a test advances it;
sleepers wake when the time they wait for has come, so tests drive time instead of
sleeping. Times are integer nanoseconds since the Unix epoch, like the message contract.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

NS = 1_000_000_000


class Clock(Protocol):
    def now_ns(self) -> int: ...

    async def sleep_until(self, deadline_ns: int) -> None: ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()

    async def sleep_until(self, deadline_ns: int) -> None:
        delay = (deadline_ns - time.time_ns()) / NS
        if delay > 0:
            await asyncio.sleep(delay)


class ManualClock:
    """A clock that moves only when told to. Safe to share between services of one loop."""

    def __init__(self, start_ns: int | None = None) -> None:
        self._now = time.time_ns() if start_ns is None else start_ns
        self._changed = asyncio.Condition()

    def now_ns(self) -> int:
        return self._now

    async def sleep_until(self, deadline_ns: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._now >= deadline_ns)

    async def advance(self, seconds: float) -> int:
        """Move time forward and wake whoever waited for it; returns the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        async with self._changed:
            self._now += round(seconds * NS)
            self._changed.notify_all()
        return self._now

    async def set(self, now_ns: int) -> None:
        async with self._changed:
            if now_ns < self._now:
                raise ValueError("a clock does not go back")
            self._now = now_ns
            self._changed.notify_all()
