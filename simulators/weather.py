"""Local time and Guangzhou weather: temperature, showers and scenario rainstorms.

Temperature: approximate 1991-2020 monthly means for Guangzhou, a daily cycle peaking
mid-afternoon, a slowly drifting weather offset and cooling under rain. Rain: seeded
showers, likelier and heavier in the April-September wet season, plus the rainstorms
that scenarios add. Public holidays are not modelled; Saturday and Sunday are off days.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from simulators.noise import Noise

# Monthly mean air temperature (°C) and half the typical daily range, January first.
MONTHLY_MEAN_C = (13.9, 15.4, 18.4, 22.4, 26.0, 27.9, 29.1, 28.9, 27.7, 24.8, 20.4, 15.6)
DAILY_HALF_RANGE_C = (4.5, 4.0, 3.8, 3.6, 3.5, 3.2, 3.4, 3.4, 3.5, 4.0, 4.5, 4.8)
# Chance that a day has showers, by month.
RAIN_DAY_CHANCE = (0.25, 0.3, 0.4, 0.5, 0.55, 0.6, 0.5, 0.55, 0.4, 0.2, 0.15, 0.15)


@dataclass(frozen=True)
class Calendar:
    """Local wall-clock views of simulated epoch seconds."""

    timezone: str = "Asia/Shanghai"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # zoneinfo caches instances

    def local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    def hour(self, t: float) -> float:
        d = self.local(t)
        return d.hour + d.minute / 60 + (d.second + d.microsecond / 1e6) / 3600

    def workday(self, t: float) -> bool:
        return self.local(t).weekday() < 5

    def day(self, t: float) -> int:
        """Local date as an ordinal, the key of everything that repeats daily."""
        return self.local(t).date().toordinal()

    def midnight(self, day: int) -> float:
        d = datetime.fromordinal(day).replace(tzinfo=self.tz)
        return d.timestamp()


@dataclass(frozen=True)
class Shower:
    start: float
    duration: float
    peak_mm_h: float

    def intensity(self, t: float) -> float:
        x = (t - self.start) / self.duration
        if not 0.0 <= x <= 1.0:
            return 0.0
        return self.peak_mm_h * math.sin(math.pi * x)


@dataclass(frozen=True)
class Storm:
    """A scenario rainstorm: quick build-up, a long peak, a tail."""

    start: float
    duration: float
    peak_mm_h: float

    @property
    def end(self) -> float:
        return self.start + self.duration

    def intensity(self, t: float) -> float:
        x = (t - self.start) / self.duration
        if not 0.0 <= x <= 1.0:
            return 0.0
        if x < 0.1:
            return self.peak_mm_h * x / 0.1
        if x < 0.7:
            return self.peak_mm_h
        return self.peak_mm_h * (1.0 - x) / 0.3


class Weather:
    def __init__(self, calendar: Calendar, noise: Noise) -> None:
        self.calendar = calendar
        self.noise = noise
        self.storms: list[Storm] = []
        self._showers: dict[int, tuple[Shower, ...]] = {}

    def add_storm(self, start: float, duration: float, peak_mm_h: float) -> Storm:
        storm = Storm(start, duration, peak_mm_h)
        self.storms.append(storm)
        return storm

    def storm_at(self, t: float) -> Storm | None:
        return next((s for s in self.storms if s.start <= t <= s.end), None)

    def showers(self, day: int) -> tuple[Shower, ...]:
        found = self._showers.get(day)
        if found is None:
            found = self._plan_showers(day)
            if len(self._showers) > 64:
                self._showers.clear()
            self._showers[day] = found
        return found

    def _plan_showers(self, day: int) -> tuple[Shower, ...]:
        rng = self.noise.rng("showers", day)
        month = datetime.fromordinal(day).month
        if rng.random() >= RAIN_DAY_CHANCE[month - 1]:
            return ()
        wet_season = 5 <= month <= 9
        midnight = self.calendar.midnight(day)
        showers = []
        for _ in range(rng.randint(1, 2)):
            # Summer rain is mostly afternoon thunderstorms; winter drizzle comes any time.
            hour = rng.uniform(13.0, 20.0) if wet_season else rng.uniform(0.0, 22.0)
            showers.append(Shower(
                start=midnight + hour * 3600,
                duration=rng.uniform(20, 90) * 60,
                peak_mm_h=rng.uniform(4, 40) if wet_season else rng.uniform(1, 8),
            ))
        return tuple(showers)

    def rain_mm_h(self, t: float) -> float:
        day = self.calendar.day(t)
        rain = sum((s.intensity(t) for d in (day - 1, day) for s in self.showers(d)), 0.0)
        return rain + sum((s.intensity(t) for s in self.storms), 0.0)

    def temperature(self, t: float) -> float:
        """Outdoor air temperature, °C."""
        local = self.calendar.local(t)
        # Interpolate between mid-month means by day of year.
        doy = local.timetuple().tm_yday - 1 + local.hour / 24
        pos = doy / 365.25 * 12 - 0.5
        i = math.floor(pos)
        frac = pos - i
        mean = (1 - frac) * MONTHLY_MEAN_C[i % 12] + frac * MONTHLY_MEAN_C[(i + 1) % 12]
        half = (1 - frac) * DAILY_HALF_RANGE_C[i % 12] + frac * DAILY_HALF_RANGE_C[(i + 1) % 12]
        hour = local.hour + local.minute / 60
        daily = half * math.cos(2 * math.pi * (hour - 14.5) / 24)
        drift = 1.5 * self.noise.smooth(t, 86400.0, "weather-offset")
        cooling = min(4.0, 0.15 * self.rain_mm_h(t))
        return mean + daily + drift - cooling
