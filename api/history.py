"""Time series from InfluxDB: a reading's history, downsampled by InfluxDB itself
(InfluxQL `GROUP BY time(...)`), and today's energy per building.

Storage (ingest/convert.py): one measurement per family, fields are the values, tag
`device` names the device. Numbers are stored as floats.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from api.models import BuildingEnergy, EnergyToday, History, HistoryPoint
from facility.influx import InfluxClient, quote_ident, quote_string
from facility.topology import Source, Topology

AGGREGATES = ("mean", "min", "max", "last", "first", "count")
KGCE_PER_KWH = 0.1229  # GB/T 2589, equivalent-value method


# Interval lengths a chart reads easily; InfluxDB aligns them to round clock times.
NICE_INTERVALS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600,
                  3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400)


def interval_for(start_ns: int, end_ns: int, points: int) -> int:
    """The shortest round interval (s) that gives [start, end) at most `points` intervals
    (one more where the interval boundaries do not fall on start)."""
    wanted = math.ceil(max(end_ns - start_ns, 1) / 1e9 / points)
    return next((n for n in NICE_INTERVALS if n >= wanted), wanted)


async def history(influx: InfluxClient, retention_policy: str, source: Source, field: str,
                  start_ns: int, end_ns: int, points: int, aggregate: str) -> History:
    interval = interval_for(start_ns, end_ns, points)
    query = (f"SELECT {aggregate}({quote_ident(field)}) AS v "
             f"FROM {quote_ident(retention_policy)}.{quote_ident(source.family)} "
             f"WHERE device = {quote_string(source.id)} "
             f"AND time >= {start_ns} AND time < {end_ns} "
             f"GROUP BY time({interval}s) fill(none)")
    result = await influx.query(query, epoch="ms")
    rows = [row for series in (result[0] if result else []) for row in series.rows()]
    return History(device=source.id, field=field, aggregate=aggregate, interval_s=interval,
                   start=start_ns // 1_000_000, end=end_ns // 1_000_000, query=query,
                   points=[HistoryPoint(t=int(r["time"]), v=r["v"]) for r in rows])


def local_midnight(timezone: str, now: datetime | None = None) -> datetime:
    now = now or datetime.now(ZoneInfo(timezone))
    local = now.astimezone(ZoneInfo(timezone))
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


async def energy_today(influx: InfluxClient, retention_policy: str, topology: Topology,
                       now: datetime | None = None) -> EnergyToday:
    """kWh since local midnight per building, from the meters' import counters."""
    midnight = local_midnight(topology.timezone, now)
    since = int(midnight.timestamp() * 1e9)
    until = int((midnight + timedelta(days=1)).timestamp() * 1e9)
    query = (f"SELECT spread(\"energy_import\") AS kwh "
             f"FROM {quote_ident(retention_policy)}.\"energy\" "
             f"WHERE site = {quote_string(topology.site_id)} "
             f"AND time >= {since} AND time < {until} GROUP BY device")
    result = await influx.query(query)
    per_meter: dict[str, float] = {}
    for series in result[0] if result else []:
        for row in series.rows():
            if row.get("kwh") is not None:
                per_meter[series.tags.get("device", "")] = float(row["kwh"])
    buildings: dict[str, BuildingEnergy] = {}
    for device, kwh in sorted(per_meter.items()):
        source = topology.sources.get(device)
        if source is None or source.family != "energy":
            continue
        building = source.building or source.place
        entry = buildings.get(building)
        if entry is None:
            entry = buildings[building] = BuildingEnergy(
                building=building, name=topology.place_name(building), kwh=0.0, kgce=0.0,
                by_load={}, meters=[])
        load = source.tags.get("load", "other")
        entry.by_load[load] = round(entry.by_load.get(load, 0.0) + kwh, 3)
        entry.meters.append(device)
        if load == "total":
            entry.kwh = round(entry.kwh + kwh, 3)
    for entry in buildings.values():
        if "total" not in entry.by_load:  # no main meter: the sum of what is metered
            entry.kwh = round(sum(entry.by_load.values()), 3)
        entry.kgce = round(entry.kwh * KGCE_PER_KWH, 3)
    return EnergyToday(
        since=since // 1_000_000,
        formula="kWh = Σ (last − first energy_import today) of the building's main meters "
                "(load=total; the sum of its sub-meters where it has none), from 00:00 "
                f"{topology.timezone}; kgce = kWh × {KGCE_PER_KWH} (GB/T 2589, equivalent "
                "value). A meter reset or replacement today makes its figure wrong.",
        buildings=sorted(buildings.values(), key=lambda b: b.building))
