"""`facility up` adds the rules engine and the simulated screens and PA zones."""

from __future__ import annotations

from facility.service import Service
from facility.settings import Settings
from facility.site import SiteConfig
from rules.service import RulesService
from simulators.display_player import DisplayPlayer


def services(settings: Settings, site: SiteConfig) -> list[Service]:
    rules = RulesService(settings, site)
    player = DisplayPlayer.from_config(settings.mqtt, rules.site_id, rules.endpoints,
                                       http_host=settings.rules.display_host,
                                       http_port=settings.rules.display_port)
    return [player, rules]
