"""Rules as data: the versioned rule files (config/rules/*.yaml), validated at start-up.

A file holds schedules, message templates, duty teams, inhibition rules and rules. Every
mistake is reported with the file, the rule and the field:

    config/rules/fire.yaml: rule 'smoke-high' (rules[2]): field 'levels.0.raise':
    'smok > 0.15': unknown value name(s) 'smok' for the devices this rule matches ...

Rule types: `threshold` (levels with separate raise and clear expressions: hysteresis,
`for` and `clear_for` durations, rates of change through rate()), `event` (device events
raise and clear), `absence` (no data, or offline, for a time), `command` (a command whose
expected outcome does not follow within its time), `correlation` (several devices of one
place or zone within a window), `site_link` (the site's link to the centre down: one
alert for the site). Any rule may be limited to `schedule`s.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from facility.configfile import ConfigError, read_yaml
from facility.endpoints import EndpointConfig, EndpointKind
from facility.messages import Severity
from facility.topics import ID_PATTERN
from facility.topology import Topology
from rules.expr import Expression, ExpressionError

Id = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN.pattern}$")]
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
DEFAULT_PRIORITY = {Severity.CRITICAL: 1, Severity.MAJOR: 2, Severity.MINOR: 3,
                    Severity.WARNING: 4, Severity.INFO: 5}
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# What a message template may name; {value:.1f} style formats are allowed, nothing else.
TEMPLATE_FIELDS = frozenset({"site_name", "place", "zone", "device", "device_name", "value",
                             "unit", "rule_name", "severity", "time", "count", "building"})


def parse_duration(value: Any) -> float:
    """Seconds from 30, 30.5, '30s', '5m', '2h', '1d', '250ms'."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := DURATION.match(value)):
        seconds = float(m.group(1)) * UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration (e.g. 30, '30s', '5m', '2h', '1d')")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _listify(value: Any) -> Any:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


StrList = Annotated[list[str], BeforeValidator(_listify)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Match(Strict):
    """Which sources a rule watches; every given field must match (lists: any of)."""

    family: StrList = []
    kind: StrList = []
    place_kind: StrList = []
    place: StrList = []
    zone: StrList = []
    device: StrList = []
    tags: dict[str, str] = {}


class Level(Strict):
    severity: Severity
    raise_: str = Field(alias="raise")
    clear: str | None = None  # default: the raise expression no longer holds
    for_: Duration | None = Field(default=None, alias="for")
    clear_for: Duration | None = None


class Selector(Strict):
    """Output endpoints: named ones, groups, kinds, zones (or the incident's zones), and
    the PA zones that cover the incident's zones (`pa: incident`) or all of them."""

    endpoints: StrList = []
    groups: StrList = []
    kinds: list[EndpointKind] = []
    zones: StrList = []  # zone ids, or ['incident'] for the incident's own zones
    pa: Literal["incident", "all"] | None = None

    @model_validator(mode="after")
    def _something(self) -> Selector:
        if not (self.endpoints or self.groups or self.kinds or self.zones or self.pa):
            raise ValueError("a selector needs endpoints, groups, kinds, zones or pa")
        return self


class Notify(Strict):
    to: Selector
    template: str
    all_clear: str | None = None  # announced (PA) when the incident is over
    priority: int | None = Field(default=None, ge=1, le=9)
    repeat: int = Field(default=1, ge=1, le=10)  # PA: times the announcement is repeated
    min_severity: Severity = Severity.INFO  # only while the alert is at least this severe


class Escalation(Strict):
    after: Duration
    to: Id  # a team


CapCategory = Literal["Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env",
                      "Transport", "Infra", "CBRNE", "Other"]
CapResponse = Literal["Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess",
                      "AllClear", "None"]


class IncidentSpec(Strict):
    category: Id
    group_by: Literal["place", "zone", "building", "gateway", "source", "site"] = "place"
    cap_category: CapCategory = "Other"  # CAP 1.2 info/category of its emergency messages
    cap_response: CapResponse = "Monitor"  # CAP 1.2 info/responseType
    instruction: str = ""  # CAP instruction (what people should do), Chinese


class RuleBase(Strict):
    id: Id
    name: str = Field(min_length=1)
    description: str = ""
    severity: Severity = Severity.WARNING
    priority: int | None = Field(default=None, ge=1, le=5)
    category: Literal["alarm", "report"] = "alarm"
    match: Match = Match()
    schedule: StrList = []
    params: dict[str, Any] = {}
    incident: IncidentSpec | None = None
    notify: list[Notify] = []
    escalate: list[Escalation] = []
    text: str = ""  # the alert's own text (template fields allowed)
    enabled: bool = True

    def effective_priority(self, severity: Severity | None = None) -> int:
        if self.priority is not None and severity in (None, self.severity):
            return self.priority
        return DEFAULT_PRIORITY[severity or self.severity]

    def incident_spec(self) -> IncidentSpec:
        return self.incident or IncidentSpec(category=self.id)

    def revision(self) -> str:
        body = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True,
                          ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()[:12]


class ThresholdRule(RuleBase):
    type: Literal["threshold"]
    levels: list[Level] = Field(min_length=1)
    for_: Duration = Field(default=0.0, alias="for")
    clear_for: Duration = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdRule:
        ranks = [_rank(level.severity) for level in self.levels]
        if ranks != sorted(ranks) or len(set(ranks)) != len(ranks):
            raise ValueError("levels must go from the least to the most severe, one per severity")
        return self


class EventRule(RuleBase):
    type: Literal["event"]
    raise_on: StrList = Field(min_length=1)
    clear_on: StrList = []
    clear_when: str | None = None  # a condition on readings that ends it, e.g. state == 'normal'
    # A condition on readings that raises it too, when one of its values changes: a
    # detector whose data report says ALARM is in alarm even if its event was lost.
    raise_when: str | None = None
    where: str | None = None  # a condition on the event's attrs
    auto_clear: Duration | None = None


class AbsenceRule(RuleBase):
    type: Literal["absence"]
    status: Literal["offline"] | None = None  # offline on the status topic, for `after`
    after: Duration | None = None
    after_periods: float | None = Field(default=None, gt=0)  # x the source's report period

    @model_validator(mode="after")
    def _one(self) -> AbsenceRule:
        if (self.after is None) == (self.after_periods is None):
            raise ValueError("give exactly one of 'after' or 'after_periods'")
        if self.status and self.after is None:
            raise ValueError("'status: offline' takes 'after'")
        return self


class CommandRule(RuleBase):
    type: Literal["command"]
    actions: StrList = Field(min_length=1)
    within: Duration
    expect: str
    fail_on_result: StrList = ["refused", "failed", "timed_out", "expired"]


class CorrelationRule(RuleBase):
    type: Literal["correlation"]
    signal: str | None = None  # a condition on each member's readings
    signal_events: StrList = []
    group_by: Literal["place", "zone", "building"] = "place"
    window: Duration
    min_devices: int = Field(default=2, ge=1)
    require_kinds: StrList = []
    clear_for: Duration = 0.0

    @model_validator(mode="after")
    def _signal(self) -> CorrelationRule:
        if not self.signal and not self.signal_events:
            raise ValueError("a correlation needs 'signal' or 'signal_events'")
        return self


class SiteLinkRule(RuleBase):
    """The site's link to the centre down for `after` (rules/kinds/site_link.py); `detect`:
    how long a link that goes quiet may take to be called down (1.5 x the bridge's
    keepalive, and a margin), the longest a no-data alarm waits for word from the site."""

    type: Literal["site_link"]
    after: Duration = 5.0
    detect: Duration = 50.0


Rule = Annotated[ThresholdRule | EventRule | AbsenceRule | CommandRule | CorrelationRule
                 | SiteLinkRule, Field(discriminator="type")]


def _rank(severity: Severity) -> int:
    return -DEFAULT_PRIORITY[severity]


class Schedule(Strict):
    """Days of the week and a daily window (local time; may cross midnight)."""

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS))
    between: tuple[str, str] | None = None
    except_dates: list[str] = []  # YYYY-MM-DD, e.g. public holidays
    only_dates: list[str] = []  # YYYY-MM-DD, e.g. make-up working days

    @field_validator("between")
    @classmethod
    def _times(cls, value: tuple[str, str] | None) -> tuple[str, str] | None:
        if value is not None:
            for item in value:
                try:
                    time.fromisoformat(item)
                except ValueError:
                    raise ValueError(f"{item!r} is not a time like '08:30'") from None
        return value

    def contains(self, local: datetime) -> bool:
        day = local.date().isoformat()
        if day in self.except_dates:
            return False
        in_day = day in self.only_dates or WEEKDAYS[local.weekday()] in self.days
        if self.between is None:
            return in_day
        start, end = (time.fromisoformat(t) for t in self.between)
        now = local.time()
        if start <= end:
            return in_day and start <= now < end
        # Crosses midnight: the early part belongs to the day before.
        if now >= start:
            return in_day
        yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
        return now < end and (yesterday in self.days)


class Template(Strict):
    title: str = Field(min_length=1)
    text: str = Field(min_length=1)
    short: str = ""  # for small screens (the 43" terminals' ticker)
    speech: str = ""  # for the PA's text-to-speech
    colour: str = "red"

    @model_validator(mode="after")
    def _fields(self) -> Template:
        for text in (self.title, self.text, self.short, self.speech):
            check_template(text)
        return self


class Inhibit(Strict):
    """Alertmanager's inhibition with topology: an active `source` alert suppresses the
    `target` alerts whose device relates to the source: panel (target's tag panel is the
    source), controller, gateway, same place or zone."""

    source: StrList = Field(min_length=1)
    target: StrList = Field(min_length=1)
    relation: Literal["panel", "controller", "gateway", "place", "zone", "same_source",
                      "incident"]


class Team(Strict):
    name: str
    webhook: str | None = None  # POSTed the alert as JSON (e.g. a WeCom/DingTalk bridge)


# Where an incident of a category is shown and announced, screens and PA alike: the whole
# campus, the incident's own zones, or the zones named.
Reach = Literal["campus", "incident"] | list[Id]


class RuleFile(Strict):
    version: Literal[1]
    schedules: dict[Id, Schedule] = {}
    templates: dict[Id, Template] = {}
    teams: dict[Id, Team] = {}
    inhibit: list[Inhibit] = []
    reach: dict[Id, Reach] = {}  # incident category -> where its screens and PA are
    rules: list[Rule] = []


def check_template(text: str) -> None:
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            raise ValueError(f"template {text!r}: unknown field {{{name}}} "
                             f"(known: {', '.join(sorted(TEMPLATE_FIELDS))})")
        if conversion:
            raise ValueError(f"template {text!r}: conversions like !r are not allowed")
        if spec and "{" in spec:
            raise ValueError(f"template {text!r}: nested fields are not allowed")


def render(text: str, values: dict[str, Any]) -> str:
    """Fill a checked template; a format that does not fit the value falls back to str().

    A name that already ends with the word the template puts after it is not doubled:
    "{device_name}水位" for the device 西门水位 reads 西门水位…, not 西门水位水位."""
    out = []
    name_before = ""  # the name just filled in, when it is text
    for literal, name, spec, _ in string.Formatter().parse(text):
        out.append(literal[_overlap(name_before, literal):])
        name_before = ""
        if name is None:
            continue
        value = values.get(name, "")
        try:
            out.append(format(value, spec or ""))
        except (ValueError, TypeError):
            out.append(str(value))
        if isinstance(value, str):
            name_before = out[-1]
    return "".join(out)


def _overlap(name: str, literal: str) -> int:
    """How many characters (two or more) at the start of `literal` `name` ends with."""
    for n in range(min(len(name), len(literal)), 1, -1):
        if name.endswith(literal[:n]):
            return n
    return 0


# --- the rule set: several files merged and checked against the site -------------------

@dataclass
class CompiledRule:
    rule: Any  # one of the Rule types
    file: Path | None  # None: a built-in rule
    index: int
    sources: list[str]  # ids of the sources it watches
    expressions: dict[str, Expression] = field(default_factory=dict)
    revision: str = ""

    @cached_property
    def id(self) -> str:
        return str(self.rule.id)


@dataclass
class RuleSet:
    rules: dict[str, CompiledRule]
    schedules: dict[str, Schedule]
    templates: dict[str, Template]
    teams: dict[str, Team]
    inhibit: list[Inhibit]
    files: list[Path]
    digest: str  # changes when any file changes
    reach: dict[str, Any] = field(default_factory=dict)  # category -> Reach

    def for_source(self, source_id: str) -> list[CompiledRule]:
        return [c for c in self.rules.values() if source_id in c.sources]


def _where(path: Path, data: Any, index: int) -> str:
    rule_id = None
    items = data.get("rules") if isinstance(data, dict) else None
    if isinstance(items, list) and 0 <= index < len(items) and isinstance(items[index], dict):
        rule_id = items[index].get("id")
    return f"{path}: rule {rule_id!r} (rules[{index}])" if rule_id else f"{path}: rules[{index}]"


def _describe(path: Path, data: Any, error: pydantic.ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = list(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            where = _where(path, data, loc[1])
            rest = loc[2:]
            if rest and rest[0] in {"threshold", "event", "absence", "command", "correlation",
                                    "site_link"}:
                rest = rest[1:]  # the discriminator's tag, not a field
            rest = [("raise" if p == "raise_" else "for" if p == "for_" else p) for p in rest]
            fld = ".".join(_part(p) for p in rest)
            lines.append(f"{where}: field '{fld}': {_line(msg)}" if fld
                         else f"{where}: {_line(msg)}")
        else:
            fld = ".".join(_part(p) for p in loc)
            lines.append(f"{path}: field '{fld}': {_line(msg)}" if fld
                         else f"{path}: {_line(msg)}")
    return "\n".join(lines)


def _part(part: Any) -> str:
    """A field path element as written, or quoted when it holds odd characters (a key
    with a line break must not break the one-line-per-error message)."""
    text = str(part)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def _line(text: str) -> str:
    """One error, one line: YAML parser messages span several."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def read_rule_file(path: Path) -> tuple[RuleFile, Any]:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a rule file must be a mapping with 'version' and 'rules'")
    try:
        return RuleFile.model_validate(data), data
    except pydantic.ValidationError as exc:
        raise ConfigError(_describe(path, data, exc)) from None


def rule_files(directory: Path) -> list[Path]:
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


_Entry = TypeVar("_Entry")


def _merge(path: Path, kind: str, items: Mapping[str, _Entry], into: dict[str, _Entry],
           owners: dict[tuple[str, str], Path], errors: list[str]) -> None:
    """Add one file's named entries of a kind; a name defined twice is an error."""
    for name, entry in items.items():
        if name in into:
            errors.append(f"{path}: {kind} {name!r} is already defined in "
                          f"{owners[(kind, name)]}")
            continue
        into[name] = entry
        owners[(kind, name)] = path


def load_rules(paths: Iterable[Path], topology: Topology, endpoints: EndpointConfig) -> RuleSet:
    """Read, merge and check rule files; raise ConfigError naming file, rule and field."""
    paths = list(paths)
    if not paths:
        raise ConfigError("no rule files given")
    errors: list[str] = []
    files: list[tuple[Path, RuleFile, Any]] = []
    digest = hashlib.sha256()
    for path in paths:
        try:
            parsed, raw = read_rule_file(path)
        except ConfigError as exc:
            errors.append(_line(str(exc)))
            continue
        digest.update(path.read_bytes())
        files.append((path, parsed, raw))
    if errors:
        raise ConfigError("\n".join(errors))
    schedules: dict[str, Schedule] = {}
    templates: dict[str, Template] = {}
    teams: dict[str, Team] = {}
    owners: dict[tuple[str, str], Path] = {}
    inhibit: list[Inhibit] = []
    reach: dict[str, Any] = {}
    zones = set(topology.zones)
    for path, parsed, _ in files:
        for category, area in parsed.reach.items():
            if isinstance(area, list) and not set(area) <= zones:
                errors.append(f"{path}: reach {category!r}: no zone "
                              f"{sorted(set(area) - zones)[0]!r}")
        _merge(path, "schedule", parsed.schedules, schedules, owners, errors)
        _merge(path, "template", parsed.templates, templates, owners, errors)
        _merge(path, "team", parsed.teams, teams, owners, errors)
        _merge(path, "reach", parsed.reach, reach, owners, errors)
        inhibit += parsed.inhibit
    compiled: dict[str, CompiledRule] = {}
    for path, parsed, raw in files:
        for index, rule in enumerate(parsed.rules):
            where = _where(path, raw, index)
            if rule.id in compiled:
                errors.append(f"{where}: rule id {rule.id!r} is already used in "
                              f"{compiled[rule.id].file}")
                continue
            try:
                item = _compile(rule, path, index, topology, endpoints, schedules, templates,
                                teams)
            except _FieldError as exc:
                errors.append(f"{where}: field '{exc.field}': {exc.message}")
                continue
            if rule.enabled:
                compiled[rule.id] = item
    known = set(compiled) | {r.id for _, p, _ in files for r in p.rules}
    for path, parsed, _ in files:
        for n, inh in enumerate(parsed.inhibit):
            for fld in ("source", "target"):
                for rid in getattr(inh, fld):
                    if rid not in known:
                        errors.append(f"{path}: inhibit[{n}]: field '{fld}': no rule {rid!r}")
    if errors:
        raise ConfigError("\n".join(errors))
    return RuleSet(compiled, schedules, templates, teams, inhibit, paths, digest.hexdigest(),
                   reach)


class _FieldError(Exception):
    def __init__(self, fld: str, message: str) -> None:
        super().__init__(f"{fld}: {message}")
        self.field = fld
        self.message = message


def _compile(rule: Any, path: Path, index: int, topology: Topology, endpoints: EndpointConfig,
             schedules: dict[str, Schedule], templates: dict[str, Template],
             teams: dict[str, Team]) -> CompiledRule:
    # A site link's sources are the site's bridges, known when their state comes.
    sources = topology.select(rule.match) if rule.type != "site_link" else []
    if not sources and rule.type != "site_link":
        raise _FieldError("match", f"matches no device of the site "
                                   f"({rule.match.model_dump(exclude_defaults=True)})")
    value_names: set[str] = set()
    for sid in sources:
        value_names |= topology.sources[sid].value_names
    item = CompiledRule(rule=rule, file=path, index=index, sources=sources,
                        revision=rule.revision())

    def expr(fld: str, source: str | None, names: set[str] | None = None) -> None:
        if source is None:
            return
        try:
            parsed = Expression(source)
            parsed.check_names(value_names if names is None else names)
            for name in parsed.schedules():
                if name not in schedules:
                    raise ExpressionError(f"in_schedule({name!r}): no such schedule")
        except ExpressionError as exc:
            raise _FieldError(fld, str(exc)) from None
        item.expressions[fld] = parsed

    if rule.type == "threshold":
        for n, level in enumerate(rule.levels):
            expr(f"levels.{n}.raise", level.raise_)
            expr(f"levels.{n}.clear", level.clear)
    elif rule.type == "event":
        expr("clear_when", rule.clear_when)
        expr("raise_when", rule.raise_when)
        attrs = {"attrs", "name", "text"}
        expr("where", rule.where, attrs)
    elif rule.type == "command":
        expr("expect", rule.expect)
    elif rule.type == "correlation":
        expr("signal", rule.signal)
    for n, name in enumerate(rule.schedule):
        if name not in schedules:
            raise _FieldError(f"schedule.{n}", f"no schedule {name!r} "
                                               f"(defined: {', '.join(sorted(schedules))})")
    for n, notify in enumerate(rule.notify):
        for fld in ("template", "all_clear"):
            name = getattr(notify, fld)
            if name is not None and name not in templates:
                raise _FieldError(f"notify.{n}.{fld}", f"no template {name!r} "
                                  f"(defined: {', '.join(sorted(templates))})")
        try:
            endpoints.check_selector(notify.to)
        except ValueError as exc:
            raise _FieldError(f"notify.{n}.to", str(exc)) from None
    for n, esc in enumerate(rule.escalate):
        if esc.to not in teams:
            raise _FieldError(f"escalate.{n}.to", f"no team {esc.to!r} "
                                                  f"(defined: {', '.join(sorted(teams))})")
    try:
        check_template(rule.text)
    except ValueError as exc:
        raise _FieldError("text", str(exc)) from None
    return item
