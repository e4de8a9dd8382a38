"""`facility up` on an empty InfluxDB: write the simulated campus's last days first.

The simulators' models give the history (simulators/history.py); vendor payloads go
through the gateway's own mappings (gateway.vendors.VendorDecoder) and ingest's converter,
so the history has the fields and tags of live data. The lines go in bulk straight to
InfluxDB's HTTP write API (facility.influx), not through the broker, while the next day is
generated; then the 15-minute rollups are built for the past, which the continuous queries
never do (they only roll up the last two hours as data arrives).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import count

import msgspec

from facility import lineprotocol as lp
from facility import topics
from facility.catalog import Catalog
from facility.influx import InfluxClient, quote_ident
from facility.messages import Reading
from facility.schema import BUCKET_NS, ENERGY, EV_CHARGING, Rollup, ensure_downsampling
from facility.settings import Settings
from gateway.vendors import MappingError, VendorDecoder
from ingest.convert import Converter, Rejected
from simulators.campus import Campus
from simulators.history import DAY_S, History, VendorMessage

log = logging.getLogger("facility.history")

BATCH_LINES = 20_000


@dataclass(slots=True)
class Backfill:
    days: float
    start: float
    end: float
    lines: int
    seconds: float
    rollup_seconds: float


class Rollups:
    """The 15-minute rollups of the history, made as the lines are (what the continuous
    queries' SELECT would give: first, last, min, max and count of the counter, mean and
    max of the power, per bucket and series, all tags kept), so the past needs no
    SELECT ... INTO over 35 days of raw data."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], list[tuple[int, float | None, float | None]]] = {}

    def add(self, rollup: Rollup, tags: dict[str, str], ts: int, counter: float | None,
            power: float | None) -> None:
        key = (lp.series_key(rollup.name, tags), ts - ts % BUCKET_NS)
        self.rows.setdefault(key, []).append((ts, counter, power))

    def lines(self) -> list[bytes]:
        out = []
        for (series, bucket), samples in self.rows.items():
            samples.sort()
            counters = [c for _, c, _ in samples if c is not None]
            powers = [p for _, _, p in samples if p is not None]
            if not counters:
                continue
            fields = (f"c_first={counters[0]!r},c_last={counters[-1]!r},"
                      f"c_min={min(counters)!r},c_max={max(counters)!r},"
                      f"c_count={len(counters)}i")
            if powers:
                fields += f",p_mean={math.fsum(powers) / len(powers)!r},p_max={max(powers)!r}"
            out.append(f"{series} {fields} {bucket}".encode())
        self.rows.clear()
        return out


async def has_data(influx: InfluxClient) -> bool:
    """Whether the database holds any measurement already."""
    result = await influx.query(f"SHOW MEASUREMENTS ON {quote_ident(influx.database)} LIMIT 1")
    return bool(result and result[0] and result[0][0].values)


class _Decoder:
    """Vendor payloads to the lines ingest would write for them."""

    def __init__(self, catalog: Catalog, rollups: Rollups) -> None:
        site = catalog.site
        self.rollups = rollups
        self.now_ns = 0
        self.decoders: dict[str, VendorDecoder] = {}
        for spec in site.gateways:
            for vendor in spec.vendors:
                if vendor in catalog.vendors:
                    self.decoders[vendor] = VendorDecoder(catalog.vendors[vendor], site,
                                                          spec.id, lambda: self.now_ns)
        self.converter = Converter()
        self.seq = count(1)
        self.site = site.site.id
        self.refused = 0

    def lines(self, messages: list[VendorMessage]) -> list[bytes]:
        out = []
        for item in messages:
            decoder = self.decoders.get(item.vendor)
            if decoder is None:
                continue
            self.now_ns = round(item.t * 1e9)
            try:
                decoded = decoder.decode(item.message.topic, item.message.payload,
                                         lambda: next(self.seq))
                if decoded.reading is not None:
                    r = decoded.reading
                    if r.family.value == EV_CHARGING.source:
                        self._roll(r)
                    out.append(self.converter.to_line(
                        topics.telemetry(self.site, r.family, r.device), msgspec.json.encode(r)))
                for event in decoded.events:
                    out.append(self.converter.to_line(
                        topics.event(self.site, event.family, event.device),
                        msgspec.json.encode(event)))
            except (MappingError, Rejected) as exc:  # a model/mapping mismatch: counted
                self.refused += 1
                log.debug("history: %s refused: %s", item.device_id, exc)
        return out

    def _roll(self, r: Reading) -> None:
        counter, power = r.values.get(EV_CHARGING.counter), r.values.get(EV_CHARGING.power)
        self.rollups.add(EV_CHARGING, {"site": r.site, "device": r.device, **r.tags,
                                       "gateway": r.gateway}, r.ts,
                         counter if isinstance(counter, float | int) else None,
                         power if isinstance(power, float | int) else None)


async def backfill(settings: Settings, catalog: Catalog, live: Campus, *, days: float,
                   progress: bool | None = None,
                   bar: Callable[[int], Callable[[int], None]] | None = None) -> Backfill | None:
    """Write the `days` before the live campus's start into an empty database, then its
    rollups; None (and nothing written) when the database holds data already."""
    began = time.monotonic()
    async with InfluxClient(settings.influx) as influx:
        await influx.ensure_database()
        if await has_data(influx):
            log.info("InfluxDB has data already: no simulated history written")
            return None
        await ensure_downsampling(influx, settings.reports)
        end = live.origin
        readings = {m.device_id: m.energy_import(end) for m in live.models.values()
                    if hasattr(m, "energy_import") and hasattr(m, "minute_kw")}
        cycles = {}
        with contextlib.suppress(KeyError, TypeError):
            plc = live.plc()
            cycles = {(plc.device_id, b.n): b.cycles for b in plc.bollards}
        history = History(catalog.site, settings.mqtt, seed=live.seed, end=end, days=days,
                          end_readings=readings, end_cycles=cycles)
        rollups = Rollups()
        history.on_energy = lambda tags, ts, kwh, kw: rollups.add(ENERGY, tags, ts, kwh, kw)
        decoder = _Decoder(catalog, rollups)
        chunks = history.chunks(DAY_S)
        advance = (bar or _bar(progress))(len(chunks) + 1)
        written = 0

        async def write(lines: list[bytes], rp: str | None = None) -> None:
            nonlocal written
            for i in range(0, len(lines), BATCH_LINES):
                await influx.write(b"\n".join(lines[i:i + BATCH_LINES]), retention_policy=rp)
            written += len(lines)

        def generate(t0: float, t1: float) -> list[bytes]:
            modbus, vendor = history.walk(t0, t1)
            return modbus + decoder.lines(vendor)

        pending: Awaitable[None] = write(history.status_lines())
        await asyncio.to_thread(history.prepare_energy)
        for t0, t1 in chunks:
            # The next day is made in a thread while InfluxDB takes the last one.
            lines, _ = await asyncio.gather(asyncio.to_thread(generate, t0, t1), pending)
            pending = write(lines)
            advance(1)
        await pending
        await write(history.bollard_lines())
        rolled = time.monotonic()
        await write(rollups.lines(), settings.reports.rollup_retention_policy)
        advance(1)
        if decoder.refused:
            log.warning("history: %d vendor messages did not decode", decoder.refused)
    done = Backfill(days=days, start=history.start, end=end, lines=written,
                    seconds=time.monotonic() - began,
                    rollup_seconds=time.monotonic() - rolled)
    log.info("history: %d days, %d lines in %.1f s (rollups %.1f s)", days, written,
             done.seconds, done.rollup_seconds)
    return done


def _bar(enabled: bool | None) -> Callable[[int], Callable[[int], None]]:
    def make(total: int) -> Callable[[int], None]:
        on = sys.stderr.isatty() if enabled is None else enabled
        if not on:
            return lambda n: None
        from tqdm import tqdm

        bar = tqdm(total=total, desc="模拟历史数据", unit="天", file=sys.stderr, leave=True)

        def step(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()
        return step
    return make
