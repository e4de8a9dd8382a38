"""EV charge points as the operator's OCPP 1.6 back end reports them (`evcp`).

Sessions are planned per charger and local day from the seed: staff cars on the 7 kW AC
points arrive in the morning and stay for hours (Charging, then SuspendedEV once the car
is full, until the driver leaves); the 60 kW DC points see shorter visits through the day
with a taper near the end. Each session goes Preparing (plugged in, not yet authorised)
-> Charging -> [SuspendedEV] -> Finishing -> Available. Power ramps up over a minute or
two; the session energy (Wh) is the exact integral of the power; the connector warms
with the square of the current and cools after.

`fault(error)` puts the point in Faulted with that OCPP error code until `clear()`; a
session running at the time is lost, as after a real trip.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from facility.site import Device, Place, PlaceKind
from simulators.mqtt_publisher import Outgoing, outgoing
from simulators.noise import Noise
from simulators.weather import Calendar, Weather

OCPP_STATUSES = ("Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV",
                 "Finishing", "Reserved", "Unavailable", "Faulted")
OCPP_ERRORS = ("NoError", "ConnectorLockFailure", "EVCommunicationError", "GroundFailure",
               "HighTemperature", "InternalError", "LocalListConflict", "OtherError",
               "OverCurrentFailure", "OverVoltage", "PowerMeterFailure", "PowerSwitchFailure",
               "ReaderFailure", "ResetFailure", "UnderVoltage", "WeakSignal")
VENDOR_ERRORS = {
    "HighTemperature": "E-0107", "GroundFailure": "E-0203", "OverCurrentFailure": "E-0301",
    "ConnectorLockFailure": "E-0402", "PowerMeterFailure": "E-0501", "OverVoltage": "E-0602",
    "UnderVoltage": "E-0603", "InternalError": "E-0901",
}
PREPARING_S = 45.0
FINISHING_S = 30.0


@dataclass(frozen=True)
class Session:
    plug_in: float
    charge_start: float
    charge_end: float  # the car stops drawing (full or the driver's limit)
    unplug: float
    peak_w: float
    ramp_s: float
    taper_from: float  # DC: power falls linearly to 30 % of peak from here to charge_end
    transaction_id: int

    def power(self, t: float) -> float:
        if not self.charge_start <= t < self.charge_end:
            return 0.0
        ramp = min(1.0, (t - self.charge_start) / self.ramp_s)
        if t > self.taper_from:
            x = (t - self.taper_from) / (self.charge_end - self.taper_from)
            return self.peak_w * min(ramp, 1.0 - 0.7 * x)
        return self.peak_w * ramp

    def energy_wh(self, t: float) -> float:
        """Exact integral of power() from charge_start to t (power is piecewise linear)."""
        end = min(t, self.charge_end)
        if end <= self.charge_start:
            return 0.0
        ramp_end = min(self.charge_start + self.ramp_s, self.taper_from)
        points = sorted({self.charge_start, ramp_end, self.taper_from, end})
        points = [p for p in points if self.charge_start <= p <= end]
        total = 0.0
        for a, b in itertools.pairwise(points):
            total += (self.power(a) + self.power(b - 1e-9)) / 2 * (b - a)
        return total / 3600.0


class Charger:
    def __init__(self, device: Device, place: Place, noise: Noise, calendar: Calendar,
                 weather: Weather) -> None:
        if device.mqtt is None:
            raise ValueError(f"device {device.id!r}: an EV charger needs an mqtt key")
        self.device_id = device.id
        self.key = device.mqtt.key
        self.place = place
        self.noise = noise
        self.calendar = calendar
        self.weather = weather
        self.rated_w = float(device.tags.get("rated_kw", "7")) * 1000
        self.dc = self.rated_w > 22_000
        self._tx_base = noise.integer(1000, 9000, device.id, "transaction") * 1000
        self._days: dict[int, tuple[Session, ...]] = {}
        self.error = "NoError"
        self._fault_since: float | None = None
        self._lost_until: float | None = None  # sessions begun before this are lost
        self._last_status: str | None = None

    # Planning.
    def sessions(self, day: int) -> tuple[Session, ...]:
        found = self._days.get(day)
        if found is None:
            found = self._plan(day)
            if len(self._days) > 16:
                self._days.clear()
            self._days[day] = found
        return found

    def _plan(self, day: int) -> tuple[Session, ...]:
        rng = self.noise.rng("ev-sessions", self.device_id, day)
        midnight = self.calendar.midnight(day)
        workday = self.calendar.workday(midnight + 12 * 3600)
        sessions = []
        if self.dc:
            visits = rng.randint(3, 7) if workday else rng.randint(0, 2)
            starts = sorted(rng.uniform(8.0, 19.5) for _ in range(visits))
        else:
            visits = rng.choice((1, 1, 2)) if workday else rng.choice((0, 0, 1))
            starts = sorted([rng.uniform(8.0, 9.6)] + [rng.uniform(12.5, 15.0)
                                                        for _ in range(visits - 1)])[:visits]
        not_before = 0.0
        for i, hour in enumerate(starts):
            plug = max(midnight + hour * 3600, not_before)
            start = plug + PREPARING_S
            peak = self.rated_w * rng.uniform(0.88, 0.98)
            if self.dc:
                energy_wh = rng.uniform(15_000, 40_000)
                duration = energy_wh / (peak * 0.85) * 3600
                stay = duration + rng.uniform(60, 600)
            else:
                energy_wh = rng.uniform(8_000, 35_000)
                duration = energy_wh / peak * 3600
                stay = max(duration + 600, rng.uniform(2.5, 8.0) * 3600)
            end = start + duration
            unplug = start + stay
            sessions.append(Session(
                plug_in=plug, charge_start=start, charge_end=end, unplug=unplug,
                peak_w=peak, ramp_s=120.0 if self.dc else 60.0,
                taper_from=start + 0.7 * duration if self.dc else end,
                transaction_id=self._tx_base + (day % 1000) * 10 + i,
            ))
            not_before = unplug + FINISHING_S + 60
        return tuple(sessions)

    def session_at(self, t: float) -> Session | None:
        day = self.calendar.day(t)
        for d in (day - 1, day):
            for s in self.sessions(d):
                if s.plug_in <= t < s.unplug + FINISHING_S:
                    if self._lost_until is not None and s.plug_in < self._lost_until:
                        continue  # tripped by a fault
                    return s
        return None

    # State.
    def status(self, t: float) -> str:
        if self._fault_since is not None:
            return "Faulted"
        s = self.session_at(t)
        if s is None:
            return "Available"
        if t < s.charge_start:
            return "Preparing"
        if t < s.charge_end:
            return "Charging"
        if t < s.unplug:
            return "SuspendedEV"
        return "Finishing"

    def power(self, t: float) -> float:
        s = self.session_at(t) if self._fault_since is None else None
        if s is None:
            return 0.0
        p = s.power(t)
        if p <= 0:
            return 0.0
        bucket = math.floor(t / 15)
        return p * (1 + 0.004 * self.noise.gauss(self.device_id, "ripple", bucket))

    def energy(self, t: float) -> int:
        s = self.session_at(t) if self._fault_since is None else None
        return 0 if s is None else math.floor(s.energy_wh(t))

    def temperature(self, t: float) -> float:
        outdoor = self.weather.temperature(t)
        ambient = outdoor if self.place.kind is PlaceKind.CAR_PARK else outdoor - 1.0
        heat = 2.0
        if self._fault_since is not None and self.error == "HighTemperature":
            heat += 48.0 * math.exp(-(t - self._fault_since) / 1200)
        else:
            s = self.session_at(t)
            if s is not None and t >= s.charge_start:
                rise = 24.0 * (s.peak_w / self.rated_w) ** 2
                warm = 1 - math.exp(-(min(t, s.charge_end) - s.charge_start) / 600)
                cool = math.exp(-max(0.0, t - s.charge_end) / 900)
                heat += rise * warm * cool
        bucket = math.floor(t / 15)
        return ambient + heat + 0.1 * self.noise.gauss(self.device_id, "temp", bucket)

    def fault(self, t: float, error: str = "HighTemperature") -> None:
        if error not in OCPP_ERRORS or error == "NoError":
            raise ValueError(f"{error!r} is not an OCPP 1.6 ChargePointErrorCode fault")
        self.error = error
        self._fault_since = t

    def clear(self, t: float) -> None:
        if self._fault_since is not None:
            self._lost_until = t
        self.error = "NoError"
        self._fault_since = None

    # MQTT.
    def period(self, t: float) -> float:
        return 15.0 if self.status(t) == "Charging" else 60.0

    def report(self, t: float) -> list[Outgoing]:
        status = self.status(t)
        self._last_status = status
        body: dict[str, object] = {
            "chargePointId": self.key, "connectorId": 1, "status": status,
            "errorCode": self.error,
            "vendorErrorCode": VENDOR_ERRORS.get(self.error, "E-0999")
            if self.error != "NoError" else "",
            "power": round(self.power(t), 1), "energy": self.energy(t),
            "temperature": round(self.temperature(t), 1),
        }
        s = self.session_at(t) if self._fault_since is None else None
        if s is not None and t >= s.charge_start:
            body["transactionId"] = s.transaction_id
        stamp = datetime.fromtimestamp(t, UTC)
        body["timestamp"] = (stamp.strftime("%Y-%m-%dT%H:%M:%S.")
                             + f"{stamp.microsecond // 1000:03d}Z")
        return [outgoing(f"evcp/{self.key}/status", body)]

    def changes(self, t: float) -> list[Outgoing]:
        if self._last_status is None or self.status(t) == self._last_status:
            return []
        return self.report(t)

    def next_check(self, t: float) -> float | None:
        """The next planned status change."""
        if self._fault_since is not None:
            return None
        s = self.session_at(t)
        if s is not None:
            edges = (s.charge_start, s.charge_end, s.unplug, s.unplug + FINISHING_S)
            return next((e for e in edges if e > t), None)
        day = self.calendar.day(t)
        upcoming = [x.plug_in for d in (day, day + 1) for x in self.sessions(d)
                    if x.plug_in > t]
        return min(upcoming, default=None)
