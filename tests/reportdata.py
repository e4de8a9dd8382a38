"""Synthetic campus data for the report and dashboard tests, written the way ingest
stores it: the measurement is the family, the tags are the site file's static tags plus
site, device and gateway, the fields are the reading's values plus `quality`.

Meters are described by their power over time; the counter is the exact integral of
that power, sampled every minute, so a test can work out the true energy on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from facility import lineprotocol as lp
from facility.influx import InfluxClient
from facility.site import SiteConfig

MINUTE_NS = 60 * 10**9
Power = Callable[[int], float]  # kW at a time (ns)


def ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9


def tags_of(site: SiteConfig, device_id: str) -> dict[str, str]:
    device = site.device(device_id)
    return {"site": site.site.id, "device": device_id, "gateway": device.gateway,
            **site.base_tags(device)}


@dataclass
class Meter:
    """A meter reading every minute from `start` to `end`, power given per minute.

    `resets`: times after whose reading the counter restarts from zero;
    `replacements`: times after whose reading a new meter with the given start reading
    takes over; `missing`: [from, to) ranges with no readings (the counter keeps counting).
    """

    device: str
    power: Power
    start: int
    end: int
    counter: float = 1000.0
    resets: list[int] = field(default_factory=list)
    replacements: dict[int, float] = field(default_factory=dict)
    missing: list[tuple[int, int]] = field(default_factory=list)

    def readings(self) -> Iterable[tuple[int, float, float]]:
        """(time, counter kWh, power kW); power applies to the minute after the time."""
        value = self.counter
        t = self.start
        while t < self.end:
            kw = self.power(t)
            if not any(a <= t < b for a, b in self.missing):
                yield t, value, kw
            if t in self.resets:
                value = 0.0
            if t in self.replacements:
                value = self.replacements[t]
            value += kw / 60
            t += MINUTE_NS

    def energy(self, start: int, end: int) -> float:
        """True energy between the readings at start and end: the integral of power."""
        return sum(self.power(t) / 60 for t in range(start, end, MINUTE_NS))


def meter_lines(site: SiteConfig, meter: Meter, family: str = "energy",
                counter_field: str = "energy_import", power_field: str = "power_total",
                skip: Callable[[int], bool] | None = None) -> list[str]:
    tags = tags_of(site, meter.device)
    return [lp.line(family, tags, {"quality": "good", counter_field: round(value, 6),
                                   power_field: kw}, t)
            for t, value, kw in meter.readings() if skip is None or not skip(t)]


async def write_lines(influx: InfluxClient, lines: list[str], batch: int = 20_000) -> None:
    for index in range(0, len(lines), batch):
        await influx.write("\n".join(lines[index:index + batch]).encode())
