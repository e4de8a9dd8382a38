"""A normal day raises nothing (issue 16): the campus's simulated meters (simulators/, on
a fake clock) through the engine with the shipped rules, for a weekday and a rest day of
July (the month of the highest evening load), every reading 30 s apart. Not one alert on
a meter: the energy baselines are per meter, not one 120 kW for every building."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from facility.endpoints import load_endpoints
from facility.messages import Family, Reading
from facility.settings import MqttSettings
from facility.site import load_site
from facility.topology import Topology
from rules.clock import NS
from rules.config import load_rules, rule_files
from rules.engine import Engine
from simulators.campus import Campus
from simulators.clock import SimClock
from tests.conftest import REPO, SITE_FILE, catalog

PERIOD = 30  # s between readings of one meter


@pytest.mark.parametrize("day", ["2026-07-15", "2026-07-19"])  # a Wednesday, a Sunday
def test_a_normal_day_raises_no_energy_alert(day: str) -> None:
    site = load_site(SITE_FILE)
    topology = Topology(catalog(site))
    endpoints = load_endpoints(REPO / "config" / "endpoints.yaml", site)
    rules = load_rules(rule_files(REPO / "config" / "rules"), topology, endpoints)
    start = round(datetime.fromisoformat(day).replace(
        tzinfo=ZoneInfo(site.site.timezone)).timestamp()) - 3600  # an hour before midnight
    campus = Campus(site, MqttSettings(), clock=SimClock(start=start, scale=0), seed=1,
                    families={Family.ENERGY})
    meters = [d.id for d in site.devices if d.family == Family.ENERGY]
    engine = Engine(topology, rules, endpoints, now=start * NS)
    raised = []
    for t in range(start, start + 25 * 3600, PERIOD):
        now = t * NS
        for device in meters:
            kw = campus.meter(device).minute_kw(t // 60)  # what the meter's register shows
            engine.reading(Reading(site=site.site.id, family=Family.ENERGY, device=device,
                                   ts=now, values={"power_total": kw}), now)
        engine.tick(now)
        raised += [(a.rule, a.source) for a, action, _, _ in engine.take().alerts
                   if action == "raised" and a.source in meters]
    assert raised == []
    assert len(meters) == 16
