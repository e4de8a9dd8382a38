"""Service wiring shared by the commands: what runs next to what in one process."""

from __future__ import annotations

import gc
from pathlib import Path

from facility.catalog import Catalog, load_catalog
from facility.settings import Settings, load_settings
from rules.service import RulesService
from simulators.display_player import DisplayPlayer


def configuration(path: Path | None = None) -> tuple[Settings, Catalog]:
    """The settings and the catalog, read once for every service of this process.

    The settings file is `path`, else FACILITY_CONFIG, else facility.yaml in the
    configuration folder (FACILITY_CONFIG_DIR, or the one shipped with the code)."""
    settings = load_settings(path)
    return settings, load_catalog(settings)


def display_player(settings: Settings, engine: RulesService) -> DisplayPlayer:
    """The simulated screens and PA zones of the engine's site (pages on display_port)."""
    return DisplayPlayer.from_config(settings.mqtt, engine.site_id, engine.endpoints,
                                     http_host=settings.rules.display_host,
                                     http_port=settings.rules.display_port)


def freeze() -> None:
    """Leave every object alive now out of the garbage collector's full passes.

    Rules, plans, compiled expressions and the topology live as long as the process:
    hundreds of thousands of objects that every full collection would walk again (20-90 ms
    pauses under load, each one a late evacuation message). Frozen, the collector leaves
    them alone. Process-wide, so it is the composition root's call: once every service
    has started, and again after the rules engine reloads its rule files (the new rules
    too). `thaw` hands them back."""
    gc.collect()
    gc.freeze()


def thaw() -> None:
    gc.unfreeze()
