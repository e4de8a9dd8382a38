"""What every rule kind shares: the Signal it emits, the Instance it keeps per (rule,
source), the evaluation context (what is known of each source, the instances, the clock's
local time and schedules), and the small interface each kind implements.

A Signal says that one rule's condition for one source is now active (with a severity)
or no longer active. Instances are plain data so the store can keep them across restarts.
All time comes from the `now` the caller passes in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from facility.messages import Event, Scalar, Severity
from facility.topology import Topology
from rules.clock import NS
from rules.config import CompiledRule, RuleSet
from rules.expr import Unknown
from rules.scope import Plan, Scope, SourceData, Watch

LATE = 30 * NS  # an input older than this when it arrives is late (marked on its alert)


@dataclass
class Signal:
    rule: str
    source: str
    active: bool
    ts: int
    severity: Severity | None = None
    value: Scalar | None = None
    unit: str = ""
    text: str = ""  # what the source said (an event's own text, a command's result)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Instance:
    """The state of one rule for one source (or one group, for correlations)."""

    rule: str
    source: str
    on: list[bool] = field(default_factory=list)
    pending: list[int | None] = field(default_factory=list)  # raise condition true since
    clearing: list[int | None] = field(default_factory=list)  # clear condition true since
    level: int = -1  # the highest level on; -1: not active
    since: int = 0  # when `level` last changed
    value: Scalar | None = None
    deadline: int | None = None  # command: expected outcome due by
    command: str = ""
    members: dict[str, int] = field(default_factory=dict)  # correlation: last signal time
    current: list[str] = field(default_factory=list)  # correlation: signalling right now
    restored_gap: int = 0  # ns the service was down while a timer ran (accounted, not reset)
    refreshed: int = 0  # when its value was last sent on while the level held

    @property
    def active(self) -> bool:
        return self.level >= 0

    @property
    def timing(self) -> bool:
        return any(p is not None for p in self.pending) \
            or any(c is not None for c in self.clearing)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        return cls(**data)


class Context:
    """The evaluation state every kind reads and writes: sources' data, instances, the
    instances to store, the local time and schedules, and how old the current input is."""

    def __init__(self, rules: RuleSet, topology: Topology, started_at: int) -> None:
        self.rules = rules
        self.topology = topology
        self.tz = ZoneInfo(topology.timezone)
        self.started_at = started_at  # first start of the site's engine (no-data of the unseen)
        self.data: dict[str, SourceData] = {}
        self.plans: dict[str, Plan] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        self.by_rule: dict[str, dict[str, Instance]] = {}
        # The same by source: a reading of a source without any (most of them) skips the
        # rules that only end a state (no-data, command, an active threshold's value).
        self.by_source: dict[str, dict[str, Instance]] = {}
        self.dirty: set[tuple[str, str]] = set()  # instances to store
        self.timing: set[tuple[str, str]] = set()  # threshold instances with a running timer
        self.recheck: set[tuple[str, str]] = set()  # to evaluate at the next tick (reload)
        self.lag = 0  # how old the input being evaluated is (0 on a tick)
        self.drill = ""  # the drill (演练) the input being evaluated says it belongs to
        self._schedules: dict[tuple[tuple[str, ...], int], bool] = {}
        self._local = (0, datetime.fromtimestamp(0, self.tz))
        # What `tags` reads in an expression: the source's tags, and its id as 'device'
        # (per-device constants: params['baseline_kw'][tags['device']]).
        self.tags_of = {s.id: {"device": s.id, **s.tags} for s in topology.sources.values()}
        self.scope = Scope(self.local, self.in_schedules)

    # --- instances ------------------------------------------------------------------

    def instance(self, compiled: CompiledRule, source: str) -> Instance:
        key = (compiled.id, source)
        inst = self.instances.get(key)
        n = len(compiled.rule.levels) if compiled.rule.type == "threshold" else 1
        if inst is None or len(inst.on) != n:
            inst = Instance(rule=compiled.id, source=source, on=[False] * n,
                            pending=[None] * n, clearing=[None] * n)
            self.restore_instance(inst)
        return inst

    def restore_instance(self, inst: Instance) -> None:
        key = (inst.rule, inst.source)
        self.instances[key] = inst
        self.by_rule.setdefault(inst.rule, {})[inst.source] = inst
        self.by_source.setdefault(inst.source, {})[inst.rule] = inst
        if inst.timing:
            self.timing.add(key)

    def source(self, source: str) -> SourceData:
        data = self.data.get(source)
        if data is None:
            data = self.data[source] = SourceData()
            data.fit(self.plans.get(source, Plan()))
        return data

    def reported(self, source: str) -> bool:
        data = self.data.get(source)
        return data is not None and data.last_reading is not None

    def forget(self, key: tuple[str, str]) -> None:
        self.instances.pop(key, None)
        self.by_rule.get(key[0], {}).pop(key[1], None)
        held = self.by_source.get(key[1])
        if held is not None:
            held.pop(key[0], None)
            if not held:
                del self.by_source[key[1]]
        self.timing.discard(key)
        self.recheck.discard(key)

    # --- time and scope -------------------------------------------------------------

    def local(self, now: int) -> datetime:
        if self._local[0] != now:
            self._local = (now, datetime.fromtimestamp(now / NS, self.tz))
        return self._local[1]

    def in_schedules(self, names: list[str], now: int) -> bool:
        if not names:
            return True
        # Schedules turn at whole seconds at the finest: one answer per second and set.
        key = (tuple(names), now // NS)
        found = self._schedules.get(key)
        if found is None:
            local = self.local(now)
            found = any(self.rules.schedules[n].contains(local) for n in names)
            if len(self._schedules) > 1000:
                self._schedules.clear()
            self._schedules[key] = found
        return found

    def truth(self, compiled: CompiledRule, fld: str, source: str, now: int) -> bool | None:
        expression = compiled.expressions.get(fld)
        data = self.data.get(source)
        if expression is None or data is None:
            return None
        scope = self.scope.bind(data, self.tags_of.get(source, {}), compiled.rule.params, now)
        try:
            return expression.test(scope)
        except Unknown:
            return None

    def value(self, compiled: CompiledRule, fld: str, source: str) -> tuple[Scalar | None, str]:
        expression = compiled.expressions.get(fld)
        data = self.data.get(source)
        if expression is None or data is None:
            return None, ""
        for name in sorted(expression.names) + sorted(expression.sampled):
            if name in data.values:
                return data.values[name], data.units.get(name, "")
        return None, ""

    # --- the one way a kind says its condition changed ------------------------------

    def set_level(self, inst: Instance, level: int, now: int, severity: Severity | None, *,
                  value: Scalar | None = None, unit: str = "", text: str = "",
                  force: bool = False, detail: dict[str, Any] | None = None) -> Signal:
        changed = level != inst.level
        inst.level = level
        for n in range(len(inst.on)):
            inst.on[n] = n <= level
        if changed or force:
            inst.since = now
        inst.value = value if value is not None else inst.value
        self.dirty.add((inst.rule, inst.source))
        detail = dict(detail or {})
        if self.lag >= LATE and level >= 0:
            detail["late_s"] = round(self.lag / NS)
        if self.drill and level >= 0:
            detail["drill"] = self.drill
        if inst.restored_gap and level >= 0:
            detail["timer_spanned_restart_s"] = round(inst.restored_gap / NS, 1)
            inst.restored_gap = 0
        return Signal(rule=inst.rule, source=inst.source, active=level >= 0, ts=now,
                      severity=severity, value=value, unit=unit, text=text, detail=detail)

    def off_schedule(self, compiled: CompiledRule, now: int) -> list[Signal]:
        """Outside its schedule a rule does not hold: what is active clears."""
        rule = compiled.rule
        if not rule.schedule or self.in_schedules(rule.schedule, now):
            return []
        return [self.set_level(inst, -1, now, None, text="不在监视时段内")
                for inst in list(self.by_rule.get(compiled.id, {}).values()) if inst.active]


class Kind:
    """One rule type behind one small interface. The evaluator routes to a kind only what
    can change its rules (rules/scope.py's Plan): a reading that a rule of this kind reads,
    an event of a watched source, and a tick for the rules the clock alone can move. Each
    method returns the signals of the conditions that changed."""

    type = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def load(self, rules: RuleSet, old: RuleSet | None) -> None:
        """A new rule set (`old`: the one it replaces, None at start)."""

    def on_reading(self, watch: Watch, source: str, now: int,
                   changed: set[str]) -> list[Signal]:
        return []

    def on_event(self, compiled: CompiledRule, event: Event, now: int) -> list[Signal]:
        return []

    def tick(self, compiled: CompiledRule, now: int) -> list[Signal]:
        return []
