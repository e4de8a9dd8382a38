"""Rule files: the shipped ones load; mistakes are named by file, rule and field; expressions
are safe; schedules and hysteresis behave."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from facility.configfile import ConfigError
from facility.endpoints import EndpointConfig, load_endpoints
from facility.site import load_site
from facility.topology import Topology
from rules.config import Schedule, load_rules, parse_duration, rule_files
from rules.expr import Expression, ExpressionError, Unknown
from tests.conftest import REPO, SITE_FILE, catalog

RULES = REPO / "config" / "rules"


@pytest.fixture(scope="module")
def world() -> tuple[Topology, EndpointConfig]:
    site = load_site(SITE_FILE)
    return Topology(catalog(site)), load_endpoints(REPO / "config" / "endpoints.yaml", site)


def load(tmp_path: Path, world: tuple[Topology, EndpointConfig], text: str,
         name: str = "bad.yaml") -> object:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    topology, endpoints = world
    return load_rules([RULES / "common.yaml", path], topology, endpoints)


def test_shipped_rules_load(world: tuple[Topology, EndpointConfig]) -> None:
    topology, endpoints = world
    rules = load_rules(rule_files(RULES), topology, endpoints)
    expected = {"fire-detector-alarm", "fire-panel-alarm", "fire-two-detectors",
                "fire-smoke-and-heat", "electrical-residual-current",
                "electrical-cable-temperature", "waterlogging", "sump-pump-failed",
                "bollard-fault", "bollard-pressure-low", "bollard-not-up",
                "south-gate-emergency", "ev-charger-faulted", "ev-connector-overtemp",
                "gateway-offline", "device-offline", "device-no-data", "energy-off-hours"}
    assert expected <= set(rules.rules)
    assert set(rules.rules["fire-two-detectors"].sources) >= {"fd-ebw-01", "fd-ebw-04"}
    assert rules.rules["bollard-not-up"].sources == [f"bollard-s{n:02d}" for n in range(1, 43)]


@pytest.mark.parametrize(("body", "field", "says"), [
    ("""
  - id: smoke-typo
    name: x
    type: threshold
    match: {family: fire, kind: smoke_detector}
    levels: [{severity: warning, raise: "smok > 0.15"}]
""", "levels.0.raise", "unknown value name(s) 'smok'"),
    ("""
  - id: sneaky
    name: x
    type: threshold
    match: {family: fire}
    levels: [{severity: warning, raise: "smoke.__class__ == 1"}]
""", "levels.0.raise", "attribute access"),
    ("""
  - id: importer
    name: x
    type: event
    match: {family: fire}
    raise_on: [fire_alarm]
    clear_when: "__import__('os') == 1"
""", "clear_when", "unknown function '__import__'"),
    ("""
  - id: slow
    name: x
    type: threshold
    match: {family: drainage, kind: water_level}
    for: soon
    levels: [{severity: warning, raise: "water_level > 1"}]
""", "for", "'soon' is not a duration"),
    ("""
  - id: nowhere
    name: x
    type: absence
    match: {family: fire, kind: smoke_detecor}
    after: 5m
""", "match", "matches no device"),
    ("""
  - id: no-template
    name: x
    type: event
    match: {family: fire}
    raise_on: [fire_alarm]
    notify: [{to: {groups: [led]}, template: fire_evacuat}]
""", "notify.0.template", "no template 'fire_evacuat'"),
    ("""
  - id: no-group
    name: x
    type: event
    match: {family: fire}
    raise_on: [fire_alarm]
    notify: [{to: {groups: [screens]}, template: fire_evacuate}]
""", "notify.0.to", "no endpoint group 'screens'"),
    ("""
  - id: night-owl
    name: x
    type: event
    match: {family: fire}
    raise_on: [fire_alarm]
    schedule: [midnight]
""", "schedule.0", "no schedule 'midnight'"),
    ("""
  - id: upside-down
    name: x
    type: threshold
    match: {family: drainage, kind: water_level}
    levels:
      - {severity: critical, raise: "water_level > 40"}
      - {severity: warning, raise: "water_level > 20"}
""", "", "levels must go from the least to the most severe"),
    ("""
  - id: rate-no-window
    name: x
    type: threshold
    match: {family: drainage, kind: water_level}
    levels: [{severity: warning, raise: "rate('water_level') > 1"}]
""", "levels.0.raise", "needs a window"),
    ("""
  - id: bad-text
    name: x
    type: event
    match: {family: fire}
    raise_on: [fire_alarm]
    text: "{device.__class__}"
""", "text", "unknown field"),
])
def test_rule_errors_name_file_rule_and_field(tmp_path: Path,
                                              world: tuple[Topology, EndpointConfig],
                                              body: str, field: str, says: str) -> None:
    rule_id = body.split("id: ")[1].split("\n")[0]
    with pytest.raises(ConfigError) as info:
        load(tmp_path, world, "version: 1\nrules:" + body)
    message = str(info.value)
    assert f"{tmp_path / 'bad.yaml'}: rule '{rule_id}' (rules[0])" in message
    if field:
        assert f"field '{field}'" in message
    assert says in message


def test_duplicates_and_references_across_files(tmp_path: Path,
                                                world: tuple[Topology, EndpointConfig]) -> None:
    (tmp_path / "a.yaml").write_text("""version: 1
rules:
  - {id: twice, name: x, type: absence, match: {family: gateway}, status: offline, after: 1m}
""", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("""version: 1
inhibit: [{source: [twice], target: [ghost], relation: gateway}]
rules:
  - {id: twice, name: y, type: absence, match: {family: gateway}, status: offline, after: 2m}
""", encoding="utf-8")
    topology, endpoints = world
    with pytest.raises(ConfigError) as info:
        load_rules([tmp_path / "a.yaml", tmp_path / "b.yaml"], topology, endpoints)
    message = str(info.value)
    assert f"{tmp_path / 'b.yaml'}: rule 'twice' (rules[0]): rule id 'twice' is already used in " \
           f"{tmp_path / 'a.yaml'}" in message
    assert f"{tmp_path / 'b.yaml'}: inhibit[0]: field 'target': no rule 'ghost'" in message


def test_not_yaml_and_unknown_keys(tmp_path: Path, world: tuple[Topology, EndpointConfig]) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(tmp_path, world, "version: 1\nrules: [\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, world, """version: 1
rules:
  - {id: extra, name: x, type: absence, match: {family: gateway}, after: 1m, colour: red}
""")
    assert "rule 'extra' (rules[0]): field 'colour': Extra inputs are not permitted" \
        in str(info.value)


def test_expressions_are_safe_and_three_valued() -> None:
    expr = Expression("state in ('alarm', 'pre_alarm') or get('smoke', 0) >= 0.10")
    assert expr.truth({"state": "alarm"}, {"get": lambda n, d=None: d})
    assert not expr.truth({"state": "normal"}, {"get": lambda n, d=None: d})
    with pytest.raises(Unknown):  # the device has not reported its state yet
        expr.truth({}, {"get": lambda n, d=None: d})
    for bad in ("().__class__", "[x for x in 'ab']", "lambda: 1", "open('/etc/passwd')"):
        with pytest.raises(ExpressionError):
            Expression(bad)


def test_schedules_cross_midnight_and_weekends() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    nights = Schedule(between=("20:00", "07:00"))
    office = Schedule(days=["mon", "tue", "wed", "thu", "fri"], between=("08:30", "18:00"),
                      except_dates=["2026-10-01"])
    assert nights.contains(datetime(2026, 11, 27, 23, 0, tzinfo=tz))
    assert nights.contains(datetime(2026, 11, 28, 6, 59, tzinfo=tz))
    assert not nights.contains(datetime(2026, 11, 28, 7, 0, tzinfo=tz))
    assert office.contains(datetime(2026, 11, 27, 9, 0, tzinfo=tz))  # a Friday
    assert not office.contains(datetime(2026, 11, 28, 9, 0, tzinfo=tz))  # Saturday
    assert not office.contains(datetime(2026, 10, 1, 9, 0, tzinfo=tz))  # National Day


def test_durations() -> None:
    assert parse_duration("30s") == 30 and parse_duration("5m") == 300
    assert parse_duration(1.5) == 1.5 and parse_duration("2h") == 7200
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("five minutes")


def test_rules_know_the_value_names_of_every_model_and_edition() -> None:
    """The rules engine takes its value names from the catalog's register maps: what the
    gateway reads, editions included (`<model>.<edition>`)."""
    topology = Topology(catalog())
    for device in catalog().site.devices:
        if device.modbus is None:
            continue
        regmap = catalog().models[device.modbus.model]
        assert topology.sources[device.id].value_names == {p.name for p in regmap.points}
        if regmap.units is not None:
            unit = topology.sources[device.unit_ids()[0]]
            assert unit.value_names == {p.name for p in regmap.units.points}
