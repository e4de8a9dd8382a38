"""Electrical load profiles of the campus buildings.

Each building has loads by kind (lighting, HVAC, lifts, canteen kitchen, EV charging,
e-bike charging, and "plug": office equipment, IT, pumps, fans). A load's mean is its
peak times a daily profile (Guangzhou government office hours 08:30-12:00 and
14:30-18:00 on weekdays, a long lunch break, lower weekends); HVAC also follows the
outdoor temperature. Power is constant within a simulated minute and carries seeded
noise, so a meter's energy is exactly the sum of its minutes.

Peaks come from the site file: floor area and occupants of each building, and the rated
power of the EV chargers in its zone. They are planning figures for the demo.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from facility.messages import Family
from facility.site import Place, SiteConfig
from simulators.noise import Noise
from simulators.weather import Calendar, Weather

Points = Sequence[tuple[float, float]]


class LoadKind(StrEnum):
    LIGHTING = "lighting"
    HVAC = "hvac"
    LIFTS = "lifts"
    CANTEEN = "canteen"
    EV_CHARGING = "ev_charging"
    EBIKE_CHARGING = "ebike_charging"
    PLUG = "plug"  # everything a building has without a sub-meter of its own


class BuildingClass(StrEnum):
    OFFICE = "office"
    CONFERENCE = "conference"
    CANTEEN = "canteen"
    PARKING = "parking"


def piecewise(points: Points, x: float) -> float:
    """Linear interpolation between (x, y) points sorted by x; flat outside them."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


# Fractions of peak by local hour: (workday points, off-day points).
_OFFICE_LIGHTING = (
    [(0, 0.06), (6.5, 0.06), (7.5, 0.3), (8.5, 0.85), (11.9, 0.85), (12.1, 0.3), (14.2, 0.3),
     (14.5, 0.85), (18.0, 0.85), (18.5, 0.35), (20, 0.2), (22, 0.08), (24, 0.06)],
    [(0, 0.06), (8, 0.06), (9, 0.12), (17, 0.12), (18, 0.1), (22, 0.06), (24, 0.06)],
)
_HVAC_SCHEDULE = (
    # Pre-cooling from 07:30; overtime areas until 21:00.
    [(0, 0.05), (7.4, 0.05), (7.5, 1.15), (8.5, 1.0), (18.5, 1.0), (18.6, 0.3), (21, 0.3),
     (21.1, 0.05), (24, 0.05)],
    [(0, 0.05), (8.9, 0.05), (9, 0.15), (17, 0.15), (17.1, 0.05), (24, 0.05)],
)
PROFILES: dict[tuple[LoadKind, BuildingClass], tuple[Points, Points]] = {
    (LoadKind.LIGHTING, BuildingClass.OFFICE): _OFFICE_LIGHTING,
    (LoadKind.LIGHTING, BuildingClass.CONFERENCE): (
        [(0, 0.04), (8, 0.04), (8.5, 0.8), (11.6, 0.8), (12, 0.15), (14.2, 0.15), (14.5, 0.8),
         (17.2, 0.8), (17.5, 0.1), (20, 0.06), (24, 0.04)],
        [(0, 0.04), (24, 0.04)],
    ),
    (LoadKind.LIGHTING, BuildingClass.CANTEEN): (
        [(0, 0.05), (6.3, 0.05), (6.5, 0.7), (8.5, 0.7), (9, 0.3), (10.5, 0.4), (11.3, 1.0),
         (13.2, 1.0), (13.5, 0.3), (16.5, 0.3), (16.8, 0.8), (18.5, 0.8), (19, 0.05),
         (24, 0.05)],
        [(0, 0.05), (10.5, 0.05), (11, 0.5), (13, 0.5), (13.5, 0.05), (24, 0.05)],
    ),
    (LoadKind.LIGHTING, BuildingClass.PARKING): (
        [(0, 0.35), (6.5, 0.35), (7, 0.7), (19.5, 0.7), (20, 0.35), (24, 0.35)],
        [(0, 0.35), (24, 0.35)],
    ),
    (LoadKind.HVAC, BuildingClass.OFFICE): _HVAC_SCHEDULE,
    (LoadKind.HVAC, BuildingClass.CONFERENCE): (
        [(0, 0.04), (8, 0.04), (8.2, 1.0), (11.7, 1.0), (12, 0.1), (14.2, 0.1), (14.3, 1.0),
         (17.2, 1.0), (17.5, 0.04), (24, 0.04)],
        [(0, 0.04), (24, 0.04)],
    ),
    (LoadKind.HVAC, BuildingClass.CANTEEN): (
        [(0, 0.05), (6.4, 0.05), (6.5, 0.6), (8.5, 0.6), (8.6, 0.05), (10, 0.05), (10.1, 1.0),
         (13.5, 1.0), (13.6, 0.05), (16.4, 0.05), (16.5, 0.7), (18.5, 0.7), (18.6, 0.05),
         (24, 0.05)],
        [(0, 0.05), (10.9, 0.05), (11, 0.5), (13, 0.5), (13.1, 0.05), (24, 0.05)],
    ),
    (LoadKind.LIFTS, BuildingClass.OFFICE): (
        # Rush at arrival, lunch and going home.
        [(0, 0.03), (7, 0.03), (7.8, 0.3), (8.2, 0.9), (8.8, 0.9), (9.1, 0.4), (11.7, 0.4),
         (11.9, 0.8), (12.3, 0.8), (12.5, 0.25), (14.0, 0.25), (14.2, 0.75), (14.6, 0.75),
         (14.8, 0.4), (17.7, 0.4), (17.9, 0.85), (18.3, 0.85), (18.6, 0.2), (20, 0.1),
         (22, 0.03), (24, 0.03)],
        [(0, 0.03), (8, 0.03), (9, 0.08), (17, 0.08), (18, 0.03), (24, 0.03)],
    ),
    (LoadKind.CANTEEN, BuildingClass.CANTEEN): (
        # Breakfast, lunch preparation, the 11:30-13:00 lunch peak, dinner for duty staff.
        [(0, 0.1), (6.0, 0.1), (6.5, 0.45), (8.3, 0.45), (8.6, 0.2), (9.8, 0.2), (10.2, 0.6),
         (11.4, 0.65), (11.5, 1.0), (13.0, 1.0), (13.2, 0.4), (14.2, 0.4), (14.5, 0.12),
         (16.3, 0.12), (16.6, 0.5), (18.4, 0.5), (18.7, 0.1), (24, 0.1)],
        [(0, 0.1), (10.5, 0.1), (11, 0.3), (12.5, 0.3), (13, 0.1), (24, 0.1)],
    ),
    (LoadKind.EV_CHARGING, BuildingClass.PARKING): (
        [(0, 0.02), (7.5, 0.02), (8.5, 0.55), (11.5, 0.55), (12, 0.45), (14, 0.45),
         (15, 0.35), (17.5, 0.3), (18.5, 0.12), (20, 0.05), (24, 0.02)],
        [(0, 0.02), (9, 0.02), (10, 0.12), (17, 0.12), (18, 0.02), (24, 0.02)],
    ),
    (LoadKind.EBIKE_CHARGING, BuildingClass.PARKING): (
        # Some charge on arrival; the big bump is in the evening.
        [(0, 0.15), (5, 0.1), (7.5, 0.1), (8.5, 0.35), (11, 0.3), (14, 0.2), (17.5, 0.25),
         (18.5, 0.95), (22.0, 0.9), (23.0, 0.45), (24, 0.15)],
        [(0, 0.15), (5, 0.1), (9, 0.1), (17.5, 0.15), (18.5, 0.7), (22, 0.65), (23, 0.35),
         (24, 0.15)],
    ),
    (LoadKind.PLUG, BuildingClass.OFFICE): (
        [(0, 0.22), (7, 0.22), (8.5, 0.95), (12, 0.95), (12.2, 0.75), (14.3, 0.75),
         (14.5, 0.95), (18, 0.95), (18.5, 0.5), (20, 0.4), (22, 0.25), (24, 0.22)],
        [(0, 0.22), (9, 0.22), (10, 0.3), (17, 0.3), (18, 0.22), (24, 0.22)],
    ),
    (LoadKind.PLUG, BuildingClass.PARKING): (
        # Ventilation fans run harder when cars come and go.
        [(0, 0.3), (7.5, 0.3), (8.2, 0.9), (9.0, 0.5), (17.5, 0.5), (18.2, 0.9), (19, 0.3),
         (24, 0.3)],
        [(0, 0.3), (24, 0.3)],
    ),
}

POWER_FACTOR = {
    LoadKind.LIGHTING: 0.96, LoadKind.HVAC: 0.88, LoadKind.LIFTS: 0.82,
    LoadKind.CANTEEN: 0.93, LoadKind.EV_CHARGING: 0.99, LoadKind.EBIKE_CHARGING: 0.95,
    LoadKind.PLUG: 0.92,
}
# Relative standard deviation of the per-minute power.
MINUTE_SIGMA = {
    LoadKind.LIGHTING: 0.01, LoadKind.HVAC: 0.03, LoadKind.LIFTS: 0.3,
    LoadKind.CANTEEN: 0.06, LoadKind.EV_CHARGING: 0.08, LoadKind.EBIKE_CHARGING: 0.05,
    LoadKind.PLUG: 0.02,
}
# Peak power density, W/m² of floor area, by building class.
_DENSITY_W_M2: dict[BuildingClass, dict[LoadKind, float]] = {
    BuildingClass.OFFICE: {LoadKind.LIGHTING: 8, LoadKind.HVAC: 32, LoadKind.PLUG: 14},
    BuildingClass.CONFERENCE: {LoadKind.LIGHTING: 12, LoadKind.HVAC: 45, LoadKind.PLUG: 6},
    BuildingClass.CANTEEN: {LoadKind.LIGHTING: 10, LoadKind.HVAC: 40, LoadKind.PLUG: 8,
                            LoadKind.CANTEEN: 45},
    BuildingClass.PARKING: {LoadKind.LIGHTING: 3, LoadKind.PLUG: 4},
}
LIFT_KW = 15.0
EBIKE_SHED_KW = 12.0  # about 40 charging sockets of 0.3 kW, not all in use at once


def building_class(place: Place) -> BuildingClass:
    for cls in (BuildingClass.CANTEEN, BuildingClass.PARKING, BuildingClass.CONFERENCE):
        if cls.value in place.id:
            return cls
    return BuildingClass.OFFICE


@dataclass(frozen=True)
class LoadSpec:
    kind: LoadKind
    building_class: BuildingClass
    peak_kw: float

    @property
    def power_factor(self) -> float:
        return POWER_FACTOR[self.kind]


def building_loads(site: SiteConfig, building: Place,
                   extra_kinds: set[LoadKind]) -> list[LoadSpec]:
    """The loads of a building: its class's usual ones plus those its sub-meters name."""
    cls = building_class(building)
    area = building.floor_area_m2 or 5000.0
    peaks = {kind: density * area / 1000 for kind, density in _DENSITY_W_M2[cls].items()}
    occupants = building.occupants or 0
    if cls is BuildingClass.OFFICE:
        peaks[LoadKind.LIFTS] = LIFT_KW * max(2, round(occupants / 120))
    elif cls in (BuildingClass.CONFERENCE, BuildingClass.PARKING):
        peaks[LoadKind.LIFTS] = LIFT_KW * 2
    ev_kw = _ev_rated_kw(site, building.zone)
    if cls is BuildingClass.PARKING and ev_kw:
        peaks[LoadKind.EV_CHARGING] = ev_kw
    for kind in extra_kinds:
        if kind not in peaks:
            peaks[kind] = {LoadKind.EBIKE_CHARGING: EBIKE_SHED_KW,
                           LoadKind.EV_CHARGING: ev_kw or 42.0,
                           LoadKind.LIFTS: LIFT_KW * 2}.get(kind, 0.03 * area)
    return [LoadSpec(kind, cls, peak) for kind, peak in sorted(peaks.items())]


def _ev_rated_kw(site: SiteConfig, zone: str) -> float:
    total = 0.0
    for device in site.devices:
        if device.family is Family.EV_CHARGER and site.place(device.place).zone == zone:
            total += float(device.tags.get("rated_kw", "7"))
    return total


def profile_fraction(kind: LoadKind, cls: BuildingClass, calendar: Calendar,
                     t: float) -> float:
    """The mean fraction of peak of a load of this kind and building class at time t."""
    points = PROFILES.get((kind, cls)) or PROFILES.get((kind, BuildingClass.OFFICE))
    if points is None:  # e.g. e-bike charging counted in an office building
        points = next(p for (k, _), p in PROFILES.items() if k is kind)
    workday, offday = points
    return piecewise(workday if calendar.workday(t) else offday, calendar.hour(t))


def cooling_demand(temperature_c: float) -> float:
    """Chillers, pumps and fans as a fraction of design load, by outdoor temperature."""
    cooling = 0.2 + 0.8 * min(1.0, max(0.0, (temperature_c - 18.0) / 16.0))
    heating = 0.25 * min(1.0, max(0.0, (12.0 - temperature_c) / 8.0))  # heat pumps, rarely
    return cooling + heating


class Load:
    """One load of one building: a mean profile and seeded per-minute power."""

    def __init__(self, key: str, spec: LoadSpec, calendar: Calendar, weather: Weather,
                 noise: Noise) -> None:
        self.key = key
        self.spec = spec
        self.calendar = calendar
        self.weather = weather
        self.noise = noise
        self._minutes: dict[int, float] = {}

    def mean_kw(self, t: float) -> float:
        spec = self.spec
        fraction = profile_fraction(spec.kind, spec.building_class, self.calendar, t)
        if spec.kind is LoadKind.HVAC:
            fraction *= cooling_demand(self.weather.temperature(t))
        return spec.peak_kw * fraction

    def minute_kw(self, minute: int) -> float:
        """Power during simulated minute `minute` (epoch seconds // 60), kW."""
        found = self._minutes.get(minute)
        if found is not None:
            return found
        t = minute * 60.0
        day = self.calendar.day(t)
        daily = 1.0 + 0.05 * self.noise.gauss(self.key, "day", day)
        sigma = MINUTE_SIGMA[self.spec.kind]
        jitter = 1.0 + sigma * self.noise.gauss(self.key, "minute", minute)
        floor = 0.02 * self.spec.peak_kw * profile_fraction(
            self.spec.kind, self.spec.building_class, self.calendar, t)
        power = max(floor, self.mean_kw(t) * daily * jitter)
        if len(self._minutes) > 20_000:
            self._minutes.clear()
        self._minutes[minute] = power
        return power
