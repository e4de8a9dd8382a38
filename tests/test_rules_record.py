"""An alarm keeps what happened (issue 16): its peak and the text it was raised with, its
value now beside them; shipped templates never double a device name's own word; a
correlation of fire detectors is a fire alarm in the shift report. In process, no servers:
the engine on a driven clock."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

from facility import labels
from facility.endpoints import load_endpoints
from facility.messages import Event, Family, Reading, Severity
from facility.site import load_site
from facility.topology import Topology
from reports.shift import _alerts_overview, _Names
from rules.alerts import Alert
from rules.clock import NS
from rules.config import load_rules, render, rule_files
from rules.engine import Engine
from tests.conftest import REPO, SITE_FILE, catalog

START = 1_795_500_000 * NS  # 2026-11-24 (a Tuesday) 14:00 Asia/Shanghai
RULES = REPO / "config" / "rules"
DOUBLED = re.compile(r"([\u4e00-\u9fff]{2,})\1")


def _engine() -> Engine:
    site = load_site(SITE_FILE)
    topology = Topology(catalog(site))
    endpoints = load_endpoints(REPO / "config" / "endpoints.yaml", site)
    return Engine(topology, load_rules(rule_files(RULES), topology, endpoints), endpoints,
                  now=START)


def _water(engine: Engine, level: float, now: int) -> None:
    engine.reading(Reading(site=engine.site, family=Family.DRAINAGE, device="wl-west-gate",
                           ts=now, values={"water_level": level}, units={"water_level": "cm"}),
                   now)
    engine.tick(now)


def test_a_flood_keeps_its_peak_and_its_text_until_it_closes() -> None:
    engine = _engine()
    now = START
    _water(engine, 46.0, now)
    [alert] = [a for a in engine.book.open.values() if a.rule == "waterlogging"]
    assert (alert.severity, alert.peak_severity) == (Severity.CRITICAL, Severity.CRITICAL)
    assert alert.text == "西门排水水位46厘米"  # the device's name ends with 水位: not doubled
    critical_priority = alert.priority
    engine.take()
    for _ in range(11):  # the water falls to 20 cm: after 10 minutes the level is warning
        now += 60 * NS
        _water(engine, 20.0, now)
    effects = engine.take()
    assert [t.action for t in effects.transitions if t.alert == alert.id] == \
        ["escalated", "severity_lowered"]  # unacknowledged for 10 minutes: escalated too
    assert alert.severity is Severity.WARNING and alert.value == 20.0
    assert (alert.peak_severity, alert.peak_priority) == (Severity.CRITICAL, critical_priority)
    assert alert.text == "西门排水水位46厘米"  # the text it was raised with, not 20 cm
    message = alert.message("severity_lowered", now)
    assert (message.severity, message.peak_severity, message.value, message.text) == \
        (Severity.WARNING, Severity.CRITICAL, 20.0, "西门排水水位46厘米")
    assert Alert.from_json(alert.to_json()).peak_severity is Severity.CRITICAL
    now += 60 * NS
    _water(engine, 48.0, now)  # upwards again: a history entry and a re-annunciation
    effects = engine.take()
    assert [t.action for t in effects.transitions if t.alert == alert.id] == \
        ["severity_raised"]
    assert (alert.severity, alert.acknowledged) == (Severity.CRITICAL, False)
    assert alert.text == "西门排水水位48厘米"


def test_shipped_templates_never_double_a_word() -> None:
    """Every rule text and notify template of config/rules, rendered for every source its
    rule can apply to (a correlation: every group it can form), with no word doubled."""
    engine = _engine()
    rules, topology, book = engine.rules, engine.topology, engine.book
    rendered: set[str] = set()
    for compiled in rules.rules.values():
        rule = compiled.rule
        sources = set(compiled.sources)
        if rule.type == "correlation":
            sources = {topology.group_key(s, rule.group_by) for s in sources}
        for source in sorted(sources):
            src = topology.sources.get(source)
            place = src.place if src else source
            alert = Alert(id="al-test", site=engine.site, rule=rule.id, source=source,
                          severity=rule.severity, priority=3, category=rule.category,
                          raised_at=START, place=place, zone=src.zone if src else "",
                          value=12.0, unit="")
            values = book.fields(alert)
            texts = [rule.text] if rule.text else []
            for notify in rule.notify:
                for name in (notify.template, notify.all_clear):
                    if name:
                        t = rules.templates[name]
                        texts += [t.title, t.text, t.short, t.speech]
            for text in filter(None, texts):
                out = render(text, values)
                rendered.add(rule.id)
                assert not DOUBLED.search(out), (rule.id, source, out)
    assert rendered == {c.id for c in rules.rules.values()  # every rule with words to show
                        if c.sources and (c.rule.text or c.rule.notify)}


def test_render_drops_only_a_name_s_own_word() -> None:
    assert render("{device_name}水位{value:.0f}厘米",
                  {"device_name": "西门排水水位", "value": 46.0}) == "西门排水水位46厘米"
    assert render("{device_name}水位{value:.0f}厘米",
                  {"device_name": "1号水尺", "value": 46.0}) == "1号水尺水位46厘米"
    assert render("{value}{value}", {"value": "12"}) == "1212"  # a value is not a name


def test_a_fire_correlation_is_a_fire_alarm_in_the_shift_report() -> None:
    engine = _engine()
    shed = sorted(s.id for s in engine.topology.sources.values()
                  if s.place == "ebike-shed-west" and s.kind == "smoke_detector")[:2]
    now = START
    for n, device in enumerate(shed):
        now += NS
        engine.event(Event(site=engine.site, family=Family.FIRE, device=device, ts=now,
                           id=f"ev-{n}", name="fire_alarm"), now)
    [correlation] = [a for a in engine.book.open.values() if a.rule == "fire-two-detectors"]
    assert (correlation.source, correlation.family) == ("ebike-shed-west", "fire")
    section = _alerts_overview([correlation], now, _Names(engine.topology.site),
                               ZoneInfo(engine.topology.timezone))
    [by_family] = [t for t in section.tables if t.key == "by_family"]
    assert [row[0] for row in by_family.rows] == [labels.FAMILY[Family.FIRE]]

