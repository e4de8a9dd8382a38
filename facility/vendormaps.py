"""Vendor MQTT mappings as data: one YAML file per vendor, validated once at start-up.

A mapping lists message shapes: the topic filter they arrive on, how to find the device
key, the sample time, the values and the events; paths are JMESPath expressions. The
schema lives in the core because the catalog (facility/catalog.py) loads every mapping
once for all services (the broker's ACL needs their topics, the rules their value names);
the gateway decodes with them (gateway/vendors.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import jmespath
import jmespath.exceptions
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from facility.configfile import ConfigError, load
from facility.topics import ID_PATTERN

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


def compile_path(expr: str) -> Any:
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
    scale: float = Field(default=1.0, allow_inf_nan=False)
    offset: float = Field(default=0.0, allow_inf_nan=False)
    map: dict[str, str] | None = None  # vendor words to canonical words
    bit: int | None = Field(default=None, ge=0, le=31)  # one bit of an integer, as bool
    optional: bool = False
    valid: tuple[float, float] | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        compile_path(value)
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
        compile_path(value)
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
