"""Vendor MQTT payloads to canonical readings and events, by mappings that are data.

A mapping file (config/vendors/<vendor>.yaml) lists message shapes: the topic filter they
arrive on, how to find the device key, the sample time, the values and the events.
Paths are JMESPath expressions over the document {"topic": [levels...], "payload": {...}}.

A payload that is not JSON, has no known device, lacks a required field or has a field of
the wrong type does not fit: it raises MappingError with the reason, and the gateway
dead-letters it. A value of the right type but outside its plausible range is left out
of the reading, which is then marked BAD_VALUE: the other values are still good.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import jmespath
import jmespath.exceptions
import msgspec
from paho.mqtt.client import topic_matches_sub
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from facility.configfile import ConfigError, load
from facility.messages import Event, Family, Quality, Reading, Scalar
from facility.site import Device, SiteConfig
from facility.topics import ID_PATTERN

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class MappingError(ValueError):
    """The payload does not fit its vendor mapping; the message says why."""


MAX_PAYLOAD = 64 * 1024  # a device report is a few hundred bytes; more is a bug or an attack


def _compile(expr: str) -> Any:
    try:
        return jmespath.compile(expr)
    except jmespath.exceptions.ParseError as exc:
        raise ValueError(f"bad JMESPath {expr!r}: {exc}") from None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValueSpec(Strict):
    path: str
    type: Literal["number", "integer", "bool", "string"] = "number"
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0
    map: dict[str, str] | None = None  # vendor words to canonical words
    bit: int | None = Field(default=None, ge=0, le=31)  # one bit of an integer, as bool
    optional: bool = False
    valid: tuple[float, float] | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        _compile(value)
        return value


class TimeSpec(Strict):
    path: str
    format: Literal["iso8601", "unix_s", "unix_ms", "local"]
    local_format: str = "%Y-%m-%d %H:%M:%S"


class EventSpec(Strict):
    name: ValueSpec
    id: str  # JMESPath giving a string unique per event
    text: str | None = None
    attrs: dict[Name, ValueSpec] = {}


class MessageSpec(Strict):
    name: str
    topic: str
    key: str
    time: TimeSpec | None = None  # None: the gateway's receive time
    values: dict[Name, ValueSpec] = {}
    event: EventSpec | None = None
    change_events: list[Name] = []  # emit '<name>_change' when these values change

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        _compile(value)
        return value


class VendorMapping(Strict):
    vendor: Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN.pattern}$")]
    description: str
    reference: str
    report_period: float = Field(gt=0, description="longest normal gap between reports, s")
    stale_after: float = Field(gt=0, description="a sample older than this is stale, s")
    max_clock_skew: float = Field(default=120.0, gt=0)
    messages: list[MessageSpec] = Field(min_length=1)

    def subscriptions(self) -> list[str]:
        return sorted({m.topic for m in self.messages})


def load_vendors(folder: Path) -> dict[str, VendorMapping]:
    vendors: dict[str, VendorMapping] = {}
    for path in sorted(folder.glob("*.yaml")):
        mapping = load(VendorMapping, path)
        if mapping.vendor != path.stem:
            raise ConfigError(
                f"{path}: field 'vendor': {mapping.vendor!r} must match the file name")
        vendors[mapping.vendor] = mapping
    return vendors


@dataclass
class Output:
    device: Device
    device_id: str
    reading: Reading | None
    events: list[Event] = field(default_factory=list)


@dataclass
class _Compiled:
    spec: MessageSpec
    key: Any
    time: Any | None
    values: list[tuple[str, ValueSpec, Any]]
    event_name: Any | None
    event_id: Any | None
    event_text: Any | None
    event_attrs: list[tuple[str, ValueSpec, Any]]


class VendorDecoder:
    """Decodes one vendor's messages for the devices of one site and gateway."""

    def __init__(self, mapping: VendorMapping, site: SiteConfig, gateway_id: str,
                 clock_ns: Callable[[], int]) -> None:
        self.mapping = mapping
        self.site = site
        self.gateway_id = gateway_id
        self.clock_ns = clock_ns
        self.tz = ZoneInfo(site.site.timezone)
        self.devices = {d.mqtt.key: d for d in site.devices_of(gateway_id)
                        if d.mqtt is not None and d.mqtt.vendor == mapping.vendor}
        self.tags = {d.id: site.base_tags(d) for d in self.devices.values()}
        self.messages = [self._compile(m) for m in mapping.messages]
        self.last_values: dict[tuple[str, str], Scalar] = {}

    @staticmethod
    def _compile(m: MessageSpec) -> _Compiled:
        ev = m.event
        return _Compiled(
            spec=m,
            key=_compile(m.key),
            time=_compile(m.time.path) if m.time else None,
            values=[(n, v, _compile(v.path)) for n, v in m.values.items()],
            event_name=_compile(ev.name.path) if ev else None,
            event_id=_compile(ev.id) if ev else None,
            event_text=_compile(ev.text) if ev and ev.text else None,
            event_attrs=[(n, v, _compile(v.path)) for n, v in ev.attrs.items()] if ev else [],
        )

    def matches(self, topic: str) -> bool:
        return any(topic_matches_sub(m.spec.topic, topic) for m in self.messages)

    def decode(self, topic: str, payload: bytes, seq: Callable[[], int]) -> Output:
        compiled = next((m for m in self.messages if topic_matches_sub(m.spec.topic, topic)),
                        None)
        if compiled is None:
            raise MappingError(f"no {self.mapping.vendor} message shape for topic {topic!r}")
        if len(payload) > MAX_PAYLOAD:
            raise MappingError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
        try:
            body = msgspec.json.decode(payload)
        except msgspec.DecodeError as exc:
            raise MappingError(f"payload is not JSON: {exc}") from None
        doc = {"topic": topic.split("/"), "payload": body}
        key = compiled.key.search(doc)
        if not isinstance(key, str) or not key:
            raise MappingError(f"no device key at {compiled.spec.key!r}")
        device = self.devices.get(key)
        if device is None:
            raise MappingError(f"unknown {self.mapping.vendor} device {key!r}")
        now = self.clock_ns()
        ts, quality, errors = self._time(compiled, doc, now)
        values: dict[str, Scalar] = {}
        units: dict[str, str] = {}
        for name, spec, expr in compiled.values:
            value, error = _extract(name, spec, expr, doc)
            if error is not None:
                errors[name] = error
                quality = Quality.BAD_VALUE if quality is Quality.GOOD else quality
            elif value is not None:
                values[name] = value
                if spec.unit:
                    units[name] = spec.unit
        tags = self.tags[device.id]
        reading = None
        if values:
            reading = Reading(site=self.site.site.id, family=Family(device.family),
                              device=device.id, ts=ts, values=values, units=units,
                              quality=quality, tags=tags, gateway=self.gateway_id, seq=seq(),
                              errors=errors)
        elif compiled.event_name is None:
            raise MappingError("payload carries none of the mapped values: "
                               + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        out = Output(device, device.id, reading)
        if compiled.event_name is not None:
            out.events.append(self._event(compiled, doc, device, ts, seq))
        for name in compiled.spec.change_events:
            if name in values:
                previous = self.last_values.get((device.id, name))
                self.last_values[(device.id, name)] = values[name]
                if previous is not None and previous != values[name]:
                    out.events.append(Event(
                        site=self.site.site.id, family=Family(device.family), device=device.id,
                        ts=ts, id=f"{device.id}.{name}.{ts}", name=f"{name}_change",
                        attrs={"from": previous, "to": values[name]},
                        gateway=self.gateway_id, seq=seq()))
        return out

    def _time(self, compiled: _Compiled, doc: Any, now: int) -> tuple[int, Quality, dict[str, str]]:
        spec = compiled.spec.time
        if spec is None:
            return now, Quality.GOOD, {}
        raw = compiled.time.search(doc)
        ts = _parse_time(raw, spec, self.tz)
        if ts > now + int(self.mapping.max_clock_skew * 1e9):
            ahead = (ts - now) / 1e9
            why = f"device clock {ahead:.0f}s ahead; receive time used"
            return now, Quality.GOOD, {"time": why}
        if now - ts > self.mapping.stale_after * 1e9:
            return ts, Quality.STALE, {}
        return ts, Quality.GOOD, {}

    def _event(self, compiled: _Compiled, doc: Any, device: Device, ts: int,
               seq: Callable[[], int]) -> Event:
        spec = compiled.spec.event
        assert spec is not None
        name, error = _extract("event", spec.name, compiled.event_name, doc)
        if error is not None or not isinstance(name, str):
            raise MappingError(f"event name: {error or 'missing'}")
        event_id = compiled.event_id.search(doc)
        if not isinstance(event_id, str | int) or event_id == "":
            raise MappingError(f"no event id at {spec.id!r}")
        attrs: dict[str, Scalar] = {}
        for attr, vspec, expr in compiled.event_attrs:
            value, error = _extract(attr, vspec, expr, doc)
            if error is not None:
                raise MappingError(f"event attribute {attr!r}: {error}")
            if value is not None:
                attrs[attr] = value
        text = compiled.event_text.search(doc) if compiled.event_text else ""
        safe_id = "".join(c if c.isalnum() or c in "_.-" else "_" for c in f"{event_id}")[:64]
        return Event(site=self.site.site.id, family=Family(device.family), device=device.id,
                     ts=ts, id=safe_id, name=name, attrs=attrs,
                     text=text if isinstance(text, str) else "", gateway=self.gateway_id,
                     seq=seq())


def _parse_time(raw: Any, spec: TimeSpec, tz: ZoneInfo) -> int:
    number = isinstance(raw, int | float) and not isinstance(raw, bool)
    if spec.format == "unix_s" and number:
        return int(raw * 1_000_000_000)
    if spec.format == "unix_ms" and number:
        return int(raw * 1_000_000)
    if spec.format not in ("iso8601", "local") or not isinstance(raw, str):
        raise MappingError(f"time at {spec.path!r} is {raw!r}, not {spec.format}")
    try:
        parsed = datetime.fromisoformat(raw) if spec.format == "iso8601" \
            else datetime.strptime(raw, spec.local_format)
    except ValueError as exc:
        raise MappingError(f"time at {spec.path!r}: {exc}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1000


def _extract(name: str, spec: ValueSpec, expr: Any, doc: Any) -> tuple[Scalar | None, str | None]:
    """(value, None); (None, None) for an absent optional value; (None, reason) for a bad one.

    Raises MappingError when a required value is missing or has the wrong type.
    """
    raw = expr.search(doc)
    if raw is None:
        if spec.optional:
            return None, None
        raise MappingError(f"{name}: nothing at {spec.path!r}")
    if spec.bit is not None:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise MappingError(f"{name}: {spec.path!r} is {raw!r}, not an integer")
        return bool((raw >> spec.bit) & 1), None
    if spec.type == "bool":
        if isinstance(raw, bool):
            return raw, None
        if raw in (0, 1) and not isinstance(raw, float):
            return bool(raw), None
        raise MappingError(f"{name}: {spec.path!r} is {raw!r}, not a boolean")
    if spec.type == "string":
        if not isinstance(raw, str):
            raise MappingError(f"{name}: {spec.path!r} is {raw!r}, not a string")
        if spec.map is not None:
            if raw not in spec.map:
                return None, f"unknown value {raw!r}"
            return spec.map[raw], None
        return raw, None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise MappingError(f"{name}: {spec.path!r} is {raw!r}, not a number")
    if spec.type == "integer" and not isinstance(raw, int):
        raise MappingError(f"{name}: {spec.path!r} is {raw!r}, not an integer")
    if not math.isfinite(raw):
        return None, "not a finite number"
    value: int | float = raw * spec.scale + spec.offset if (spec.scale, spec.offset) != (1.0, 0.0) \
        else raw
    if spec.valid is not None and not spec.valid[0] <= value <= spec.valid[1]:
        return None, f"{value} outside plausible range {list(spec.valid)}"
    return value, None
