"""A bigger campus for the rules benchmarks: the real site file plus generated devices of the
kinds it already has, 1,000 generated rules of the kinds the campus uses (per-device
thresholds with durations and hysteresis, rates, averages, deltas and maxima over groups
of devices, states held for a time), and canonical readings with the values those
devices report when all is well.

Everything is derived from a seed, so a run can be repeated. Nothing here is timed.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facility import messages as m
from facility import topics
from facility.catalog import Catalog, load_catalog
from facility.configfile import read_yaml
from facility.settings import load_settings
from facility.site import SiteConfig
from facility.topology import Topology

REPO = Path(__file__).resolve().parent.parent
SITE_FILE = REPO / "config" / "site.yaml"
RULES_DIR = REPO / "config" / "rules"
ENDPOINTS_FILE = REPO / "config" / "endpoints.yaml"
CONFIG_DIR = REPO / "config"


@functools.cache
def _shipped() -> Catalog:
    return load_catalog(load_settings(CONFIG_DIR / "facility.yaml"))


def catalog_of(site: SiteConfig) -> Catalog:
    """The shipped register maps, vendor mappings and endpoints with a bench's site."""
    return _shipped().with_site(site)

# Places where each extra kind can stand, and how many of each kind to add.
FIRE_PLACES = ["ebike-shed-north", "ebike-shed-east", "ebike-shed-west", "ebike-central",
               "car-park", "parking-building", "main-elec-b1", "main-elec-f6",
               "main-lift-room", "main-ac-plant", "east-elec-room", "west-elec-room",
               "main-building", "east-annex", "west-annex", "conference-centre", "canteen"]
PANEL_OF = {"ebike-shed-north": "fp-ebike", "ebike-shed-east": "fp-ebike",
            "ebike-shed-west": "fp-ebike", "ebike-central": "fp-ebike",
            "car-park": "fp-parking", "parking-building": "fp-parking", "canteen": "fp-canteen"}
BUILDINGS = ["main-building", "east-annex", "west-annex", "conference-centre",
             "parking-building", "canteen"]
LOADS = {"total": 120, "lighting": 10, "hvac": 40, "lifts": 8, "canteen": 6,
         "ev_charging": 60, "ebike_charging": 8}  # the energy rule's baselines, kW
UNITS = {"smoke": "dB/m", "temperature": "°C", "cable_temperature_1": "°C",
         "cable_temperature_2": "°C", "residual_current": "mA", "connector_temperature": "°C",
         "water_level": "cm", "h2s": "ppm", "nh3": "ppm", "battery": "V", "power_total": "kW",
         "voltage_a": "V", "voltage_b": "V", "voltage_c": "V", "voltage": "V",
         "current_a": "A", "current_b": "A", "current_c": "A", "current": "A",
         "energy_import": "kWh", "hydraulic_pressure": "bar", "supply_pressure": "bar"}
EXTRA = {"smoke_detector": 700, "heat_detector": 150, "electrical_fire_monitor": 250,
         "meter": 450, "ac_charger": 250, "water_level": 60, "gas_sensor": 60,
         "sump_pump": 40, "rain_gauge": 40}


def scaled_site(extra: dict[str, int] | None = None, seed: int = 1) -> dict[str, Any]:
    """The campus site file's data with generated devices added (about 2,000 in all)."""
    data: dict[str, Any] = read_yaml(SITE_FILE)
    rng = random.Random(seed)
    devices: list[dict[str, Any]] = data["devices"]
    for kind, count in (extra or EXTRA).items():
        for n in range(1, count + 1):
            devices.append(_device(kind, n, rng))
    return data


def _device(kind: str, n: int, rng: random.Random) -> dict[str, Any]:
    if kind in ("smoke_detector", "heat_detector"):
        place = FIRE_PLACES[n % len(FIRE_PLACES)]
        tags = {"panel": PANEL_OF[place]} if place in PANEL_OF else {}
        return {"id": f"x-{kind[:5]}-{n:04d}", "family": "fire", "kind": kind,
                "name": f"扩展{'烟感' if kind == 'smoke_detector' else '温感'}{n}",
                "gateway": "gw-iot", "place": place, "tags": tags,
                "mqtt": {"vendor": "gst-fire", "key": f"X/{kind}/{n}"}}
    if kind == "electrical_fire_monitor":
        return {"id": f"x-efm-{n:04d}", "family": "fire", "kind": kind,
                "name": f"扩展电气火灾监控{n}", "gateway": "gw-iot",
                "place": FIRE_PLACES[n % len(FIRE_PLACES)],
                "mqtt": {"vendor": "acrel-efm", "key": f"XEFM{n:05d}"}}
    if kind == "meter":
        load = list(LOADS)[n % len(LOADS)]
        return {"id": f"x-em-{n:04d}", "family": "energy", "kind": "meter",
                "name": f"扩展电表{n}", "gateway": "gw-energy",
                "place": BUILDINGS[n % len(BUILDINGS)], "tags": {"load": load},
                "modbus": {"host": f"10.20.{n // 200}.{n % 200 + 1}", "port": 502, "unit": 1,
                           "model": rng.choice(["chint-dtsu666", "eastron-sdm630"]),
                           "period": 10}}
    if kind == "ac_charger":
        return {"id": f"x-evc-{n:04d}", "family": "ev_charger", "kind": "ac_charger",
                "name": f"扩展充电桩{n}", "gateway": "gw-iot",
                "place": rng.choice(["parking-building", "car-park"]),
                "tags": {"rated_kw": "7"}, "mqtt": {"vendor": "evcp", "key": f"XEVC{n:05d}"}}
    family = "gas" if kind == "gas_sensor" else "drainage"
    place = rng.choice(["west-gate-drain", "south-gate-drain", "ne-rain-outlet",
                        "west-septic-tanks"])
    return {"id": f"x-{kind[:5]}-{n:04d}", "family": family, "kind": kind,
            "name": f"扩展传感器{n}", "gateway": "gw-iot", "place": place,
            "mqtt": {"vendor": "chirpstack", "key": f"a8{n:014x}"[:16] + kind[:3]}}


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


# --- 1,000 generated rules ----------------------------------------------------------------

def generated_rules(topology: Topology, count: int = 1000, seed: int = 1) -> dict[str, Any]:
    """A rule file's data: `count` rules over the topology's devices, none of which the
    normal readings below raise (thresholds sit well above normal values)."""
    rng = random.Random(seed)
    by_kind: dict[str, list[str]] = {}
    for source in topology.sources.values():
        kind = source.kind
        if kind == "meter" and "current_a" not in source.value_names:
            kind = "single_phase_meter"
        by_kind.setdefault(kind, []).append(source.id)
    makers = [_cable_temperature, _residual_current, _voltage, _current_imbalance,
              _power_ramp, _charger_heat, _charger_faulted, _rate_of_rise, _water_peak,
              _gas_delta]
    rules = []
    for n in range(count):
        rules.append(makers[n % len(makers)](n, rng, by_kind))
    return {"version": 1, "rules": rules}


def _pick(rng: random.Random, ids: list[str], low: int, high: int) -> list[str]:
    return rng.sample(ids, min(len(ids), rng.randint(low, high)))


def _cable_temperature(n: int, rng: random.Random, kinds: dict[str, list[str]]) -> dict[str, Any]:
    limit = rng.randint(60, 75)
    return {"id": f"gen-{n:04d}", "name": f"线缆温度{n}", "type": "threshold",
            "match": {"device": _pick(rng, kinds["electrical_fire_monitor"], 1, 3)},
            "levels": [
                {"severity": "major", "raise": f"cable_temperature_1 >= {limit}",
                 "clear": f"cable_temperature_1 < {limit - 5}"},
                {"severity": "critical", "raise": f"cable_temperature_1 >= {limit + 15}",
                 "clear": f"cable_temperature_1 < {limit + 10}"}],
            "for": "20s", "clear_for": "60s", "text": "{device_name}线缆温度{value}°C"}


def _residual_current(n: int, rng: random.Random, kinds: dict[str, list[str]]) -> dict[str, Any]:
    limit = rng.choice([200, 250, 300])
    return {"id": f"gen-{n:04d}", "name": f"剩余电流{n}", "type": "threshold",
            "match": {"device": _pick(rng, kinds["electrical_fire_monitor"], 1, 4)},
            "levels": [{"severity": "major", "raise": f"residual_current >= {limit}",
                        "clear": f"residual_current < {limit - 50}"}],
            "for": "10s", "text": "{device_name}剩余电流{value}mA"}


def _voltage(n: int, rng: random.Random, kinds: dict[str, list[str]]) -> dict[str, Any]:
    phase = rng.choice("abc")
    name = f"voltage_{phase}"
    return {"id": f"gen-{n:04d}", "name": f"电压越限{n}", "type": "threshold",
            "match": {"device": _pick(rng, kinds["meter"], 1, 6)},
            "levels": [
                {"severity": "warning", "raise": f"{name} < 198 or {name} > 242",
                 "clear": f"{name} >= 202 and {name} <= 238"},
                {"severity": "major", "raise": f"{name} < 187 or {name} > 253",
                 "clear": f"{name} >= 192 and {name} <= 248"}],
            "for": "1m", "clear_for": "2m", "text": "{device_name}电压{value}V"}


def _current_imbalance(n: int, rng: random.Random, kinds: dict[str, list[str]]) -> dict[str, Any]:
    spread = rng.choice([15, 20, 30])
    expr = "max(current_a, current_b, current_c) - min(current_a, current_b, current_c)"
    return {"id": f"gen-{n:04d}", "name": f"三相不平衡{n}", "type": "threshold",
            "match": {"device": _pick(rng, kinds["meter"], 1, 3)},
            "levels": [{"severity": "minor", "raise": f"{expr} >= {spread}",
                        "clear": f"{expr} < {spread * 0.7:.1f}"}],
            "for": "5m", "text": "{device_name}三相电流不平衡"}


def _power_ramp(n: int, rng: random.Random, kinds: dict[str, list[str]]) -> dict[str, Any]:
    return {"id": f"gen-{n:04d}", "name": f"功率突增{n}", "type": "threshold",
            "match": {"device": _pick(rng, kinds["meter"], 3, 12)},
            "levels": [{"severity": "warning",
                        "raise": f"rate('power_total', 300) >= {rng.choice([20, 30, 50])}",
                        "clear": "rate('power_total', 300) < 5"}],
            "text": "{device_name}功率快速上升"}


def _charger_heat(n: int, rng: random.Random, kinds: dict[str, list[str]]) -> dict[str, Any]:
    limit = rng.choice([55, 60, 65])
    return {"id": f"gen-{n:04d}", "name": f"充电桩平均温度{n}", "type": "threshold",
            "match": {"device": _pick(rng, kinds["ac_charger"], 2, 10)},
            "levels": [{"severity": "major",
                        "raise": f"avg('connector_temperature', 600) >= {limit}",
                        "clear": f"avg('connector_temperature', 600) < {limit - 8}"}],
            "for": "1m", "text": "{device_name}充电枪平均温度{value}°C"}


def _charger_faulted(n: int, rng: random.Random, kinds: dict[str, list[str]]) -> dict[str, Any]:
    return {"id": f"gen-{n:04d}", "name": f"充电桩故障{n}", "type": "threshold",
            "match": {"device": _pick(rng, kinds["ac_charger"], 1, 5)},
            "levels": [{"severity": "minor", "raise": "status == 'faulted'",
                        "clear": "status != 'faulted'"}],
            "for": rng.choice(["5m", "10m", "15m"]), "text": "{device_name}故障"}


def _rate_of_rise(n: int, rng: random.Random, kinds: dict[str, list[str]]) -> dict[str, Any]:
    detectors = kinds["smoke_detector"] + kinds["heat_detector"]
    return {"id": f"gen-{n:04d}", "name": f"温升速率{n}", "type": "threshold",
            "match": {"device": _pick(rng, detectors, 2, 8)},
            "levels": [{"severity": "major", "raise": "rate('temperature', 120) >= 8",
                        "clear": "rate('temperature', 120) < 2"}],
            "text": "{device_name}温度快速上升"}


def _water_peak(n: int, rng: random.Random, kinds: dict[str, list[str]]) -> dict[str, Any]:
    limit = rng.choice([20, 30, 35])
    return {"id": f"gen-{n:04d}", "name": f"水位峰值{n}", "type": "threshold",
            "match": {"device": _pick(rng, kinds["water_level"], 1, 4)},
            "levels": [{"severity": "warning", "raise": f"max_of('water_level', 600) >= {limit}",
                        "clear": f"max_of('water_level', 600) < {limit - 5}"}],
            "text": "{device_name}水位{value}厘米"}


def _gas_delta(n: int, rng: random.Random, kinds: dict[str, list[str]]) -> dict[str, Any]:
    return {"id": f"gen-{n:04d}", "name": f"气体浓度上升{n}", "type": "threshold",
            "match": {"device": _pick(rng, kinds["gas_sensor"], 1, 4)},
            "levels": [{"severity": "warning", "raise": "delta('h2s', 900) >= 5",
                        "clear": "delta('h2s', 900) < 1"}],
            "for": "30s", "text": "{device_name}硫化氢上升"}


# --- readings -------------------------------------------------------------------------------

@dataclass
class Device:
    id: str
    family: str
    kind: str
    period: float  # seconds between reports
    load: str = ""
    single_phase: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    counter: int = 0
    level: float = 0.0  # a load's share of its baseline: it wanders slowly, as loads do


class Readings:
    """Canonical readings with normal values for every source of a topology."""

    def __init__(self, site: SiteConfig, topology: Topology, seed: int = 1) -> None:
        self.site_id = site.site.id
        self.rng = random.Random(seed)
        self.devices = [Device(s.id, s.family, s.kind, s.report_period, s.tags.get("load", ""),
                               "voltage" in s.value_names, dict(s.tags))
                        for s in topology.sources.values() if s.family != "gateway"]
        self.by_id = {d.id: d for d in self.devices}
        self.topics = {d.id: topics.telemetry(self.site_id, d.family, d.id)
                       for d in self.devices}

    def values(self, device: Device) -> dict[str, m.Scalar]:
        """What a device reports when all is well: noise around normal levels."""
        r = self.rng
        device.counter += 1
        kind = device.kind
        if kind == "plc":
            return {"mode": "auto", "power": "mains", "supply_pressure": round(r.gauss(158, 1), 1),
                    "cabinet_temperature": round(r.gauss(31, 0.5), 1), "door_open": False,
                    "bollards_up": 42, "bollards_down": 0, "bollards_fault": 0,
                    "emergency_rise": False, "mains_present": True, "ups_charge": 100,
                    "vehicle_on_loop": False, "heartbeat": device.counter % 65536,
                    "bollard_count": 42}
        if kind == "bollard":
            return {"state": "up", "position": 100, "target": 100, "fault_code": "none",
                    "hydraulic_pressure": round(r.gauss(62, 0.5), 1), "motor_current": 0.0,
                    "oil_temperature": round(r.gauss(35, 0.3), 1), "cycle_count": 1200}
        if kind == "meter":
            device.level = min(0.35, max(0.2, (device.level or r.uniform(0.2, 0.35))
                                         + r.gauss(0, 0.002)))
        if kind == "meter" and device.single_phase:
            kw = LOADS.get(device.load, 8) * device.level
            return {"voltage": round(r.gauss(229, 1.5), 1),
                    "current": round(kw * 1000 / 230, 2), "power_total": round(kw, 3),
                    "reactive_power_total": round(kw * 0.2, 3),
                    "power_factor": round(r.uniform(0.93, 0.97), 3), "frequency": 50.0,
                    "energy_import": round(5_000 + device.counter * kw / 360, 2),
                    "energy_export": 0.0}
        if kind == "meter":
            kw = LOADS.get(device.load, 40) * device.level
            amps = kw * 1000 / 3 / 230
            return {"voltage_a": round(r.gauss(229, 1.5), 1),
                    "voltage_b": round(r.gauss(230, 1.5), 1),
                    "voltage_c": round(r.gauss(230, 1.5), 1),
                    "current_a": round(amps * r.uniform(0.97, 1.03), 2),
                    "current_b": round(amps * r.uniform(0.97, 1.03), 2),
                    "current_c": round(amps * r.uniform(0.97, 1.03), 2),
                    "power_a": round(kw / 3, 3), "power_b": round(kw / 3, 3),
                    "power_c": round(kw / 3, 3), "power_total": round(kw, 3),
                    "reactive_power_total": round(kw * 0.2, 3),
                    "power_factor": round(r.uniform(0.93, 0.97), 3), "frequency": 50.0,
                    "energy_import": round(10_000 + device.counter * kw / 360, 2),
                    "energy_export": 0.0}
        if kind in ("smoke_detector", "fire_panel"):
            values: dict[str, m.Scalar] = {"smoke": round(r.uniform(0.0, 0.03), 3),
                                           "temperature": round(r.gauss(27, 0.3), 1),
                                           "state": "normal"}
            if kind == "fire_panel":
                values.update(alarm_count=0, fault_count=0, main_power=True, backup_power=True)
            return values
        if kind == "heat_detector":
            return {"temperature": round(r.gauss(27, 0.3), 1), "state": "normal"}
        if kind == "electrical_fire_monitor":
            return {"residual_current": round(r.uniform(20, 80)),
                    "cable_temperature_1": round(r.gauss(38, 1), 1),
                    "cable_temperature_2": round(r.gauss(36, 1), 1),
                    "residual_current_alarm": False, "temperature_alarm": False}
        if kind in ("ac_charger", "dc_charger"):
            return {"status": "charging", "connector": 1,
                    "connector_temperature": round(r.gauss(36, 1), 1),
                    "error_code": "NoError", "power": round(r.uniform(3, 7), 2),
                    "session_energy": round(device.counter * 0.1, 2)}
        if kind == "water_level":
            return {"water_level": round(6.0 + r.uniform(-0.05, 0.05), 2), "battery": 3.6,
                    "rssi": -95, "snr": 7.5, "frame_counter": device.counter}
        if kind == "gas_sensor":
            return {"h2s": round(r.uniform(0.5, 1.5), 2), "nh3": round(r.uniform(2, 4), 2),
                    "battery": 3.6, "rssi": -97, "snr": 6.5, "frame_counter": device.counter}
        if kind == "sump_pump":
            return {"pump_running": False, "pump_current": 0.0, "pump_fault": False,
                    "pump_run_hours": 812.5, "battery": 3.6, "frame_counter": device.counter}
        if kind == "rain_gauge":
            return {"rain_total": 1520.4, "rain_rate": 0.0, "battery": 3.6,
                    "frame_counter": device.counter}
        return {"value": 1.0}

    def reading(self, device: Device, ts: int,
                values: dict[str, m.Scalar] | None = None) -> m.Reading:
        values = values if values is not None else self.values(device)
        return m.Reading(site=self.site_id, family=m.Family(device.family), device=device.id,
                         ts=ts, values=values, tags=device.tags, gateway="gw-bench",
                         units={k: UNITS[k] for k in values if k in UNITS}, seq=device.counter)

    def message(self, device: Device, ts: int,
                values: dict[str, m.Scalar] | None = None) -> tuple[str, bytes]:
        return self.topics[device.id], m.encode(self.reading(device, ts, values))
