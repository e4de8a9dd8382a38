"""The campus: places, gateways and devices, from a versioned YAML file.

Devices are data. A Modbus device names its host, unit id, register-map model and poll
period; an MQTT device names its vendor mapping and the key the vendor uses for it.
A PLC that fronts many units (the 42 south-gate bollards) declares them with `units`.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from facility.configfile import ConfigError, read_yaml, validate
from facility.messages import Family
from facility.topics import ID_PATTERN

Id = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN.pattern}$")]
TagName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlanPoint(Strict):
    """Position on the campus plan, in percent of its width and height."""

    x: float = Field(ge=0, le=100)
    y: float = Field(ge=0, le=100)


class PlaceKind(StrEnum):
    BUILDING = "building"
    GATE = "gate"
    CAR_PARK = "car_park"
    EBIKE_SHED = "ebike_shed"
    PLANT_ROOM = "plant_room"
    OUTDOOR = "outdoor"


class Place(Strict):
    id: Id
    name: str = Field(min_length=1)
    kind: PlaceKind
    zone: Id
    building: Id | None = None  # the building a room or shed belongs to
    floor_area_m2: float | None = Field(default=None, gt=0)
    occupants: int | None = Field(default=None, gt=0)
    plan: PlanPoint | None = None


class Zone(Strict):
    id: Id
    name: str = Field(min_length=1)


class GatewayKind(StrEnum):
    MODBUS = "modbus"
    MQTT = "mqtt"
    OCPP = "ocpp"  # the OCPP central system (csms/): its charge points connect to it


class GatewaySpec(Strict):
    id: Id
    kind: GatewayKind
    name: str = ""
    vendors: list[Id] = []  # MQTT gateways: the vendor mappings they run


class ModbusEndpoint(Strict):
    host: str = Field(min_length=1)
    port: int = Field(ge=0, le=65535)  # 0 only in tests, before a simulator binds
    unit: int = Field(default=1, ge=0, le=247)
    model: Id
    period: float = Field(default=10.0, gt=0, le=3600, description="poll period, s")
    timeout: float = Field(default=1.0, gt=0, le=60, description="per request, s")
    offline_after: int = Field(
        default=3, ge=1, le=100, description="failed polls in a row before 'offline'"
    )


class MqttEndpoint(Strict):
    vendor: Id
    key: str = Field(min_length=1, description="how the vendor names this device")


class OcppEndpoint(Strict):
    """A charge point that speaks OCPP 1.6J to the platform's central system (csms/)."""

    id: Id = Field(description="the charge point id, the last level of its WebSocket path")
    connectors: int = Field(default=1, ge=1, le=16)


class Units(Strict):
    """Units behind one controller, e.g. the bollards of a PLC; ids from a format."""

    count: int = Field(ge=1, le=1000)
    id: str = Field(description="Python format with {n}, e.g. 'bollard-s{n:02d}'")
    name: str = Field(default="", description="format with {n}")
    family: Family


class Device(Strict):
    id: Id
    family: Family
    kind: TagName
    name: str = ""
    gateway: Id
    place: Id
    tags: dict[TagName, str] = {}
    modbus: ModbusEndpoint | None = None
    mqtt: MqttEndpoint | None = None
    ocpp: OcppEndpoint | None = None
    units: Units | None = None
    plan: PlanPoint | None = None

    @model_validator(mode="after")
    def _one_endpoint(self) -> Device:
        if [self.modbus, self.mqtt, self.ocpp].count(None) != 2:
            raise ValueError("a device needs exactly one of 'modbus', 'mqtt' or 'ocpp'")
        if self.units is not None and self.modbus is None:
            raise ValueError("'units' are only for Modbus controllers")
        return self

    def unit_ids(self) -> list[str]:
        if self.units is None:
            return []
        return [self.units.id.format(n=n) for n in range(1, self.units.count + 1)]


class PublicBodyKind(StrEnum):
    """The kinds of public body the public institutions' energy statistics compare
    (公共机构能源资源消费统计: offices, schools, universities, hospitals, venues)."""

    OFFICE = "office"
    SCHOOL = "school"
    UNIVERSITY = "university"
    HOSPITAL = "hospital"
    VENUE = "venue"
    OTHER = "other"


class PublicBody(Strict):
    """What the district energy report divides a site's energy by (docs/reports.md).

    Persons (用能人数) are counted as GB/T 40498-2021 annex A counts them, as daily
    averages: staff (in post, long-term contract, service and security staff) plus, for
    schools and universities, registered students, and for hospitals students and
    inpatients; `visitors` are outside people (outpatients, meeting guests) already
    weighted by the time they are there. Area is the floor area in use, without housing.
    """

    kind: PublicBodyKind
    floor_area_m2: float | None = Field(default=None, gt=0)
    staff: int | None = Field(default=None, ge=0)
    students: int = Field(default=0, ge=0)
    inpatients: int = Field(default=0, ge=0)
    visitors: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _persons_fit_the_kind(self) -> PublicBody:
        if self.students and self.kind not in (PublicBodyKind.SCHOOL, PublicBodyKind.UNIVERSITY,
                                               PublicBodyKind.HOSPITAL):
            raise ValueError(f"field 'students': a {self.kind} has no students")
        if self.inpatients and self.kind is not PublicBodyKind.HOSPITAL:
            raise ValueError("field 'inpatients': only a hospital has inpatients")
        return self

    @property
    def persons(self) -> int | None:
        """用能人数 = staff + students + inpatients + visitors; None without staff."""
        if self.staff is None:
            return None
        return self.staff + self.students + self.inpatients + self.visitors


class SiteInfo(Strict):
    id: Id
    name: str
    timezone: str = "Asia/Shanghai"
    public_body: PublicBody | None = None  # the district energy report's facts


class SiteConfig(Strict):
    version: Literal[1]
    site: SiteInfo
    zones: list[Zone]
    places: list[Place]
    gateways: list[GatewaySpec]
    devices: list[Device]

    @model_validator(mode="after")
    def _references(self) -> SiteConfig:
        _unique("zone", [z.id for z in self.zones])
        _unique("place", [p.id for p in self.places])
        _unique("gateway", [g.id for g in self.gateways])
        zones = {z.id for z in self.zones}
        for place in self.places:
            if place.zone not in zones:
                raise ValueError(f"place {place.id!r}: zone {place.zone!r} is not defined")
        places = {p.id for p in self.places}
        gateways = {g.id: g for g in self.gateways}
        all_ids: list[str] = []
        for device in self.devices:
            where = f"device {device.id!r}"
            gateway = gateways.get(device.gateway)
            if gateway is None:
                raise ValueError(f"{where}: field 'gateway': {device.gateway!r} is not defined")
            if device.place not in places:
                raise ValueError(f"{where}: field 'place': {device.place!r} is not defined")
            wants = GatewayKind.MODBUS if device.modbus else \
                GatewayKind.OCPP if device.ocpp else GatewayKind.MQTT
            if gateway.kind is not wants:
                raise ValueError(
                    f"{where}: field 'gateway': {gateway.id!r} is a {gateway.kind} gateway, "
                    f"but the device has a {wants} endpoint"
                )
            if device.mqtt and device.mqtt.vendor not in gateway.vendors:
                raise ValueError(
                    f"{where}: field 'mqtt.vendor': gateway {gateway.id!r} does not run "
                    f"vendor {device.mqtt.vendor!r}"
                )
            if device.units:
                try:
                    unit_ids = device.unit_ids()
                except (KeyError, IndexError, ValueError) as exc:
                    raise ValueError(f"{where}: field 'units.id': bad format: {exc}") from None
                for unit_id in unit_ids:
                    if ID_PATTERN.fullmatch(unit_id) is None:
                        raise ValueError(f"{where}: field 'units.id': {unit_id!r} is not an id")
                all_ids += unit_ids
            all_ids.append(device.id)
        _unique("device", all_ids)
        keys = [(d.mqtt.vendor, d.mqtt.key) for d in self.devices if d.mqtt]
        _unique("vendor key", [f"{v}:{k}" for v, k in keys])
        _unique("charge point", [d.ocpp.id for d in self.devices if d.ocpp])
        return self

    # Lookups used by every service.
    def place(self, place_id: str) -> Place:
        return next(p for p in self.places if p.id == place_id)

    def device(self, device_id: str) -> Device:
        return next(d for d in self.devices if d.id == device_id)

    def devices_of(self, gateway_id: str) -> list[Device]:
        return [d for d in self.devices if d.gateway == gateway_id]

    def gateway(self, gateway_id: str) -> GatewaySpec:
        for g in self.gateways:
            if g.id == gateway_id:
                return g
        raise KeyError(gateway_id)

    def all_device_ids(self) -> Iterator[tuple[str, Family, Device]]:
        """Every addressable device id, with units of controllers expanded."""
        for device in self.devices:
            yield device.id, device.family, device
            if device.units:
                for unit_id in device.unit_ids():
                    yield unit_id, device.units.family, device

    def base_tags(self, device: Device) -> dict[str, str]:
        """Static tags every reading of this device carries (place, zone, kind, ...)."""
        place = self.place(device.place)
        tags = {"kind": device.kind, "place": place.id, "zone": place.zone}
        if place.building:
            tags["building"] = place.building
        elif place.kind is PlaceKind.BUILDING:
            tags["building"] = place.id
        tags.update(device.tags)
        return tags


def _unique(what: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise ValueError(f"{what} id {item!r} is defined twice")
        seen.add(item)


def site_for(site: SiteConfig, site_id: str) -> SiteConfig:
    """The same campus under another site id (a worker per site; tests isolate by site)."""
    if site_id == site.site.id:
        return site
    return site.model_copy(update={"site": site.site.model_copy(update={"id": site_id})})


def load_site(path: Path) -> SiteConfig:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the site file must be a mapping")
    return validate(SiteConfig, data, path)
