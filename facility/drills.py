"""Drills (演练): what each scripted scenario covers, from the site file.

`plan()` turns "a fire drill at the west e-bike shed" into a `Drill` message: its id, when it
ends, and the devices and places whose alerts belong to it. The command line
(`facility drill ...`), the API (`POST /api/drills`) and the simulators (which play it) all
use it, so they agree on what a drill is. The message goes out on drill/{id}
(`facility.topics.drill`); the simulators play the scenario and the rules engine marks the
alerts of its sources and places as the drill's, so every screen and PA text says 演练.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from facility.messages import Drill, DrillScenario, Family, Scalar
from facility.site import GatewayKind, SiteConfig


class DrillError(ValueError):
    """A drill that cannot be run here (unknown place, gateway or bollard); says why."""


@dataclass(frozen=True)
class Defaults:
    place: str
    duration_s: float  # wall seconds until the scenario stops (the fire is out, ...)
    params: dict[str, Scalar]


DEFAULTS: dict[DrillScenario, Defaults] = {
    DrillScenario.FIRE: Defaults("ebike-shed-west", 300, {}),
    # Heavier than a summer storm, so the PA is reached within minutes of simulated time.
    # storm_s: the storm's own length in simulated seconds (it builds up over a tenth).
    DrillScenario.RAINSTORM: Defaults("west-gate-drain", 1800,
                                      {"peak_mm_h": 100.0, "rise_cm_per_min": 6.0,
                                       "storm_s": 1800.0}),
    DrillScenario.GATEWAY_LOSS: Defaults("gw-plc-south", 120, {}),
    DrillScenario.BOLLARD_FAULT: Defaults("bollard-s20", 120, {"fault_code": 1}),
}


def plan(site: SiteConfig, scenario: DrillScenario | str, *, by: str, place: str = "",
         duration_s: float | None = None, now: int | None = None,
         drill_id: str | None = None) -> Drill:
    """The drill message for `scenario` at `place` (its default when empty)."""
    scenario = DrillScenario(scenario)
    defaults = DEFAULTS[scenario]
    place = place or defaults.place
    now = now if now is not None else time.time_ns()
    duration = defaults.duration_s if duration_s is None else duration_s
    if not 1 <= duration <= 24 * 3600:
        raise DrillError(f"演练时长须在1秒至24小时之间（给定{duration:g}秒）")
    sources, places = _scope(site, scenario, place)
    return Drill(id=drill_id or f"drill-{uuid.uuid4().hex[:12]}", site=site.site.id,
                 scenario=scenario, ts=now, ends_at=now + round(duration * 1e9), by=by,
                 place=place, sources=sources, places=places, params=dict(defaults.params))


def _scope(site: SiteConfig, scenario: DrillScenario, place: str) -> tuple[list[str], list[str]]:
    places = {p.id: p for p in site.places}
    if scenario is DrillScenario.FIRE:
        detectors = [d for d in site.devices if d.place == place and d.family is Family.FIRE]
        if place not in places or not any(d.mqtt and d.mqtt.vendor == "gst-fire"
                                          for d in detectors):
            with_detectors = sorted({d.place for d in site.devices
                                     if d.mqtt and d.mqtt.vendor == "gst-fire"
                                     and d.kind != "fire_panel"})
            raise DrillError(f"{place}没有火灾探测器"
                             f"（有探测器的地点：{'、'.join(with_detectors)}）")
        panels = {d.tags["panel"] for d in detectors if "panel" in d.tags}
        return sorted({d.id for d in detectors} | panels), [place]
    if scenario is DrillScenario.RAINSTORM:
        drains = sorted({d.place for d in site.devices if d.kind == "water_level"})
        if place not in drains:
            raise DrillError(f"{place}没有水位传感器（排水点：{'、'.join(drains)}）")
        # Heavy rain is campus-wide: every drain, pump, the gauge and the septic gas.
        wet = [d.id for d in site.devices if d.family in (Family.DRAINAGE, Family.GAS)]
        return sorted(wet), drains
    if scenario is DrillScenario.GATEWAY_LOSS:
        modbus = [g.id for g in site.gateways if g.kind is GatewayKind.MODBUS]
        if place not in modbus:
            raise DrillError(f"{place}不是Modbus网关（可选：{'、'.join(modbus)}）")
        devices = site.devices_of(place)
        units = [u for d in devices for u in d.unit_ids()]
        return sorted([place, *(d.id for d in devices), *units]), []
    plc = next((d for d in site.devices if place in d.unit_ids()), None)
    if plc is None:
        some = [u for d in site.devices for u in d.unit_ids()][:3]
        raise DrillError(f"{place}不是升降柱（例如：{'、'.join(some)}）")
    return sorted([place, plc.id]), []


def bollard_number(site: SiteConfig, unit_id: str) -> tuple[str, int]:
    """The PLC of a bollard and the bollard's number on it (1-based)."""
    for device in site.devices:
        ids = device.unit_ids()
        if unit_id in ids:
            return device.id, ids.index(unit_id) + 1
    raise DrillError(f"{unit_id}不是升降柱")
