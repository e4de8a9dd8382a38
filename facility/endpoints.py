"""Output endpoints: the campus's LED screens, information terminals and PA zones.

endpoints.yaml (in the configuration folder, read once into the catalog) lists each one
with its size and capabilities and the site zone it stands in (PA zones: the site zones
they cover). Rules choose endpoints by id, group,
kind, zone, or the PA zones that cover an incident.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from facility.configfile import ConfigError, load
from facility.site import SiteConfig
from facility.topics import ID_PATTERN

Id = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN.pattern}$")]


class EndpointKind(StrEnum):
    LED_SCREEN = "led_screen"  # 55" outdoor LED screens
    LARGE_LED = "large_led"  # the indoor large LED walls
    INFO_TERMINAL = "info_terminal"  # 43" information terminals
    PA_ZONE = "pa_zone"  # a public-address zone (text to speech)


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id
    kind: EndpointKind
    name: str = Field(min_length=1)
    zone: Id | None = None  # screens: where it stands
    covers: list[Id] = []  # PA zones: the site zones they reach
    place: Id | None = None
    size_inch: float | None = Field(default=None, gt=0)
    resolution: tuple[int, int] | None = None
    max_chars: int = Field(default=200, ge=8, le=4096, description="what fits on one page")
    capabilities: list[Literal["text", "colour", "flash", "scroll", "tts", "chime"]] = ["text"]
    groups: list[Id] = []
    default_content: str = ""  # the normal content when nothing else is shown
    ack_timeout: float = Field(default=10.0, gt=0, le=600)

    @model_validator(mode="after")
    def _placed(self) -> Endpoint:
        if self.kind is EndpointKind.PA_ZONE:
            if not self.covers:
                raise ValueError("a PA zone needs 'covers' (the site zones it reaches)")
        elif self.zone is None:
            raise ValueError("a screen needs 'zone' (where it stands)")
        return self

    @property
    def is_pa(self) -> bool:
        return self.kind is EndpointKind.PA_ZONE

    @property
    def zones(self) -> list[str]:
        return list(self.covers) if self.is_pa else [self.zone] if self.zone else []


class EndpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    retries: int = Field(default=3, ge=0, le=20, description="re-sends before 'silent'")
    retry_max_interval: float = Field(default=60.0, gt=0)
    endpoints: list[Endpoint]

    def by_id(self) -> dict[str, Endpoint]:
        return {e.id: e for e in self.endpoints}

    @property
    def groups(self) -> set[str]:
        return {g for e in self.endpoints for g in e.groups}

    def check_site(self, site: SiteConfig, path: Path | str) -> None:
        zones = {z.id for z in site.zones}
        places = {p.id for p in site.places}
        seen: set[str] = set()
        for n, e in enumerate(self.endpoints):
            where = f"{path}: endpoint {e.id!r} (endpoints[{n}])"
            if e.id in seen:
                raise ConfigError(f"{where}: id {e.id!r} is defined twice")
            seen.add(e.id)
            for z in e.zones:
                if z not in zones:
                    raise ConfigError(f"{where}: field '{'covers' if e.is_pa else 'zone'}': "
                                      f"zone {z!r} is not in the site file")
            if e.place and e.place not in places:
                raise ConfigError(f"{where}: field 'place': {e.place!r} is not in the site file")

    def check_selector(self, selector: Any) -> None:
        ids = set(self.by_id())
        for name in selector.endpoints:
            if name not in ids:
                raise ValueError(f"no endpoint {name!r}")
        for name in selector.groups:
            if name not in self.groups:
                raise ValueError(f"no endpoint group {name!r} "
                                 f"(groups: {', '.join(sorted(self.groups))})")

    def select(self, selector: Any, incident_zones: set[str]) -> list[Endpoint]:
        """Endpoints a selector names, for an incident in `incident_zones` (union of parts)."""
        out: dict[str, Endpoint] = {}
        for e in self.endpoints:
            if e.id in selector.endpoints or set(e.groups) & set(selector.groups) \
                    or e.kind in selector.kinds:
                out[e.id] = e
            elif selector.zones and not e.is_pa:
                wanted = incident_zones if "incident" in selector.zones else set(selector.zones)
                if e.zone in wanted:
                    out[e.id] = e
            if e.is_pa and (selector.pa == "all" or (selector.pa == "incident"
                                                     and set(e.covers) & incident_zones)):
                out[e.id] = e
        return list(out.values())


def load_endpoints(path: Path, site: SiteConfig) -> EndpointConfig:
    config = load(EndpointConfig, path)
    config.check_site(site, path)
    return config
