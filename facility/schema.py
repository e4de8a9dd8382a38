"""Downsampling in InfluxDB: 15-minute rollups of the cumulative counters, so that a
month's report reads about 3,000 rows per meter instead of 40,000 raw points.

Each rollup bucket keeps, per device and with all its tags, the counter's first, last,
lowest and highest reading and how many readings there were, and the mean and highest
power. Those five counter figures are enough to find a reset or a meter replacement
inside a bucket (see reports/counters.py). 15 minutes is also the demand interval of
the supply tariff (最大需量), so peak demand comes from the same rows.

Continuous queries fill the rollups as data arrives (RESAMPLE FOR covers points that
arrive a little late). Points that arrive later still (a gateway replaying its spool
after a long outage) are caught by `sync_rollups`: before a report reads a range it
compares, per UTC day, the raw point count with the count the rollup holds and rebuilds
the days that differ with SELECT ... INTO, which runs inside InfluxDB.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from facility.influx import InfluxClient, quote_ident
from facility.settings import ReportSettings

log = logging.getLogger(__name__)

BUCKET = "15m"
BUCKET_NS = 15 * 60 * 1_000_000_000
DAY_NS = 86_400 * 1_000_000_000
FIELDS = ("c_first", "c_last", "c_min", "c_max", "c_count", "p_mean", "p_max")


@dataclass(frozen=True, slots=True)
class Rollup:
    name: str  # the rollup measurement
    source: str  # the raw measurement (a device family)
    counter: str  # a cumulative counter field
    power: str  # the matching power field, kW

    def select(self) -> str:
        c, p = quote_ident(self.counter), quote_ident(self.power)
        return (f"SELECT first({c}) AS c_first, last({c}) AS c_last, min({c}) AS c_min, "
                f"max({c}) AS c_max, count({c}) AS c_count, mean({p}) AS p_mean, "
                f"max({p}) AS p_max")


ENERGY = Rollup("energy_15m", "energy", "energy_import", "power_total")
EV_CHARGING = Rollup("ev_charger_15m", "ev_charger", "session_energy", "power")
ROLLUPS = (ENERGY, EV_CHARGING)


def _names(influx: InfluxClient, options: ReportSettings) -> tuple[str, str, str]:
    return (quote_ident(influx.database), quote_ident(influx.settings.retention_policy),
            quote_ident(options.rollup_retention_policy))


def cq_statement(influx: InfluxClient, rollup: Rollup, options: ReportSettings,
                 every: str, for_: str) -> tuple[str, str]:
    """The continuous query's name and its CREATE statement. The name carries a hash of
    the definition, so a changed definition replaces the old query instead of erroring."""
    db, raw, rp = _names(influx, options)
    target, source = quote_ident(rollup.name), quote_ident(rollup.source)
    body = (f"RESAMPLE EVERY {every} FOR {for_} BEGIN {rollup.select()} "
            f"INTO {db}.{rp}.{target} FROM {db}.{raw}.{source} "
            f"GROUP BY time({BUCKET}), * END")
    digest = hashlib.sha256(body.encode()).hexdigest()[:8]
    name = f"cq_{rollup.name}_{digest}"
    return name, f"CREATE CONTINUOUS QUERY {quote_ident(name)} ON {db} {body}"


async def ensure_downsampling(influx: InfluxClient, options: ReportSettings | None = None,
                              *, every: str = "5m", for_: str = "2h") -> None:
    """Create the rollup retention policy and the continuous queries; idempotent.

    Call it after `ensure_database` (the raw retention policy must exist). Continuous
    queries of an older definition are dropped and replaced.
    """
    options = options or ReportSettings()
    db, _, rp = _names(influx, options)
    duration = options.rollup_retention
    existing = await _retention_policies(influx)
    if options.rollup_retention_policy in existing:
        await influx.query(f"ALTER RETENTION POLICY {rp} ON {db} DURATION {duration}", write=True)
    else:
        await influx.query(f"CREATE RETENTION POLICY {rp} ON {db} DURATION {duration} "
                           "REPLICATION 1", write=True)
    present = await _continuous_queries(influx)
    for rollup in ROLLUPS:
        name, statement = cq_statement(influx, rollup, options, every, for_)
        for old in present:
            if old.startswith(f"cq_{rollup.name}_") and old != name:
                log.info("replacing continuous query %s with %s", old, name)
                await influx.query(f"DROP CONTINUOUS QUERY {quote_ident(old)} ON {db}", write=True)
        if name not in present:
            await influx.query(statement, write=True)


async def _retention_policies(influx: InfluxClient) -> set[str]:
    result = await influx.query(f"SHOW RETENTION POLICIES ON {quote_ident(influx.database)}")
    return {row["name"] for series in result[0] for row in series.rows()} if result else set()


async def _continuous_queries(influx: InfluxClient) -> set[str]:
    result = await influx.query("SHOW CONTINUOUS QUERIES")
    names: set[str] = set()
    for series in result[0] if result else []:
        if series.name == influx.database:
            names.update(row["name"] for row in series.rows())
    return names


async def rebuild(influx: InfluxClient, rollup: Rollup, start_ns: int, end_ns: int,
                  options: ReportSettings | None = None) -> None:
    """Recompute the rollup over [start, end) from raw data, inside InfluxDB."""
    options = options or ReportSettings()
    db, raw, rp = _names(influx, options)
    await influx.query(
        f"{rollup.select()} INTO {db}.{rp}.{quote_ident(rollup.name)} "
        f"FROM {db}.{raw}.{quote_ident(rollup.source)} "
        f"WHERE time >= {start_ns} AND time < {end_ns} GROUP BY time({BUCKET}), *",
        write=True)


async def sync_rollups(influx: InfluxClient, rollup: Rollup, start_ns: int, end_ns: int,
                       options: ReportSettings | None = None) -> list[int]:
    """Rebuild every UTC day of [start, end) whose raw point count differs from the
    rollup's; returns the days rebuilt (their start, ns). Late data lands this way."""
    options = options or ReportSettings()
    db, raw, rp = _names(influx, options)
    first_day = start_ns - start_ns % DAY_NS
    where = f"WHERE time >= {first_day} AND time < {end_ns} GROUP BY time(1d)"
    raw_counts = await _day_values(influx, f"SELECT count({quote_ident(rollup.counter)}) "
                                   f"FROM {db}.{raw}.{quote_ident(rollup.source)} {where}")
    rolled = await _day_values(influx, f"SELECT sum(c_count) FROM {db}.{rp}."
                               f"{quote_ident(rollup.name)} {where}")
    stale = [day for day, count in sorted(raw_counts.items())
             if count and rolled.get(day) != count]
    for day in stale:
        await rebuild(influx, rollup, day, day + DAY_NS, options)
    if stale:
        log.info("%s: rebuilt %d day(s) of rollups that differed from the raw data (late or "
                 "still arriving)", rollup.name, len(stale))
    return stale


async def _day_values(influx: InfluxClient, statement: str) -> dict[int, float]:
    result = await influx.query(statement)
    out: dict[int, float] = {}
    for series in result[0] if result else []:
        for time_ns, value in series.values:
            if value is not None:
                out[int(time_ns)] = value
    return out
