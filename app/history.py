"""`facility up` on an empty InfluxDB: write the simulated campus's last days first.

The simulators' models give the history (simulators/history.py); vendor payloads go
through the gateway's own mappings (gateway.vendors.VendorDecoder) and ingest's converter,
so the history has the fields and tags of live data. Two spawned worker processes make it
day by day (each a share of the families, keeping its models from day to day); this
process writes each day in bulk straight to InfluxDB's HTTP write API (facility.influx),
not through the broker, with the day's 15-minute rollups, which the continuous queries
would never make for the past (they roll up the last two hours as data arrives).
A database that holds any measurement is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import count

import msgspec

from facility import lineprotocol as lp
from facility import topics
from facility.catalog import Catalog
from facility.influx import InfluxClient, quote_ident, quote_string
from facility.messages import Family, Reading
from facility.schema import BUCKET_NS, ENERGY, EV_CHARGING, Rollup, ensure_downsampling
from facility.settings import MqttSettings, Settings
from facility.site import SiteConfig
from facility.vendormaps import VendorMapping
from gateway.vendors import MappingError, VendorDecoder
from ingest.convert import Converter, Rejected
from simulators.bollards import BollardPlc
from simulators.campus import Campus
from simulators.history import DAY_S, History, VendorMessage, history_span, status_lines
from simulators.meters import Meter

log = logging.getLogger("facility.history")

BATCH_LINES = 20_000


@dataclass(slots=True)
class Backfill:
    days: float
    start: float
    end: float
    lines: int  # raw points and rollup rows
    seconds: float
    worker_cpu: tuple[float, ...] = ()  # CPU seconds of each worker process


class Rollups:
    """The 15-minute rollups of the history, made as the lines are (what the continuous
    queries' SELECT would give: first, last, min, max and count of the counter, mean and
    max of the power, per bucket and series, all tags kept), so the past needs no
    SELECT ... INTO over 35 days of raw data."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], list[tuple[int, float | None, float | None]]] = {}
        self._series: dict[tuple[str, str], str] = {}

    def add(self, rollup: Rollup, device: str, tags: dict[str, str], ts: int,
            counter: float | None, power: float | None) -> None:
        """A reading of `device` (whose tags do not change in the history)."""
        series = self._series.get((rollup.name, device))
        if series is None:
            series = self._series[(rollup.name, device)] = lp.series_key(rollup.name, tags)
        self.rows.setdefault((series, ts - ts % BUCKET_NS), []).append((ts, counter, power))

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

    def __init__(self, site: SiteConfig, vendors: Mapping[str, VendorMapping],
                 rollups: Rollups) -> None:
        self.rollups = rollups
        self.now_ns = 0
        self.decoders: dict[str, VendorDecoder] = {}
        for spec in site.gateways:
            for vendor in spec.vendors:
                if vendor in vendors:
                    self.decoders[vendor] = VendorDecoder(vendors[vendor], site, spec.id,
                                                          lambda: self.now_ns)
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
        self.rollups.add(EV_CHARGING, r.device, {"site": r.site, "device": r.device, **r.tags,
                                                 "gateway": r.gateway}, r.ts,
                         counter if isinstance(counter, float | int) else None,
                         power if isinstance(power, float | int) else None)


# The history is made by two worker processes, each about half of the work (meters, the
# PLC and the chargers; fire, drainage and gas), so that both cores work while this
# process only writes. Each keeps its models from day to day.
PARTS: tuple[frozenset[Family], ...] = (
    frozenset({Family.ENERGY, Family.BOLLARD, Family.EV_CHARGER}),
    frozenset({Family.FIRE, Family.DRAINAGE, Family.GAS}))


@dataclass(frozen=True, slots=True)
class _Plan:
    site: SiteConfig
    vendors: Mapping[str, VendorMapping]
    mqtt: MqttSettings
    seed: int
    end: float
    days: float
    readings: dict[str, float]


class _Part:
    """One worker's share of the history: its models, its decoder, its rollups."""

    def __init__(self, plan: _Plan, families: frozenset[Family]) -> None:
        self.history = History(plan.site, plan.mqtt, seed=plan.seed, end=plan.end,
                               days=plan.days, end_readings=plan.readings,
                               families=set(families))
        self.rollups = Rollups()
        self.history.on_energy = self._energy
        self.decoder = _Decoder(plan.site, plan.vendors, self.rollups)

    def _energy(self, device: str, tags: dict[str, str], ts: int, kwh: float,
                kw: float) -> None:
        self.rollups.add(ENERGY, device, tags, ts, kwh, kw)

    def walk(self, t0: float, t1: float) -> tuple[bytes, bytes]:
        """The chunk's lines and its rollups (chunks start on a 15-minute interval, so
        its intervals are complete; the last one, at the start of the live run, the
        continuous queries finish)."""
        modbus, vendor = self.history.walk(t0, t1)
        lines = b"\n".join(modbus + self.decoder.lines(vendor))
        return lines, b"\n".join(self.rollups.lines())

    def finish(self) -> tuple[int, dict[tuple[str, int], int], float]:
        """The messages refused, the bollards' cycle counts at the end, the CPU seconds
        this worker used."""
        use = resource.getrusage(resource.RUSAGE_SELF)
        return self.decoder.refused, self.history.final_cycles(), use.ru_utime + use.ru_stime


_part: _Part | None = None  # the worker process's share


def _start(plan: _Plan, families: frozenset[Family]) -> None:
    global _part
    _part = _Part(plan, families)


def _walk(t0: float, t1: float) -> tuple[bytes, bytes]:
    assert _part is not None
    return _part.walk(t0, t1)


def _finish() -> tuple[int, dict[tuple[str, int], int], float]:
    assert _part is not None
    return _part.finish()


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
            await go_on(influx, live)
            return None
        await ensure_downsampling(influx, settings.reports)
        end = live.origin
        readings = {m.device_id: m.energy_import(end) for m in live.models.values()
                    if isinstance(m, Meter)}
        plan = _Plan(catalog.site, catalog.vendors, settings.mqtt, live.seed, end, days,
                     readings)
        start, chunks = history_span(end, days, DAY_S)
        advance = (bar or _bar(progress))(len(chunks) + 1)
        written = 0
        refused = 0

        async def write(body: bytes, rp: str | None = None) -> None:
            nonlocal written
            lines = body.split(b"\n") if body else []
            for i in range(0, len(lines), BATCH_LINES):
                await influx.write(b"\n".join(lines[i:i + BATCH_LINES]), retention_policy=rp)
            written += len(lines)

        spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
        with contextlib.ExitStack() as stack:
            workers = [ProcessPoolExecutor(1, mp_context=spawn, initializer=_start,
                                           initargs=(plan, families)) for families in PARTS]
            for worker in workers:
                # Stopped (SIGTERM, an error): the days not begun are dropped, not made.
                stack.callback(worker.shutdown, wait=True, cancel_futures=True)
            # Every day is queued at once; each worker makes its days in order.
            days_made = [[asyncio.wrap_future(w.submit(_walk, t0, t1)) for w in workers]
                         for t0, t1 in chunks]
            # One day is written while the next is awaited; a write left when stopped
            # is cancelled, not abandoned.
            writes = [asyncio.create_task(
                write(b"\n".join(status_lines(catalog.site, start))))]
            stack.callback(lambda: [task.cancel() for task in writes])
            rp = settings.reports.rollup_retention_policy
            for made in days_made:
                parts = await asyncio.gather(*made)
                await writes[-1]
                writes.append(asyncio.create_task(_both(
                    write(b"\n".join(raw for raw, _ in parts if raw)),
                    write(b"\n".join(rolled for _, rolled in parts if rolled), rp))))
                advance(1)
            await writes[-1]
            cpu = []
            for not_decoded, cycles, seconds in await asyncio.gather(
                    *(asyncio.wrap_future(w.submit(_finish)) for w in workers)):
                refused += not_decoded
                _go_on(live, cycles)
                cpu.append(seconds)
        advance(1)
        if refused:
            log.warning("history: %d vendor messages did not decode", refused)
    done = Backfill(days=days, start=start, end=end, lines=written,
                    seconds=time.monotonic() - began, worker_cpu=tuple(cpu))
    log.info("history: %g days, %d lines in %.1f s (the workers' CPU: %s s)", days, written,
             done.seconds, " + ".join(f"{c:.1f}" for c in cpu))
    return done


async def go_on(influx: InfluxClient, live: Campus) -> int:
    """The live meters and bollards count on from the last readings stored (a run before
    this one), not from their seeded counts: a drop would read as a meter replacement at
    every restart of the demo. Returns how many counters were set."""
    site = quote_string(live.site.site.id)
    found = 0
    meters = {m.device_id: m for m in live.models.values() if isinstance(m, Meter)}
    result = await influx.query(f'SELECT last("energy_import") FROM "energy" WHERE '
                                f'"site" = {site} GROUP BY "device"')
    for series in result[0] if result else []:
        meter = meters.get(series.tags.get("device", ""))
        if meter is not None and series.values and series.values[0][1] is not None:
            meter.go_on_from(float(series.values[0][1]))
            found += 1
    units = {unit_id: bollard for m in live.models.values() if isinstance(m, BollardPlc)
             for unit_id, bollard in zip(live.site.device(m.device_id).unit_ids(),
                                         m.bollards, strict=False)}
    result = await influx.query(f'SELECT last("cycle_count") FROM "bollard" WHERE '
                                f'"site" = {site} AND "controller" != \'\' GROUP BY "device"')
    for series in result[0] if result else []:
        bollard = units.get(series.tags.get("device", ""))
        if bollard is not None and series.values and series.values[0][1] is not None:
            bollard.cycles = int(series.values[0][1])
            found += 1
    log.info("simulators go on from %d counters stored by an earlier run", found)
    return found


async def _both(*writes: Awaitable[None]) -> None:
    await asyncio.gather(*writes)


def _go_on(live: Campus, cycles: dict[tuple[str, int], int]) -> None:
    """The live PLC's bollards continue the history's cycle counts (not started yet)."""
    for model in live.models.values():
        if isinstance(model, BollardPlc):
            for bollard in model.bollards:
                bollard.cycles = cycles.get((model.device_id, bollard.n), bollard.cycles)


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
