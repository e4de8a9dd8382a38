"""Synthetic campus data for the report and dashboard tests, written the way ingest
stores it: the measurement is the family, the tags are the site file's static tags plus
site, device and gateway, the fields are the reading's values plus `quality`.

Meters are described by their power over time; the counter is the exact integral of
that power, sampled every minute, so a test can work out the true energy on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from facility import lineprotocol as lp
from facility.influx import InfluxClient
from facility.messages import Scalar
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


def _reading_values(site: SiteConfig, device_id: str, kind: str, family: str, step: int,
                    t: int) -> dict[str, Scalar]:
    """Plausible values per device kind; `step` numbers the sample."""
    wave = math.sin(step / 12)
    if family == "energy":
        kw = 40 + 20 * wave
        return {"power_total": kw, "energy_import": 5_000 + step * 10.0 + kw / 10,
                "power_factor": 0.95, "voltage_a": 229.0}
    if family == "fire":
        if kind == "fire_panel":
            return {"state": "alarm" if step % 40 == 5 else "normal",
                    "alarm_count": 1 if step % 40 == 5 else 0, "fault_count": 0,
                    "main_power": True, "backup_power": True}
        if kind == "electrical_fire_monitor":
            return {"residual_current": 80 + 20 * wave, "cable_temperature_1": 35 + 3 * wave,
                    "residual_current_alarm": False, "temperature_alarm": False}
        values: dict[str, Scalar] = {"temperature": 26 + wave,
                                     "state": "pre_alarm" if step % 30 == 7 else "normal"}
        if kind == "smoke_detector":
            values["smoke"] = 0.02 + 0.01 * abs(wave)
        return values
    if family == "ev_charger":
        if device_id == "evc-cp-02":  # a charger that stays faulted, as the report says
            return {"status": "faulted", "error_code": "GroundFailure", "power": 0.0,
                    "session_energy": 0.0, "connector_temperature": 30.0, "connector": 1}
        charging = (step // 6) % 2 == 0
        return {"status": "charging" if charging else "available", "error_code": "NoError",
                "power": 6.8 if charging else 0.0, "session_energy": (step % 6) * 1.1,
                "connector_temperature": 40 + 5 * wave, "connector": 1}
    if family == "drainage":
        radio: dict[str, Scalar] = {"battery": 3.6, "rssi": -97.0, "snr": 7.5}
        if kind == "water_level":
            return {"water_level": 12 + 8 * abs(wave), **radio}
        if kind == "rain_gauge":
            return {"rain_total": 300 + step * 0.4, "rain_rate": 2.4 * abs(wave), **radio}
        return {"pump_running": step % 4 < 2, "pump_current": 6.0 if step % 4 < 2 else 0.0,
                "pump_fault": False, "pump_run_hours": 1200 + step / 6, **radio}
    if family == "gas":
        return {"h2s": 0.8 + 0.3 * abs(wave), "nh3": 2.0 + abs(wave), "battery": 3.5}
    return {}


def campus_lines(site: SiteConfig, start: int, end: int, every: int) -> list[str]:
    """A reading per device (bollard units included) every `every` ns, as ingest
    stores them, plus statuses, events and a dead letter."""
    from facility import messages as m
    from facility import topics
    from ingest.convert import to_line

    out: list[str] = []
    sid = site.site.id
    for step, t in enumerate(range(start, end, every)):
        for device in site.devices:
            tags = site.base_tags(device)
            if device.units is not None:
                up = (step // 3) % 2 == 0
                plc: dict[str, Scalar] = {
                    "mode": "auto", "emergency_rise": "idle", "power": "mains",
                    "ups_charge": 100.0, "heartbeat": step % 65536,
                    "bollards_up": 41 if up else 0, "bollards_down": 0 if up else 41,
                    "bollards_fault": 1, "cabinet_temperature": 31.5,
                    "supply_pressure": 160.0}
                readings = [m.Reading(site=sid, family=device.family, device=device.id, ts=t,
                                      values=plc, tags=tags, gateway=device.gateway)]
                for n, unit in enumerate(device.unit_ids(), start=1):
                    state = "fault" if n == 42 else ("up" if up else "down")
                    values: dict[str, Scalar] = {
                        "state": state, "position": 100.0 if state == "up" else 0.0,
                        "hydraulic_pressure": 150.0 + n % 5, "motor_current": 0.2,
                        "oil_temperature": 30.0 + n % 3, "cycle_count": 1000 + step // 3,
                        "fault_code": "obstruction" if n == 42 else "none", "target": "none"}
                    readings.append(m.Reading(site=sid, family=device.units.family, device=unit,
                                              ts=t, values=values, gateway=device.gateway,
                                              tags={**tags, "controller": device.id}))
            else:
                values = _reading_values(site, device.id, device.kind, device.family, step, t)
                readings = [m.Reading(site=sid, family=device.family, device=device.id, ts=t,
                                      values=values, tags=tags, gateway=device.gateway)]
            out += [to_line(topics.telemetry(sid, r.family, r.device), m.encode(r)).decode()
                    for r in readings]
    for index, device in enumerate(site.devices):
        state = m.Availability.OFFLINE if index % 17 == 3 else m.Availability.ONLINE
        status = m.DeviceStatus(site=sid, family=device.family, device=device.id,
                                ts=end - 60 * 10**9, state=state, gateway=device.gateway,
                                reason="no answer" if index % 17 == 3 else "")
        out.append(to_line(topics.status(sid, device.family, device.id),
                           m.encode(status)).decode())
    events = [m.Event(site=sid, family=m.Family.FIRE, device="fd-ebw-01", ts=end - 600 * 10**9,
                      id="FP-EB-1042", name="fire_alarm", text="西门车棚烟感1 火警"),
              m.Event(site=sid, family=m.Family.EV_CHARGER, device="evc-cp-02",
                      ts=end - 300 * 10**9, id="evc-cp-02-77", name="status_change",
                      attrs={"status": "faulted"}, text="")]
    out += [to_line(topics.event(sid, e.family, e.device), m.encode(e)).decode() for e in events]
    letter = m.DeadLetter.of("gw-iot", end - 120 * 10**9, "gst/FP-EB/1/9/data",
                             "unknown detector FP-EB/1/9", b'{"temp": 25}')
    out.append(to_line(topics.deadletter(sid, "gw-iot"), m.encode(letter)).decode())
    return out
