"""Drainage and septic-tank gas: LoRaWAN sensors through ChirpStack v4 (`chirpstack`).

The water at each drain is integrated on a fixed 10 s grid from the campus start, so its
level at a given simulated time does not depend on how often anyone looked:

    dL/dt = gain x (rain - drain capacity)+  [+ a scenario surge]  - natural outflow - pump

The three waterlogging points of the 2023 report have their own character: the north-east
rain outlet wrongly connected to the sewer carries sewage all day (a daytime base flow);
the west-gate pipe broken by metro-construction settlement holds water and drains slowly;
the south-gate pipe choked by tree roots drains slowest and has no pump. A sump pump
starts at 25 cm above a drain's base level and stops at 8 cm.

The rain gauge is a tipping bucket (0.2 mm a tip): its counter only grows. The H2S/NH3
sensors at the west-annex septic tanks read low background values that rise when heavy
rain surcharges the sewers.

`object` fields and periods follow docs/devices/vendor-payloads.md: every 5 min, and every
minute while a level sensor sees its water rising; pumps also report at once when they
start or stop.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from facility.site import Device, Place
from simulators.mqtt_publisher import Outgoing, outgoing
from simulators.noise import Noise
from simulators.profiles import BuildingClass, LoadKind, profile_fraction
from simulators.weather import Calendar, Storm, Weather

STEP_S = 10.0
PUMP_START_CM = 25.0
PUMP_STOP_CM = 8.0
MAX_LEVEL_CM = 150.0
TIP_MM = 0.2
TENANT = "番禺行政中心"
GATEWAY_ID = "ac1f09fffe01a2b3"


@dataclass(frozen=True)
class DrainSpec:
    base_cm: float  # dry-weather water above the invert
    capacity_mm_h: float  # rain the pipe takes without backing up
    gain: float  # cm/min of rise per mm/h above capacity
    outflow_cm_min: float  # natural drainage when above base
    pump_cm_min: float = 0.0  # with a sump pump
    sewage: bool = False  # carries sewage: higher base in the daytime


DRAINS = {
    "ne-rain-outlet": DrainSpec(6.0, 15.0, 0.015, 0.8, pump_cm_min=1.2, sewage=True),
    "west-gate-drain": DrainSpec(4.0, 8.0, 0.02, 0.4, pump_cm_min=1.5),
    "south-gate-drain": DrainSpec(3.0, 12.0, 0.018, 0.3),
}
DEFAULT_DRAIN = DrainSpec(2.0, 20.0, 0.01, 1.0)


@dataclass(frozen=True)
class Surge:
    """A scenario: during a storm, the water at one drain rises this fast at the peak."""

    place: str
    storm: Storm
    rise_cm_min: float


class DrainageSystem:
    """Water levels, pumps and rain, integrated lazily on a fixed grid."""

    def __init__(self, places: list[str], pumped: set[str], origin: float, noise: Noise,
                 calendar: Calendar, weather: Weather) -> None:
        self.noise = noise
        self.calendar = calendar
        self.weather = weather
        self.specs = {p: DRAINS.get(p, DEFAULT_DRAIN) for p in places}
        self.pumped = pumped
        self.surges: list[Surge] = []
        self._t = math.floor(origin / STEP_S) * STEP_S
        self.levels = {p: self.base_level(p, self._t) for p in places}
        self.running = {p: False for p in places}
        self.run_seconds = {p: 0.0 for p in places}
        self.rain_mm = noise.between(1500.0, 4500.0, "rain-gauge", "since-install")
        self._history: dict[str, list[tuple[float, float]]] = {p: [] for p in places}

    def base_level(self, place: str, t: float) -> float:
        spec = self.specs[place]
        if spec.sewage:
            return spec.base_cm + 5.0 * profile_fraction(LoadKind.PLUG, BuildingClass.OFFICE,
                                                         self.calendar, t)
        return spec.base_cm

    def add_surge(self, place: str, storm: Storm, rise_cm_min: float) -> None:
        if place not in self.specs:
            raise KeyError(f"no drain is monitored at place {place!r}")
        self.surges.append(Surge(place, storm, rise_cm_min))

    def advance(self, t: float) -> None:
        while self._t + STEP_S <= t:
            self._step(self._t)
            self._t += STEP_S

    def _step(self, t: float) -> None:
        rain = self.weather.rain_mm_h(t)
        self.rain_mm += rain * STEP_S / 3600
        for place, spec in self.specs.items():
            level = self.levels[place]
            base = self.base_level(place, t)
            rate = spec.gain * max(0.0, rain - spec.capacity_mm_h)
            for surge in self.surges:
                if surge.place == place and surge.storm.peak_mm_h > 0:
                    share = surge.storm.intensity(t) / surge.storm.peak_mm_h
                    # The observed rise is the surge itself: natural outflow cannot keep up.
                    rate += share * (surge.rise_cm_min + spec.outflow_cm_min)
            if level > base:
                rate -= spec.outflow_cm_min
            if place in self.pumped:
                if level >= base + PUMP_START_CM:
                    self.running[place] = True
                elif level <= base + PUMP_STOP_CM:
                    self.running[place] = False
                if self.running[place]:
                    rate -= spec.pump_cm_min
                    self.run_seconds[place] += STEP_S
            self.levels[place] = min(MAX_LEVEL_CM, max(base, level + rate * STEP_S / 60))
            history = self._history[place]
            history.append((t + STEP_S, self.levels[place]))
            if len(history) > 12:
                del history[0]

    def level(self, place: str, t: float) -> float:
        self.advance(t)
        return self.levels[place]

    def rising(self, place: str, t: float) -> bool:
        """The water rose by more than 0.5 cm over the last minute."""
        self.advance(t)
        history = self._history[place]
        if len(history) < 7:
            return False
        return history[-1][1] - history[-7][1] > 0.5

    def pump_running(self, place: str, t: float) -> bool:
        self.advance(t)
        return self.running[place]

    def rain_total(self, t: float) -> float:
        self.advance(t)
        return self.rain_mm


class ChirpstackDevice:
    """A LoRaWAN sensor: ChirpStack v4 uplink events with the codec's decoded `object`."""

    application = "drainage"
    profile = "LoRaWAN sensor"

    def __init__(self, device: Device, place: Place, site_id: str, system: DrainageSystem,
                 noise: Noise) -> None:
        if device.mqtt is None:
            raise ValueError(f"device {device.id!r}: a ChirpStack device needs a devEui key")
        self.device_id = device.id
        self.device = device
        self.dev_eui = device.mqtt.key
        self.place = place
        self.site_id = site_id
        self.system = system
        self.noise = noise
        self.f_cnt = noise.integer(100, 5000, device.id, "fcnt")
        self.dev_addr = noise.hex(8, device.id, "devaddr")
        self.rssi = noise.between(-112.0, -85.0, device.id, "rssi")
        self.battery = noise.between(3.52, 3.66, device.id, "battery")

    def _id(self, kind: str, name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"chirpstack:{self.site_id}:{kind}:{name}"))

    def object(self, t: float) -> dict[str, object]:
        raise NotImplementedError

    def battery_v(self, t: float) -> float:
        return round(self.battery + 0.005 * self.noise.gauss(self.device_id, "bat",
                                                             math.floor(t / 300)), 2)

    def period(self, t: float) -> float:
        return 300.0

    def report(self, t: float) -> list[Outgoing]:
        self.f_cnt += 1
        application_id = self._id("application", self.application)
        stamp = datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")
        rssi = round(self.rssi + 3 * self.noise.gauss(self.device_id, "rssi", self.f_cnt))
        snr = round(max(-15.0, min(12.0, 10 + (rssi + 110) / 4
                                   + self.noise.gauss(self.device_id, "snr", self.f_cnt))), 1)
        body = {
            "deduplicationId": str(self.noise.uuid4(self.device_id, "uplink", self.f_cnt)),
            "time": stamp,
            "deviceInfo": {
                "tenantId": self._id("tenant", TENANT), "tenantName": TENANT,
                "applicationId": application_id, "applicationName": self.application,
                "deviceProfileId": self._id("profile", self.profile),
                "deviceProfileName": self.profile, "deviceName": self.device.name,
                "devEui": self.dev_eui, "deviceClassEnabled": "CLASS_A", "tags": {},
            },
            "devAddr": self.dev_addr, "adr": True, "dr": 2, "fCnt": self.f_cnt, "fPort": 2,
            "confirmed": False,
            "rxInfo": [{"gatewayId": GATEWAY_ID, "rssi": rssi, "snr": snr}],
            "txInfo": {"frequency": 470_300_000 + 200_000 * (self.f_cnt % 8),
                       "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 10,
                                               "codeRate": "CR_4_5"}}},
            "object": self.object(t),
        }
        return [outgoing(f"application/{application_id}/device/{self.dev_eui}/event/up", body)]

    def changes(self, t: float) -> list[Outgoing]:
        return []

    def next_check(self, t: float) -> float | None:
        return None


class LevelSensor(ChirpstackDevice):
    profile = "UWL-100"
    _last_report: float | None = None

    def object(self, t: float) -> dict[str, object]:
        self._last_report = t
        level = self.system.level(self.place.id, t)
        level += 0.2 * self.noise.gauss(self.device_id, "level", math.floor(t / 60))
        return {"water_level_cm": round(max(0.0, level), 1), "battery_v": self.battery_v(t)}

    def period(self, t: float) -> float:
        return 60.0 if self.system.rising(self.place.id, t) else 300.0

    def changes(self, t: float) -> list[Outgoing]:
        # Rising water switches to one-minute uplinks at once, not at the next 5-min slot.
        last = self._last_report
        if last is not None and t - last >= 60.0 and self.system.rising(self.place.id, t):
            return self.report(t)
        return []

    def next_check(self, t: float) -> float | None:
        # While it rains hard, look every 10 s so that the faster period starts in time.
        return t + STEP_S if self.system.weather.rain_mm_h(t) > 5.0 else None


class RainGauge(ChirpstackDevice):
    profile = "TRG-200"

    def object(self, t: float) -> dict[str, object]:
        tips = math.floor(self.system.rain_total(t) / TIP_MM)
        return {"rain_mm_total": round(tips * TIP_MM, 1),
                "rain_mm_per_h": round(self.system.weather.rain_mm_h(t), 1),
                "battery_v": self.battery_v(t)}


class SumpPump(ChirpstackDevice):
    profile = "SPC-20"

    def __init__(self, device: Device, place: Place, site_id: str, system: DrainageSystem,
                 noise: Noise) -> None:
        super().__init__(device, place, site_id, system, noise)
        self.hours0 = noise.between(120.0, 900.0, device.id, "run-hours")
        self._last_running: bool | None = None

    def object(self, t: float) -> dict[str, object]:
        running = self.system.pump_running(self.place.id, t)
        self._last_running = running
        amps = 11.6 + 0.2 * self.noise.gauss(self.device_id, "amps", math.floor(t / 60))
        hours = self.hours0 + self.system.run_seconds[self.place.id] / 3600
        return {"running": running, "current_a": round(amps, 1) if running else 0.0,
                "fault": False, "run_hours": round(hours, 1)}

    def changes(self, t: float) -> list[Outgoing]:
        if self._last_running is None:
            return []
        if self.system.pump_running(self.place.id, t) == self._last_running:
            return []
        return self.report(t)

    def next_check(self, t: float) -> float | None:
        return t + STEP_S if self.system.weather.storm_at(t) or self._last_running else None


class GasSensor(ChirpstackDevice):
    application = "septic-gas"
    profile = "GS-2H"

    def __init__(self, device: Device, place: Place, site_id: str, system: DrainageSystem,
                 noise: Noise) -> None:
        super().__init__(device, place, site_id, system, noise)
        self.h2s_base = noise.between(0.05, 0.3, device.id, "h2s")
        self.nh3_base = noise.between(1.0, 4.0, device.id, "nh3")

    def object(self, t: float) -> dict[str, object]:
        weather = self.system.weather
        warmth = max(0.0, (weather.temperature(t) - 20.0) / 15.0)
        surcharge = 1.0 + 3.0 * min(1.0, weather.rain_mm_h(t) / 40.0)  # sewers back up
        bucket = math.floor(t / 300)
        h2s = self.h2s_base * (1 + 0.5 * warmth) * surcharge * (
            1 + 0.1 * self.noise.gauss(self.device_id, "h2s", bucket))
        nh3 = self.nh3_base * (1 + 0.3 * warmth) * (
            1 + 0.08 * self.noise.gauss(self.device_id, "nh3", bucket))
        return {"h2s_ppm": round(max(0.0, h2s), 2), "nh3_ppm": round(max(0.0, nh3), 1),
                "battery_v": self.battery_v(t)}
