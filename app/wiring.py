"""Service wiring shared by the commands: what runs next to what in one process.

A service's modules are imported by the function that wires it, not here: every command
reads its configuration through this module, and `facility ingest` should not load the
API, the central system and the simulators (about 65 MB and 2 s) to start."""

from __future__ import annotations

import gc
import secrets
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from facility.catalog import Catalog, load_catalog, load_district
from facility.settings import Settings, load_settings

if TYPE_CHECKING:
    from csms.service import CentralSystem
    from rules.service import RulesService
    from simulators.display_player import DisplayPlayer
    from simulators.ocpp_chargers import Fleet


def configuration(path: Path | None = None) -> tuple[Settings, Catalog]:
    """The settings and the catalog, read once for every service of this process.

    The settings file is `path`, else FACILITY_CONFIG, else facility.yaml in the
    configuration folder (FACILITY_CONFIG_DIR, or the one shipped with the code)."""
    settings = load_settings(path)
    return settings, load_catalog(settings)


def district(path: Path | None = None, sites: str | None = None
             ) -> tuple[Settings, dict[str, Catalog]]:
    """The settings and the sites this process serves, by id: those of the sites folder
    (`sites_dir`), or the one site file; `sites` ("a,b", the command's --sites) chooses
    a subset in place of the settings' `site_ids`."""
    settings = load_settings(path)
    if sites:
        chosen = [s.strip() for s in sites.split(",") if s.strip()]
        settings = settings.model_copy(update={"site_ids": chosen})
    return settings, load_district(settings)


def display_player(settings: Settings, engine: RulesService) -> DisplayPlayer:
    """The simulated screens and PA zones of the engine's site (pages on display_port)."""
    from simulators.display_player import DisplayPlayer

    var = settings.resolve(settings.spool.dir).parent  # beside the spools: var/ in the demo
    return DisplayPlayer.from_config(settings.mqtt, engine.site_id, engine.endpoints,
                                     http_host=settings.rules.display_host,
                                     http_port=settings.rules.display_port,
                                     data_dir=var / "displays")  # the PA's audio, not $TMPDIR


def ocpp(settings: Settings, catalog: Catalog, *, simulate: bool
         ) -> tuple[CentralSystem, Fleet | None]:
    """The OCPP central system and, for the demo, its charge points simulated on the
    library's client side. Each simulated charge point gets a random password for this
    run (hashed for the central system, never written anywhere)."""
    from csms.config import hash_password
    from csms.service import CentralSystem
    from simulators.ocpp_chargers import Fleet, SimChargePoint
    from simulators.ocpp_chargers import Settings as SimSettings

    site = catalog.site
    points = [(d.ocpp.id, d.ocpp.connectors, float(d.tags.get("rated_kw", "7")) * 1000)
              for d in site.devices if d.ocpp is not None]
    passwords = {cp: secrets.token_urlsafe(24) for cp, _, _ in points} if simulate else {}
    central = CentralSystem(settings, site,
                            credentials={cp: hash_password(pw, random_token=True)
                                         for cp, pw in passwords.items()})
    if not simulate:
        return central, None
    tls = settings.ocpp.security_profile == 2
    context = ssl.create_default_context(cafile=str(settings.resolve(settings.ocpp.tls_cert))) \
        if tls and settings.ocpp.tls_cert else None
    scheme = "wss" if tls else "ws"

    url = f"{scheme}://{settings.ocpp.host}:{settings.ocpp.port}/ocpp"
    fleet = Fleet([SimChargePoint(cp, SimSettings(url, passwords[cp], ssl_context=context,
                                                  power_w=power), connectors)
                   for cp, connectors, power in points],
                  session_every=120.0, session_length=1500.0)
    return central, fleet


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
