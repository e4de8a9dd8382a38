"""Reading the 15-minute rollups of one site back, per device, as counter buckets."""

from __future__ import annotations

from dataclasses import dataclass

from facility.influx import InfluxClient, quote_ident, quote_string
from facility.settings import ReportSettings
from reports.counters import Bucket, MeterEnergy, meter_energy
from reports.downsample import BUCKET_NS, FIELDS, Rollup

TAGS = ("device", "building", "load", "place", "kind")


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    building: str
    load: str
    place: str
    kind: str


async def read_buckets(influx: InfluxClient, rollup: Rollup, site: str, start_ns: int,
                       end_ns: int, options: ReportSettings) -> dict[Device, list[Bucket]]:
    """Rollup rows of [start - 15 min, end): the extra bucket measures the first step."""
    rp = quote_ident(options.rollup_retention_policy)
    fields = ", ".join(FIELDS)
    group = ", ".join(quote_ident(t) for t in TAGS)
    statement = (f"SELECT {fields} FROM {rp}.{quote_ident(rollup.name)} "
                 f"WHERE site = {quote_string(site)} AND time >= {start_ns - BUCKET_NS} "
                 f"AND time < {end_ns} GROUP BY {group}")
    result = await influx.query(statement)
    out: dict[Device, list[Bucket]] = {}
    for series in result[0] if result else []:
        tags = series.tags
        device = Device(tags.get("device", ""), tags.get("building", ""), tags.get("load", ""),
                        tags.get("place", ""), tags.get("kind", ""))
        index = {name: series.columns.index(name) for name in ("time", *FIELDS)}
        rows = out.setdefault(device, [])
        for row in series.values:
            count = row[index["c_count"]]
            if not count:
                continue
            rows.append(Bucket(
                t=int(row[index["time"]]), first=row[index["c_first"]],
                last=row[index["c_last"]], low=row[index["c_min"]], high=row[index["c_max"]],
                count=int(count), power_mean=row[index["p_mean"]],
                power_max=row[index["p_max"]]))
    return out


def energies(buckets: dict[Device, list[Bucket]], start_ns: int,
             end_ns: int) -> dict[Device, MeterEnergy]:
    return {device: meter_energy(rows, start_ns, end_ns) for device, rows in buckets.items()}
