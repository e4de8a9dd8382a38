"""What the rules engine knows about the campus: every source an alert can be about.

Built from the catalog (facility/catalog.py): the site file (devices, the units behind a
controller, gateways) and the device knowledge that is already data: the value names each
vendor mapping and register map produces, and report periods. Rule expressions are
checked against these names, so a typo fails at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from facility.catalog import Catalog
from facility.modbusmaps import RegisterMap
from facility.site import Device
from facility.vendormaps import VendorMapping


@dataclass(frozen=True)
class Source:
    id: str
    family: str
    kind: str
    name: str
    place: str = ""
    place_name: str = ""
    place_kind: str = ""
    zone: str = ""
    zone_name: str = ""
    building: str = ""
    gateway: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    value_names: frozenset[str] = frozenset()
    report_period: float = 60.0  # seconds between reports when all is well

    @property
    def parent(self) -> str:
        """The device this one depends on: its fire panel or its controller."""
        return self.tags.get("panel") or self.tags.get("controller") or ""


# What an OCPP charge point's readings carry through the central system: csms/meter.py
# maps OCPP's measurands onto these names (tests/test_ocpp_values.py holds the two together).
OCPP_VALUES = frozenset(
    {"energy_import", "power", "power_offered", "current", "current_offered", "voltage",
     "connector_temperature", "soc", "frequency", "session_energy", "connector",
     "transaction_id", "context", "status", "connector_status", "error_code",
     "vendor_error_code", "info"}
    | {f"{base}_{p}" for base in ("power", "current", "voltage") for p in "abc"})


def _vendor_values(vendors: Mapping[str, VendorMapping]
                   ) -> dict[str, tuple[frozenset[str], float]]:
    return {vendor: (frozenset(name for message in mapping.messages for name in message.values),
                     mapping.report_period)
            for vendor, mapping in vendors.items()}


def _model_values(models: Mapping[str, RegisterMap]
                  ) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    # Editions are models of their own already (`<model>.<edition>`, facility/modbusmaps.py).
    return {model: (frozenset(p.name for p in regmap.points),
                    frozenset(p.name for p in regmap.units.points) if regmap.units else frozenset())
            for model, regmap in models.items()}


class Topology:
    def __init__(self, catalog: Catalog) -> None:
        site = catalog.site
        self.site = site
        self.site_id = site.site.id
        self.timezone = site.site.timezone
        self.zones = {z.id: z for z in site.zones}
        self.places = {p.id: p for p in site.places}
        vendors = _vendor_values(catalog.vendors)
        models = _model_values(catalog.models)
        self.sources: dict[str, Source] = {}
        for device in site.devices:
            names: frozenset[str] = frozenset()
            unit_names: frozenset[str] = frozenset()
            period = 60.0
            if device.mqtt is not None:
                names, period = vendors.get(device.mqtt.vendor, (frozenset(), 60.0))
            elif device.ocpp is not None:
                names = OCPP_VALUES
            elif device.modbus is not None:
                names, unit_names = models.get(device.modbus.model, (frozenset(), frozenset()))
                period = device.modbus.period
            self._add(device, device.id, device.family.value, device.kind, device.name,
                      site.base_tags(device), names, period)
            if device.units is not None:
                for n, unit_id in enumerate(device.unit_ids(), start=1):
                    tags = {**site.base_tags(device), "controller": device.id,
                            "kind": device.units.family.value}
                    name = device.units.name.format(n=n) if device.units.name else unit_id
                    self._add(device, unit_id, device.units.family.value,
                              device.units.family.value, name, tags, unit_names, period)
        for gw in site.gateways:
            self.sources[gw.id] = Source(id=gw.id, family="gateway", kind="gateway",
                                         name=gw.name or gw.id, gateway=gw.id,
                                         report_period=30.0)
        # Sources others depend on: fire panels, controllers (looked up per new alert).
        self.parents = frozenset(s.parent for s in self.sources.values() if s.parent)

    def _add(self, device: Device, source_id: str, family: str, kind: str, name: str,
             tags: dict[str, str], names: frozenset[str], period: float) -> None:
        place = self.places[device.place]
        zone = self.zones[place.zone]
        self.sources[source_id] = Source(
            id=source_id, family=family, kind=kind, name=name or source_id, place=place.id,
            place_name=place.name, place_kind=place.kind.value, zone=zone.id,
            zone_name=zone.name, building=tags.get("building", ""), gateway=device.gateway,
            tags={k: v for k, v in tags.items()}, value_names=names, report_period=period)

    def select(self, match: Any) -> list[str]:
        """Source ids a rule's `match` selects, in site-file order."""
        out = []
        for source in self.sources.values():
            if match.family and source.family not in match.family:
                continue
            if match.kind and source.kind not in match.kind:
                continue
            if match.place_kind and source.place_kind not in match.place_kind:
                continue
            if match.place and source.place not in match.place:
                continue
            if match.zone and source.zone not in match.zone:
                continue
            if match.device and source.id not in match.device:
                continue
            if any(source.tags.get(k) != v for k, v in match.tags.items()):
                continue
            out.append(source.id)
        return out

    def group_key(self, source_id: str, group_by: str) -> str:
        source = self.sources.get(source_id)
        if source is None:
            return source_id
        if group_by == "place":
            return source.place or source.id
        if group_by == "zone":
            return source.zone or source.id
        if group_by == "building":
            return source.building or source.place or source.id
        if group_by == "gateway":
            return source.gateway or source.id
        if group_by == "site":
            return self.site_id
        return source.id

    def place_name(self, place_id: str) -> str:
        place = self.places.get(place_id)
        return place.name if place else place_id

    def zone_of_place(self, place_id: str) -> str:
        place = self.places.get(place_id)
        return place.zone if place else ""

    def zone_name(self, zone_id: str) -> str:
        zone = self.zones.get(zone_id)
        return zone.name if zone else zone_id
