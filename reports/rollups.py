"""Reading the 15-minute rollups of one site back, per device, as counter buckets."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from facility.influx import InfluxClient, quote_ident, quote_string
from facility.schema import BUCKET_NS, Rollup
from facility.settings import ReportSettings
from reports.counters import Bucket, MeterEnergy, meter_energy

TAGS = ("device", "building", "load", "place", "kind")
# What the report uses of a rollup row (p_mean is for the dashboards' base-load panel).
READ = ("c_first", "c_last", "c_min", "c_max", "c_count", "p_max")


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    building: str
    load: str
    place: str
    kind: str


SLICE_NS = 7 * 86_400 * 10**9  # one query per week of rollups, run side by side


async def read_buckets(influx: InfluxClient, rollup: Rollup, site: str, start_ns: int,
                       end_ns: int, options: ReportSettings) -> dict[Device, list[Bucket]]:
    """Rollup rows of [start - 15 min, end): the extra bucket measures the first step.

    A long range is read as weekly slices in parallel: InfluxDB 1.x runs one query on
    one core, and a month of 50 meters is ~150,000 rows."""
    first = start_ns - BUCKET_NS
    bounds = [*range(first, end_ns, SLICE_NS), end_ns]
    parts = await asyncio.gather(*(
        _read_slice(influx, rollup, site, a, b, options) for a, b in itertools.pairwise(bounds)))
    out: dict[Device, list[Bucket]] = {}
    for part in parts:
        for device, rows in part.items():
            out.setdefault(device, []).extend(rows)
    return out


async def _read_slice(influx: InfluxClient, rollup: Rollup, site: str, start_ns: int,
                      end_ns: int, options: ReportSettings) -> dict[Device, list[Bucket]]:
    rp = quote_ident(options.rollup_retention_policy)
    fields = ", ".join(READ)
    group = ", ".join(quote_ident(t) for t in TAGS)
    statement = (f"SELECT {fields} FROM {rp}.{quote_ident(rollup.name)} "
                 f"WHERE site = {quote_string(site)} AND time >= {start_ns} "
                 f"AND time < {end_ns} GROUP BY {group}")
    result = await influx.query(statement)
    out: dict[Device, list[Bucket]] = {}
    for series in result[0] if result else []:
        tags = series.tags
        device = Device(tags.get("device", ""), tags.get("building", ""), tags.get("load", ""),
                        tags.get("place", ""), tags.get("kind", ""))
        if series.columns != ["time", *READ]:
            raise ValueError(f"unexpected rollup columns {series.columns}")
        out.setdefault(device, []).extend(
            Bucket(int(t), first, last, low, high, int(count), None, power)
            for t, first, last, low, high, count, power in series.values if count)
    return out


def energies(buckets: dict[Device, list[Bucket]], start_ns: int,
             end_ns: int) -> dict[Device, MeterEnergy]:
    return {device: meter_energy(rows, start_ns, end_ns) for device, rows in buckets.items()}
