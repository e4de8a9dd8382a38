"""The simulated campus's past: the last days of every family, from the same models as the
live simulators, so that charts and reports have real days and months from the start.

A `History` builds a second, unstarted `Campus` (no servers, no MQTT client) with the same
site and seed, its clock at the start of the history, and walks its models forward in
simulated time on a coarse grid: what a live run would have sent, thinned to what charts
and reports need.

- Energy meters (Modbus): a reading every 5 minutes (`energy_import`, `power_total`,
  `power_factor`), the power the model's own (`Meter.minute_kw` of each 15-minute
  interval's first minute, held for the interval). The counter is
  anchored at the end: its reading there is the live meter's first reading, and it is that
  reading minus the energy used since, so the live demo continues the history with no
  drop (a drop would read as a meter reset or replacement). Readings are float32 values,
  as the meter's registers hold them.
- The bollard PLC (Modbus): the group every 15 minutes, every bollard every hour, and the state
  registers of the group
  and the bollards that changed at each of the PLC's own events (vehicles at the lane,
  arrivals); the history's PLC starts from the seeded cycle counts the live one would,
  and the live PLC is then set to go on from the history's last counts.
- Vendor MQTT devices (fire, electrical fire, EV chargers, drainage, gas): the model's own
  report every 15 minutes (an EV charger in a session; idle, every hour) or hour (fire,
  drainage, gas), as the vendor payload; the composition
  root decodes them through the gateway's mappings (app/history.py), so history and live
  data are the same fields with the same tags.
- One `device_status` online at the start for every device.

Everything is line protocol (facility.lineprotocol) or vendor payloads; nothing is sent
anywhere from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from facility import lineprotocol as lp
from facility.messages import Family
from facility.scalar import Scalar
from facility.settings import MqttSettings
from facility.site import SiteConfig
from simulators.bollards import BollardPlc, FaultCode, State
from simulators.campus import Campus
from simulators.clock import SimClock
from simulators.ev import Charger
from simulators.meters import Meter
from simulators.mqtt_publisher import MqttDevice, Outgoing

ENERGY_STEP_S = 300
POWER_STEP_S = 900
BOLLARD_STEP_S = 900
GRID_S = 300  # the walk's step; every family's step is a multiple of it
UNIT_STEP_S = 3600
MQTT_STEP_S: dict[str, int] = {"gst-fire": 3600, "acrel-efm": 3600, "evcp": 900,
                                "chirpstack": 3600}
IDLE_STEP_S = 3600
DAY_S = 86_400


def f32(value: float) -> float:
    """The shortest decimal that reads back as the float32 nearest `value` (a register's)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def history_span(end: float, days: float,
                 seconds: int = DAY_S) -> tuple[float, list[tuple[float, float]]]:
    """The history's start (on the grid) and its chunks of `seconds` up to `end`."""
    start = end - days * DAY_S
    start -= start % 900  # on a 15-minute interval: a day's rollups are then its own
    chunks = []
    t = start
    while t < end:
        chunks.append((t, min(end, t + seconds)))
        t += seconds
    return start, chunks


def status_lines(site: SiteConfig, start: float) -> list[bytes]:
    """Every gateway, device and controller unit online at the start of the history."""
    ts = round(start * 1e9)
    fields: dict[str, Scalar] = {"state": "online", "online": True, "reason": ""}
    sources = [(g.id, Family.GATEWAY.value, g.id) for g in site.gateways]
    sources += [(device_id, family.value, device.gateway)
                for device_id, family, device in site.all_device_ids()]
    return [lp.line("device_status", {"site": site.site.id, "family": family,
                                      "device": device_id, "gateway": gateway},
                    fields, ts).encode() for device_id, family, gateway in sources]


@dataclass(frozen=True, slots=True)
class VendorMessage:
    t: float  # simulated time, epoch seconds
    device_id: str
    vendor: str
    message: Outgoing


class History:
    """The history of the `days` before `end` (epoch seconds), in chunks of time.

    `end_readings`: each meter's energy reading at `end` (the live meter's first reading);
    without them the history's own meters start where the live ones would.
    `families`: only these (a worker's share).
    """

    def __init__(self, site: SiteConfig, mqtt: MqttSettings, *, seed: int, end: float,
                 days: float, end_readings: dict[str, float] | None = None,
                 families: set[Family] | None = None) -> None:
        self.site = site
        self.end = float(end)
        self.start, _ = history_span(end, days)
        self.clock = SimClock(start=self.start, scale=0)
        self.campus = Campus(site, mqtt, clock=self.clock, seed=seed, families=families)
        self.site_id = site.site.id
        self._end_readings = end_readings or {}
        self._meters = [m for m in self.campus.models.values() if isinstance(m, Meter)]
        self._plcs = [m for m in self.campus.models.values() if isinstance(m, BollardPlc)]
        vendors = {d.id: d.mqtt.vendor for d in site.devices if d.mqtt is not None}
        self._mqtt: list[tuple[MqttDevice, str]] = [
            (m, vendors[m.device_id]) for m in self.campus.models.values()
            if m.device_id in vendors]
        self._energy: dict[str, tuple[dict[str, str], str, list[float], list[float],
                                      list[float]]] = {}
        # Told of every energy reading (tags, ts, kWh, kW): the caller's rollups.
        self.on_energy: Callable[[str, dict[str, str], int, float, float], None] | None = None
        self._bollard_rows: list[tuple[int, str, int, dict[str, Scalar]]] = []
        self._series: dict[tuple[str, int], str] = {}

    # The plan.
    def chunks(self, seconds: int = DAY_S) -> list[tuple[float, float]]:
        return history_span(self.end, (self.end - self.start) / DAY_S, seconds)[1]

    def grid(self, t0: float, t1: float) -> Iterator[float]:
        k = math.ceil((t0 - self.start) / GRID_S)
        while (t := self.start + k * GRID_S) < t1:
            yield t
            k += 1

    # Energy.
    def prepare_energy(self) -> None:
        """Each meter's power at every step and its counter, anchored at the end."""
        steps = list(self.grid(self.start, self.end))
        hours = ENERGY_STEP_S / 3600
        for meter in self._meters:
            device = self.site.device(meter.device_id)
            tags = {"site": self.site_id, "device": device.id, **self.site.base_tags(device),
                    "gateway": device.gateway}
            series = lp.series_key(Family.ENERGY.value, tags)
            # The model's power of each interval's first minute, held for its 15 minutes
            # (the live meter's changes every minute; the minutes cost most of the time).
            minutes = [math.floor((t - (t - self.start) % POWER_STEP_S) / 60) for t in steps]
            known: dict[int, tuple[float, float]] = {}
            for m in dict.fromkeys(minutes):
                known[m] = (meter.minute_kw(m), meter.minute_pf(m))
            power = [known[m][0] for m in minutes]
            pf = [known[m][1] for m in minutes]
            end_reading = self._end_readings.get(meter.device_id)
            if end_reading is None:
                end_reading = meter.energy_import(self.start) + math.fsum(power) * hours
            readings = []
            used_after = math.fsum(power) * hours
            for p in power:
                readings.append(end_reading - used_after)
                used_after -= p * hours
            self._energy[meter.device_id] = (tags, series, readings, power, pf)

    def energy_lines(self, t0: float, t1: float) -> list[bytes]:
        if not self._energy:
            self.prepare_energy()
        lines = []
        for t in self.grid(t0, t1):
            k = round((t - self.start) / GRID_S)
            if (t - self.start) % ENERGY_STEP_S:
                continue
            ts = round(t * 1e9)
            for device_id, (tags, series, readings, power, pf) in self._energy.items():
                kwh, kw = f32(readings[k]), round(power[k], 4)
                lines.append(
                    f'{series} quality="good",energy_import={kwh!r},'
                    f"power_total={kw!r},power_factor={round(pf[k], 3)!r} {ts}".encode())
                if self.on_energy is not None:
                    self.on_energy(device_id, tags, ts, kwh, kw)
        return lines

    # The bollard PLC.
    def _plc_sample(self, plc: BollardPlc, t: float, units: set[int] | None) -> None:
        """Everything the PLC's registers show (its snapshot), the group and `units`
        (None: all)."""
        self.clock.advance(max(0.0, t - self.clock.now()))
        snap = plc.snapshot()
        ts = round(t * 1e9)
        self._bollard_rows.append((ts, plc.device_id, 0, dict(snap["group"])))
        for n, values in snap["units"].items():
            if units is None or n in units:
                row = dict(values)
                row["fault_code"] = FaultCode(int(row["fault_code"])).name.lower()
                self._bollard_rows.append((ts, plc.device_id, n, row))

    def _plc_change(self, plc: BollardPlc, t: float, units: set[int]) -> None:
        """At one of the PLC's events: its state registers only (counts, mode, emergency
        rise; the moved bollards' state, position, cycles, fault, target), read from the
        model as the registers encode them; the analogue values (pressures, currents,
        temperatures) come with the 15-minute samples. A full snapshot at every event
        was most of the history's time."""
        ts = round(t * 1e9)
        states = [b.state for b in plc.bollards]
        self._bollard_rows.append((ts, plc.device_id, 0, {
            "mode": plc.mode.name.lower(), "emergency_rise": plc.emergency.name.lower(),
            "bollards_up": states.count(State.UP), "bollards_down": states.count(State.DOWN),
            "bollards_fault": states.count(State.FAULT)}))
        for b in plc.bollards:
            if b.n in units:
                self._bollard_rows.append((ts, plc.device_id, b.n, {
                    "state": b.state.name.lower(), "position": round(b.position_at(t)) / 10,
                    "cycle_count": b.cycles, "fault_code": b.fault.name.lower(),
                    "target": b.target.name.lower()}))

    def _plc_walk(self, t0: float, t1: float) -> None:
        for plc in self._plcs:
            for t in self.grid(t0, t1):
                while True:
                    when, apply = plc._next_event()  # the PLC's own event list, in time order
                    if apply is None or when > t:
                        break
                    before = [b.state for b in plc.bollards]
                    plc.update(when)
                    changed = {b.n for b, s in zip(plc.bollards, before, strict=True)
                               if b.state != s}
                    self._plc_change(plc, when, changed)
                if (t - self.start) % BOLLARD_STEP_S == 0:
                    hourly = (t - self.start) % UNIT_STEP_S == 0
                    self._plc_sample(plc, t, None if hourly else set())

    def bollard_lines(self) -> list[bytes]:
        """The PLC's readings collected since the last call."""
        lines = []
        for ts, plc_id, n, values in self._bollard_rows:
            fields: dict[str, Scalar] = {"quality": "good", **values}
            lines.append(f"{self._bollard_series(plc_id, n)} "
                         f"{lp.checked_fields(fields)} {ts}".encode())
        self._bollard_rows.clear()
        return lines

    def final_cycles(self) -> dict[tuple[str, int], int]:
        """Each bollard's (PLC id, n) cycle count at the end: the live PLC goes on from
        there (the history's PLC starts from the same seeded counts the live one would)."""
        return {(plc.device_id, b.n): b.cycles for plc in self._plcs for b in plc.bollards}

    def _bollard_series(self, plc_id: str, n: int) -> str:
        key = (plc_id, n)
        found = self._series.get(key)
        if found is None:
            device = self.site.device(plc_id)
            tags = {"site": self.site_id, **self.site.base_tags(device),
                    "gateway": device.gateway}
            if n and device.units is not None:
                tags |= {"device": device.unit_ids()[n - 1], "controller": plc_id}
                family = device.units.family.value
            else:
                tags["device"] = plc_id
                family = device.family.value
            found = self._series[key] = lp.series_key(family, tags)
        return found

    # Vendor MQTT devices.
    def vendor_messages(self, t0: float, t1: float) -> list[VendorMessage]:
        out = []
        for t in self.grid(t0, t1):
            offset = t - self.start
            for device, vendor in self._mqtt:
                if offset % MQTT_STEP_S[vendor] or (
                        # An idle charger every hour; one in a session every 15 minutes.
                        isinstance(device, Charger) and offset % IDLE_STEP_S
                        and device.status(t) == "Available"):
                    continue
                out += [VendorMessage(t, device.device_id, vendor, m) for m in device.report(t)]
        return out

    def walk(self, t0: float, t1: float) -> tuple[list[bytes], list[VendorMessage]]:
        """One chunk: the meters' and the PLC's lines and the vendor messages of [t0, t1)."""
        self._plc_walk(t0, t1)
        return self.energy_lines(t0, t1) + self.bollard_lines(), self.vendor_messages(t0, t1)
