"""Energy from cumulative counters, read as 15-minute rollup buckets.

A meter's energy is the sum of its counter's increases. Three things break the naive
"last minus first":

- a reset: the counter drops and counts up again from zero; the reading after the
  drop is the energy since the reset, so it is counted;
- a replacement (or a counter re-based by a technician): the new reading has nothing
  to do with the old one; a drop to a value that cannot have been consumed since the
  last reading, or a rise larger than the meter can physically consume in the time,
  is a replacement, and the step across it is not counted (it is reported);
- a gap: no readings for a while. The counter kept counting, so the difference across
  the gap is real, measured energy, and it is counted in the total; but when in the gap
  it was used is unknown, so it is reported apart ("unallocated") and never spread
  over the gap's hours. The gap's intervals are not covered.

"What the meter can consume" is 1.5 x the highest power the meter reported in the
period, times the time between the two readings, plus 1 kWh.

Each bucket's energy is the step from the previous bucket's last reading to its first
reading plus the increase inside it, so that consecutive periods add up exactly. With
only first, last, min and max of a bucket, one reset or replacement inside a bucket is
resolved exactly; two inside the same 15 minutes would be read as one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from facility.schema import BUCKET_NS

BUCKET_HOURS = BUCKET_NS / 3.6e12
SAFETY = 1.5
SLACK_KWH = 1.0


@dataclass(frozen=True, slots=True)
class Bucket:
    """One rollup row: the counter's readings in [t, t + 15 min)."""

    t: int
    first: float
    last: float
    low: float
    high: float
    count: int
    power_mean: float | None = None
    power_max: float | None = None


@dataclass(frozen=True, slots=True)
class CounterEvent:
    t: int  # the bucket where it was seen
    kind: str  # "reset", "replacement" or "jump"
    before: float
    after: float
    counted: float  # kWh counted for the step


@dataclass(slots=True)
class MeterEnergy:
    """A meter's energy over [start, end): per bucket, and what could not be placed."""

    start: int
    end: int
    energy: dict[int, float] = field(default_factory=dict)  # bucket start -> kWh
    covered: set[int] = field(default_factory=set)  # buckets measured end to end
    unallocated: float = 0.0  # kWh measured across gaps, time of use unknown
    events: list[CounterEvent] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [from, to) with no reading
    power_max: float | None = None

    @property
    def buckets(self) -> int:
        return (self.end - self.start) // BUCKET_NS

    @property
    def total(self) -> float:
        return math.fsum(self.energy.values()) + self.unallocated

    @property
    def allocated(self) -> float:
        return math.fsum(self.energy.values())

    @property
    def coverage(self) -> float:
        return len(self.covered) / self.buckets if self.buckets else 0.0

    def demand(self, t: int) -> float | None:
        """Mean power over the bucket (kW) when it is covered."""
        if t not in self.covered:
            return None
        return self.energy.get(t, 0.0) / BUCKET_HOURS


def _bound(power: float | None, hours: float) -> float:
    if power is None:
        return math.inf
    return SAFETY * power * hours + SLACK_KWH


def _jitter(value: float) -> float:
    # Float32 meter registers round; a drop this small is rounding, not a reset.
    return max(1e-3, abs(value) * 1e-7)


def meter_energy(buckets: Iterable[Bucket], start: int, end: int) -> MeterEnergy:
    """Energy per bucket of [start, end) from rollup rows (which may include the bucket
    just before `start`, to measure the step into the first one)."""
    rows = sorted((b for b in buckets if b.count > 0 and start - BUCKET_NS <= b.t < end),
                  key=lambda b: b.t)
    out = MeterEnergy(start=start, end=end)
    powers = [b.power_max for b in rows if b.power_max is not None]
    power = max(powers) if powers else None
    out.power_max = power
    prev: Bucket | None = None
    for row in rows:
        if row.t < start:
            prev = row
            continue
        inside, inside_ok = _inside(row, power, out)
        out.energy[row.t] = inside
        if prev is None:
            # No reading before this bucket in reach: the step into it is not measured.
            first_gap_from = start
            if row.t > first_gap_from:
                out.gaps.append((first_gap_from, row.t))
        else:
            adjacent = row.t - prev.t == BUCKET_NS
            hours = (row.t - prev.t + BUCKET_NS) / 3.6e12  # the longest the step can span
            step, step_ok = _step(prev, row, power, hours, out)
            if adjacent:
                out.energy[row.t] += step
                if step_ok and inside_ok:
                    out.covered.add(row.t)
            else:
                out.gaps.append((max(prev.t + BUCKET_NS, start), row.t))
                out.unallocated += step
        prev = row
    last_seen = rows[-1].t if rows else start - BUCKET_NS
    if last_seen + BUCKET_NS < end:
        out.gaps.append((max(last_seen + BUCKET_NS, start), end))
    return out


def _inside(row: Bucket, power: float | None, out: MeterEnergy) -> tuple[float, bool]:
    """The increase within one bucket, and whether it is fully measured."""
    dropped = row.low < row.first - _jitter(row.first) or row.high > row.last + _jitter(row.last)
    if not dropped:
        rise = max(0.0, row.last - row.first)
        if rise > _bound(power, BUCKET_HOURS):
            out.events.append(CounterEvent(row.t, "jump", row.first, row.last, 0.0))
            return 0.0, False
        return rise, True
    # One drop inside: readings first..high, then low..last.
    before = max(0.0, row.high - row.first)
    after = max(0.0, row.last - row.low)
    if row.low <= _bound(power, BUCKET_HOURS):
        out.events.append(CounterEvent(row.t, "reset", row.high, row.low, row.low))
        return before + row.low + after, True
    out.events.append(CounterEvent(row.t, "replacement", row.high, row.low, 0.0))
    return before + after, False


def _step(prev: Bucket, row: Bucket, power: float | None, hours: float,
          out: MeterEnergy) -> tuple[float, bool]:
    """The increase from the previous bucket's last reading to this one's first."""
    diff = row.first - prev.last
    if diff >= -_jitter(prev.last):
        diff = max(0.0, diff)
        if diff > _bound(power, hours):
            out.events.append(CounterEvent(row.t, "jump", prev.last, row.first, 0.0))
            return 0.0, False
        return diff, True
    if row.first <= _bound(power, hours):
        out.events.append(CounterEvent(row.t, "reset", prev.last, row.first, row.first))
        return row.first, True
    out.events.append(CounterEvent(row.t, "replacement", prev.last, row.first, 0.0))
    return 0.0, False


def sum_by_bucket(meters: Sequence[MeterEnergy]) -> dict[int, float]:
    out: dict[int, float] = {}
    for meter in meters:
        for t, kwh in meter.energy.items():
            out[t] = out.get(t, 0.0) + kwh
    return out
