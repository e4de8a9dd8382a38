"""Writing a batch of lines so that a bad point never blocks or loses the good ones.

InfluxDB 1.x answers a batch with a bad point (type conflict, beyond retention, parse
error) with 400 "partial write" and stores the rest. Which lines failed it does not say,
so the batch is split in halves until each refused line stands alone; re-sending good
lines is harmless because a point with the same series and time overwrites itself.
Retryable failures (connection, 5xx, 429) are retried with the shared backoff, forever:
the caller holds the broker acknowledgements meanwhile, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from facility.backoff import Backoff
from facility.influx import DatabaseMissing, InfluxClient, InfluxError, PointsRejected

log = logging.getLogger(__name__)


@dataclass
class WriteStats:
    requests: int = 0
    retries: int = 0
    outage_started: float | None = None
    outages: int = 0
    rejected: int = 0
    on_retry: list[Callable[[InfluxError], None]] = field(default_factory=list)


class Unavailable(Exception):
    """InfluxDB kept failing past the caller's deadline; the batch was not (fully) written."""


class BatchWriter:
    def __init__(self, influx: InfluxClient, backoff: Backoff | None = None) -> None:
        self.influx = influx
        self.backoff = backoff or Backoff(initial=0.2, cap=10.0)
        self.stats = WriteStats()

    async def write(self, lines: list[bytes],
                    give_up_after: float | None = None) -> list[tuple[int, str]]:
        """Write every line InfluxDB will take. Returns (index, reason) of those it refused.

        With `give_up_after`, raise Unavailable once retryable failures have lasted that
        long (the caller then keeps the batch elsewhere); without, retry until it works.
        """
        deadline = None if give_up_after is None \
            else asyncio.get_running_loop().time() + give_up_after
        return await self._write(lines, deadline)

    async def _write(self, lines: list[bytes], deadline: float | None) -> list[tuple[int, str]]:
        if not lines:
            return []
        try:
            await self._write_retrying(b"\n".join(lines), deadline)
            return []
        except PointsRejected as exc:
            if len(lines) == 1:
                self.stats.rejected += 1
                return [(0, str(exc))]
        half = len(lines) // 2
        left = await self._write(lines[:half], deadline)
        right = await self._write(lines[half:], deadline)
        return left + [(i + half, reason) for i, reason in right]

    async def _write_retrying(self, body: bytes, deadline: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.stats.requests += 1
            try:
                await self.influx.write(body)
            except PointsRejected:
                self._recovered(loop.time())
                raise
            except DatabaseMissing:
                log.warning("InfluxDB database %r is missing; creating it", self.influx.database)
                await self._ensure_database()
                continue
            except InfluxError as exc:
                if exc.status == 413 and body.count(b"\n") > 0:
                    raise PointsRejected("request too large") from exc  # let the caller split
                self.stats.retries += 1
                if self.stats.outage_started is None:
                    self.stats.outage_started = loop.time()
                    self.stats.outages += 1
                    log.warning("InfluxDB write failed, retrying until it works: %s", exc)
                for callback in self.stats.on_retry:
                    callback(exc)
                delay = self.backoff.next_delay()
                if deadline is not None and loop.time() + delay > deadline:
                    raise Unavailable(str(exc)) from exc
                await asyncio.sleep(delay)
                continue
            self._recovered(loop.time())
            return

    def _recovered(self, now: float) -> None:
        if self.stats.outage_started is not None:
            log.warning("InfluxDB writes work again after %.1fs", now - self.stats.outage_started)
            self.stats.outage_started = None
        self.backoff.reset()

    async def _ensure_database(self) -> None:
        try:
            await self.influx.ensure_database()
        except InfluxError as exc:
            log.warning("cannot create database yet: %s", exc)
            await asyncio.sleep(self.backoff.next_delay())
