"""The energy-saving report: energy by building and by load, standard coal equivalent,
intensity per square metre and per person, office hours against nights and rest days,
peak demand, comparisons, EV charging, anomalies and data quality.

Buildings are measured by their `load: total` meters; sub-load meters (lighting, HVAC,
lifts, ...) are parts of their building's total and are never added to it. A building
without a total meter is the sum of its sub-meters. "Other" is what the total meter
measured beyond the sub-meters.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from facility.influx import InfluxClient
from facility.schema import BUCKET_NS, ENERGY, EV_CHARGING, sync_rollups
from facility.settings import Settings
from facility.site import SiteConfig
from reports.calendar import WorkCalendar
from reports.counters import BUCKET_HOURS, MeterEnergy
from reports.periods import Period
from reports.rollups import Device, energies, read_buckets

KGCE_PER_KWH = 0.1229  # GB/T 2589-2020, electricity, equivalent-value method
LOAD_ORDER = ("lighting", "hvac", "lifts", "canteen", "ev_charging", "ebike_charging")
OFFICE, NIGHT, REST = "office", "night", "rest"

Step = Callable[[str], None]


@dataclass(slots=True)
class PeriodData:
    period: Period
    meters: dict[Device, MeterEnergy]
    chargers: dict[Device, MeterEnergy] = field(default_factory=dict)
    rebuilt_days: int = 0

    def buckets(self) -> list[int]:
        start, end = self.period.ns()
        return list(range(start, end, BUCKET_NS))


@dataclass(slots=True)
class Building:
    """The meters that make up one building's energy."""

    id: str
    totals: list[MeterEnergy] = field(default_factory=list)
    subs: dict[str, list[MeterEnergy]] = field(default_factory=dict)

    @property
    def basis(self) -> list[MeterEnergy]:
        """The meters whose sum is the building: total meters, else all sub-meters."""
        return self.totals or [m for ms in self.subs.values() for m in ms]


def total(meters: Iterable[MeterEnergy]) -> float:
    return math.fsum(m.total for m in meters)


def joint_coverage(meters: list[MeterEnergy], buckets: int) -> float:
    """Share of the period's intervals in which every one of the meters is covered."""
    if not meters or not buckets:
        return 0.0
    common = set.intersection(*(m.covered for m in meters))
    return len(common) / buckets


def demand_series(meters: list[MeterEnergy]) -> dict[int, float]:
    """15-minute demand (kW) of the sum, at the intervals where all meters are covered."""
    if not meters:
        return {}
    common = set.intersection(*(m.covered for m in meters))
    return {t: math.fsum(m.energy.get(t, 0.0) for m in meters) / BUCKET_HOURS for t in common}


def buildings_of(data: PeriodData) -> dict[str, Building]:
    out: dict[str, Building] = {}
    for device, meter in data.meters.items():
        building = out.setdefault(device.building or device.place or "unknown",
                                  Building(device.building or device.place or "unknown"))
        if device.load == "total":
            building.totals.append(meter)
        else:
            building.subs.setdefault(device.load or "unknown", []).append(meter)
    return out


async def load_period(influx: InfluxClient, settings: Settings, site: SiteConfig,
                      period: Period, step: Step, *, chargers: bool = False) -> PeriodData:
    start, end = period.ns()
    options = settings.reports
    rebuilt = await sync_rollups(influx, ENERGY, start - BUCKET_NS, end, options)
    step(f"rollups checked for {period.label}")
    meters = energies(await read_buckets(influx, ENERGY, site.site.id, start, end, options),
                      start, end)
    step(f"energy meters read for {period.label}")
    data = PeriodData(period, meters, rebuilt_days=len(rebuilt))
    if chargers:
        rebuilt = await sync_rollups(influx, EV_CHARGING, start - BUCKET_NS, end, options)
        data.chargers = energies(
            await read_buckets(influx, EV_CHARGING, site.site.id, start, end, options),
            start, end)
        data.rebuilt_days += len(rebuilt)
        step(f"EV chargers read for {period.label}")
    return data


def classify(buckets: list[int], calendar: WorkCalendar, tz: ZoneInfo) -> dict[int, str]:
    """Office hours, workday nights, or rest days (weekends and holidays), per interval."""
    out: dict[int, str] = {}
    for t in buckets:
        moment = datetime.fromtimestamp(t / 1e9, tz)
        if calendar.is_office_time(moment):
            out[t] = OFFICE
        elif calendar.is_workday(moment.date()):
            out[t] = NIGHT
        else:
            out[t] = REST
    return out


def split(meters: list[MeterEnergy], classes: dict[int, str]) -> dict[str, float]:
    """Allocated energy per class of time; what crossed gaps is 'unallocated'."""
    out = {OFFICE: 0.0, NIGHT: 0.0, REST: 0.0}
    for meter in meters:
        for t, kwh in meter.energy.items():
            out[classes[t]] += kwh
    out["unallocated"] = math.fsum(m.unallocated for m in meters)
    return out


def sessions(meter: MeterEnergy, idle_kwh: float = 0.05) -> int:
    """Charging sessions: runs of intervals with energy, plus counter restarts in a run
    (a new session that started right after the previous one)."""
    active = {t for t, kwh in meter.energy.items() if kwh > idle_kwh}
    starts = {t for t in active if t - BUCKET_NS not in active}
    restarts = {e.t for e in meter.events if e.kind == "reset" and e.t in active} - starts
    return len(starts) + len(restarts)


def change(current: float, before: float | None) -> float | None:
    if before is None or before <= 0:
        return None
    return (current - before) / before


@dataclass(frozen=True, slots=True)
class Anomaly:
    device: Device
    day: str
    day_type: str
    energy: float
    baseline: float
    days_in_baseline: int

    @property
    def excess(self) -> float:
        return self.energy - self.baseline


def anomalies(data: PeriodData, calendar: WorkCalendar, tz: ZoneInfo,
              limit: int = 10) -> list[Anomaly]:
    """Days on which a meter used the most energy above its usual for that kind of day.

    Only days the meter covers fully count; the usual is the median of the meter's other
    fully covered days of the same kind (working day or rest day), at least three.
    """
    per_day = 24 * 3600 * 10**9 // BUCKET_NS
    found: list[Anomaly] = []
    for device, meter in data.meters.items():
        days: dict[str, list[int]] = {}
        for t in meter.covered:
            days.setdefault(datetime.fromtimestamp(t / 1e9, tz).date().isoformat(), []).append(t)
        full = {day: math.fsum(meter.energy[t] for t in ts)
                for day, ts in days.items() if len(ts) == per_day}
        kinds = {day: "工作日" if calendar.is_workday(datetime.fromisoformat(day).date())
                 else "休息日" for day in full}
        for day, kwh in full.items():
            others = [v for d, v in full.items() if d != day and kinds[d] == kinds[day]]
            if len(others) < 3:
                continue
            baseline = statistics.median(others)
            if kwh > baseline:
                found.append(Anomaly(device, day, kinds[day], kwh, baseline, len(others)))
    found.sort(key=lambda a: a.excess, reverse=True)
    return found[:limit]
