"""Fire detection: GST detectors and panels, Acrel ARCM300 electrical-fire monitors.

Payloads follow docs/devices/vendor-payloads.md (`gst-fire`, `acrel-efm`).

Normal days: smoke detectors read a small seeded background (a little more in the canteen
at meal times), temperatures follow the place (outdoors for sheds and the car park, warm
plant rooms, the kitchen while cooking). Electrical-fire monitors read leakage current
and cable temperatures that follow the load of their room; the e-bike sheds show the
evening charging bump.

A fire at a place (scenario) makes smoke and heat rise at its detectors, each after its
own seeded delay: smoke PREALARM at 0.10 dB/m and ALARM at 0.15 dB/m, heat PREALARM at
50 °C and ALARM at 57 °C. Alarms latch until the value falls back (smoke below 0.06 dB/m,
heat below 45 °C) after the fire is out. A detector that jumps past a level still
reports every step (PRE_ALARM, then FIRE_ALARM). The panel is in ALARM while any of its
detectors is; its events count on one counter (evtNo) with its detectors'. The monitors
at a burning place see leakage and cable temperature climb past their alarm limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from facility.site import Device, Place, PlaceKind
from simulators.mqtt_publisher import Outgoing, outgoing
from simulators.noise import Noise
from simulators.profiles import BuildingClass, LoadKind, profile_fraction
from simulators.weather import Calendar, Weather

SMOKE_PRE, SMOKE_ALARM, SMOKE_CLEAR = 0.10, 0.15, 0.06
HEAT_PRE, HEAT_ALARM, HEAT_CLEAR = 50.0, 57.0, 45.0
LEAKAGE_ALARM_MA, CABLE_ALARM_C = 300, 70.0

EVENT_TEXT = {
    "FIRE_ALARM": "火警", "PRE_ALARM": "预警", "FAULT": "故障", "FAULT_RESTORE": "故障恢复",
    "RESTORE": "恢复", "DISABLE": "屏蔽", "ENABLE": "取消屏蔽",
}
LEVELS = ("NORMAL", "PREALARM", "ALARM")


@dataclass
class Fire:
    start: float
    out: float | None = None


@dataclass
class FireScenes:
    """Fires by place: when each started and when it was put out."""

    fires: dict[str, Fire] = field(default_factory=dict)

    def start(self, place: str, t: float) -> None:
        self.fires[place] = Fire(t)

    def put_out(self, place: str, t: float) -> None:
        fire = self.fires.get(place)
        if fire is not None and fire.out is None:
            fire.out = t

    def rise(self, place: str, t: float, delay: float, tau: float, tau_out: float) -> float:
        """0..1: how far the fire has driven a quantity at this place."""
        fire = self.fires.get(place)
        if fire is None or t < fire.start + delay:
            return 0.0

        def grown(until: float) -> float:
            return 1.0 - math.exp(-max(0.0, until - fire.start - delay) / tau)

        if fire.out is None or t < fire.out:
            return grown(t)
        return grown(fire.out) * math.exp(-(t - fire.out) / tau_out)

    def active(self, place: str, t: float) -> bool:
        """True while values at the place are still moving noticeably."""
        fire = self.fires.get(place)
        if fire is None or t < fire.start:
            return False
        return fire.out is None or t < fire.out + 900


def _ambient(place: Place, calendar: Calendar, weather: Weather, t: float) -> float:
    """Air temperature where a device hangs."""
    outdoor = weather.temperature(t)
    if place.kind in (PlaceKind.EBIKE_SHED, PlaceKind.CAR_PARK, PlaceKind.OUTDOOR,
                      PlaceKind.GATE):
        hour = calendar.hour(t)
        sun = 2.0 * max(0.0, math.sin(math.pi * (hour - 8) / 10)) if 8 < hour < 18 else 0.0
        return outdoor + sun
    if place.kind is PlaceKind.PLANT_ROOM:
        return 29.0 + 0.1 * (outdoor - 25)
    if "parking" in place.id:
        return outdoor - 1.0
    return 26.0 + 0.1 * (outdoor - 25)


class GstPanel:
    """A fire alarm control panel: status every 60 s and on change, panel events."""

    def __init__(self, device: Device, noise: Noise, calendar: Calendar) -> None:
        self.device_id = device.id
        self.device = device
        self.key = device.mqtt.key if device.mqtt else device.id
        self.calendar = calendar
        self.detectors: list[GstDetector] = []
        self._evt_no = noise.integer(10_000, 30_000, device.id, "evtNo")
        self._last: tuple[str, int, int] | None = None

    def next_event_number(self) -> int:
        self._evt_no += 1
        return self._evt_no

    def period(self, t: float) -> float:
        return 60.0

    def _status(self, t: float) -> tuple[str, int, int]:
        states = [d.state(t) for d in self.detectors]
        alarms = states.count("ALARM")
        faults = states.count("FAULT")
        state = "ALARM" if alarms else ("FAULT" if faults else "NORMAL")
        return state, alarms, faults

    def report(self, t: float) -> list[Outgoing]:
        state, alarms, faults = self._status(t)
        return [outgoing(f"gst/{self.key}/status", {
            "panel": self.key, "alarmCount": alarms, "faultCount": faults,
            "mainPower": 1, "backupPower": 1, "state": state,
            "time": self.calendar.local(t).strftime("%Y-%m-%d %H:%M:%S"),
        })]

    def changes(self, t: float) -> list[Outgoing]:
        status = self._status(t)
        last, self._last = self._last, status
        if last is None or last == status:
            return []
        messages = []
        if status[0] == "ALARM" and last[0] != "ALARM":
            messages.append(self._event("FIRE_ALARM", t))
        elif status[0] == "NORMAL" and last[0] == "ALARM":
            messages.append(self._event("RESTORE", t))
        return messages + self.report(t)

    def _event(self, evt: str, t: float) -> Outgoing:
        return outgoing(f"gst/{self.key}/event", {
            "panel": self.key, "evt": evt, "evtNo": self.next_event_number(),
            "desc": f"{self.device.name} {EVENT_TEXT[evt]}",
            "time": self.calendar.local(t).strftime("%Y-%m-%d %H:%M:%S"),
        })

    def next_check(self, t: float) -> float | None:
        checks = [c for d in self.detectors if (c := d.next_check(t)) is not None]
        return min(checks, default=None)


class GstDetector:
    """A smoke or heat detector on a panel loop: data every 30 s, events on change."""

    def __init__(self, device: Device, place: Place, panel: GstPanel, fires: FireScenes,
                 noise: Noise, calendar: Calendar, weather: Weather) -> None:
        if device.mqtt is None:
            raise ValueError(f"device {device.id!r}: a GST detector needs an mqtt key")
        self.mqtt_key = device.mqtt.key
        self.device_id = device.id
        self.device = device
        self.place = place
        self.panel = panel
        self.fires = fires
        self.noise = noise
        self.calendar = calendar
        self.weather = weather
        panel_key, loop, addr = device.mqtt.key.split("/")
        self.panel_key, self.loop, self.addr = panel_key, int(loop), int(addr)
        self.smoke_type = device.kind != "heat_detector"
        self.delay = noise.between(5.0, 40.0, device.id, "fire-delay")
        self._background = noise.between(0.005, 0.025, device.id, "smoke")
        self._level = 0  # index into LEVELS
        self._outbox: list[Outgoing] = []

    # Physics.
    def smoke(self, t: float) -> float:
        bucket = math.floor(t / 30)
        smoke = self._background + 0.002 * self.noise.gauss(self.device_id, "smoke", bucket)
        if "canteen" in self.place.id:  # cooking fumes drift to the dining-room heads
            smoke += 0.02 * profile_fraction(LoadKind.CANTEEN, BuildingClass.CANTEEN,
                                             self.calendar, t)
        smoke += 0.45 * self.fires.rise(self.place.id, t, self.delay, 90.0, 45.0)
        return max(0.0, min(0.5, smoke))

    def temperature(self, t: float) -> float:
        bucket = math.floor(t / 30)
        temp = _ambient(self.place, self.calendar, self.weather, t)
        if not self.smoke_type and "canteen" in self.place.id:  # the kitchen head
            temp += 8.0 * profile_fraction(LoadKind.CANTEEN, BuildingClass.CANTEEN,
                                           self.calendar, t)
        temp += 0.1 * self.noise.gauss(self.device_id, "temp", bucket)
        gain = 55.0 if not self.smoke_type else 30.0
        return temp + gain * self.fires.rise(self.place.id, t, self.delay, 200.0, 150.0)

    def _measured_level(self, t: float) -> int:
        if self.smoke_type:
            value, pre, alarm, clear = self.smoke(t), SMOKE_PRE, SMOKE_ALARM, SMOKE_CLEAR
        else:
            value, pre, alarm, clear = self.temperature(t), HEAT_PRE, HEAT_ALARM, HEAT_CLEAR
        if value >= alarm:
            return 2
        if value >= pre:
            return max(1, self._level)  # an alarm latches until the value clears
        if value >= clear and self._level:
            return self._level
        return 0

    def state(self, t: float) -> str:
        """Evaluate at t (queueing events for what changed) and return the state."""
        level = self._measured_level(t)
        while level > self._level:
            self._level += 1
            self._outbox.append(self._event("PRE_ALARM" if self._level == 1 else "FIRE_ALARM",
                                            t))
        if level < self._level:
            self._level = level
            if level == 0:
                self._outbox.append(self._event("RESTORE", t))
        return LEVELS[self._level]

    # MQTT.
    def _event(self, evt: str, t: float) -> Outgoing:
        return outgoing(f"gst/{self.mqtt_key}/event", {
            "panel": self.panel_key, "loop": self.loop, "addr": self.addr, "evt": evt,
            "evtNo": self.panel.next_event_number(),
            "desc": f"{self.device.name} {EVENT_TEXT[evt]}",
            "time": self.calendar.local(t).strftime("%Y-%m-%d %H:%M:%S"),
        })

    def period(self, t: float) -> float:
        return 30.0

    def report(self, t: float) -> list[Outgoing]:
        state = self.state(t)
        body: dict[str, object] = {
            "panel": self.panel_key, "loop": self.loop, "addr": self.addr,
            "devType": "SMOKE" if self.smoke_type else "HEAT",
        }
        if self.smoke_type:
            body["smoke"] = round(self.smoke(t), 3)
        body.update(temp=round(self.temperature(t), 1), state=state,
                    time=self.calendar.local(t).strftime("%Y-%m-%d %H:%M:%S"))
        return [outgoing(f"gst/{self.mqtt_key}/data", body)]

    def changes(self, t: float) -> list[Outgoing]:
        self.state(t)
        if not self._outbox:
            return []
        events, self._outbox = self._outbox, []
        return events + self.report(t)

    def next_check(self, t: float) -> float | None:
        return t + 1.0 if self.fires.active(self.place.id, t) else None


class AcrelMonitor:
    """ARCM300: leakage current and two cable temperatures, every 60 s and on alarm."""

    def __init__(self, device: Device, place: Place, fires: FireScenes, noise: Noise,
                 calendar: Calendar, weather: Weather) -> None:
        self.device_id = device.id
        self.sn = device.mqtt.key if device.mqtt else device.id
        self.place = place
        self.fires = fires
        self.noise = noise
        self.calendar = calendar
        self.weather = weather
        self.charging = place.kind is PlaceKind.EBIKE_SHED
        self._leak_base = noise.between(12.0, 35.0, device.id, "leak")
        self._t2_offset = noise.between(0.5, 2.5, device.id, "t2")
        self._last_alarm: int | None = None

    def _load(self, t: float) -> float:
        if self.charging:
            return profile_fraction(LoadKind.EBIKE_CHARGING, BuildingClass.PARKING,
                                    self.calendar, t)
        return profile_fraction(LoadKind.PLUG, BuildingClass.OFFICE, self.calendar, t)

    def values(self, t: float) -> tuple[int, float, float]:
        bucket = math.floor(t / 60)
        load = self._load(t)
        fire = self.fires.rise(self.place.id, t, 10.0, 120.0, 300.0)
        leak = (self._leak_base + 30.0 * load + 2.0 * self.noise.gauss(self.device_id, "il",
                                                                        bucket)
                + 340.0 * fire)
        room = _ambient(self.place, self.calendar, self.weather, t)
        t1 = (room + 4.0 + 14.0 * load + 0.3 * self.noise.gauss(self.device_id, "t1", bucket)
              + 65.0 * fire)
        t2 = t1 - self._t2_offset + 0.2 * self.noise.gauss(self.device_id, "t2", bucket)
        return max(0, round(leak)), round(t1, 1), round(t2, 1)

    def alarm(self, t: float) -> int:
        leak, t1, t2 = self.values(t)
        return int(leak >= LEAKAGE_ALARM_MA) | (int(max(t1, t2) >= CABLE_ALARM_C) << 1)

    def period(self, t: float) -> float:
        return 60.0

    def report(self, t: float) -> list[Outgoing]:
        leak, t1, t2 = self.values(t)
        self._last_alarm = self.alarm(t)
        return [outgoing(f"acrel/{self.sn}/up", {
            "sn": self.sn, "ts": math.floor(t), "alarm": self._last_alarm,
            "data": [{"ch": 1, "type": "IL", "val": leak, "unit": "mA"},
                     {"ch": 2, "type": "T", "val": t1, "unit": "℃"},
                     {"ch": 3, "type": "T", "val": t2, "unit": "℃"}],
        })]

    def changes(self, t: float) -> list[Outgoing]:
        if self._last_alarm is None or self.alarm(t) == self._last_alarm:
            return []
        return self.report(t)

    def next_check(self, t: float) -> float | None:
        return t + 1.0 if self.fires.active(self.place.id, t) else None
