"""Stage 1, evaluate: readings, events, statuses and commands in; signals out.

A Signal says that one rule's condition for one source is now active (with a severity)
or no longer active. Each (rule, source) pair has an Instance holding its timers: the
raise and clear timers of each threshold level, the deadline of a command, the members of
a correlation. Instances are plain data so the store can keep them across restarts.
All time comes from the `now` the caller passes in.

What it costs: a reading evaluates only the rules of its device that read a value the
reading changed (rules/scope.py's Plan), with compiled expressions and incremental
windows. A tick evaluates only what the clock alone can change: running `for`/`clear_for`
timers, rules that read the time or whose schedule just turned, command deadlines,
correlation windows, auto-clears, and absence rules when one of them is due. Doing
everything on every reading and every tick, as the first version did, cost 2 ms a reading
and 200 ms a tick with 1,000 rules.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from facility.labels import COMMAND_ACTION, COMMAND_STATUS, label
from facility.messages import (
    Availability,
    Command,
    CommandResult,
    DeviceStatus,
    Event,
    Quality,
    Reading,
    Scalar,
    Severity,
)
from facility.topology import Topology
from rules.clock import NS
from rules.config import CompiledRule, RuleSet
from rules.expr import Expression, Unknown
from rules.scope import (
    COMMAND,
    CORRELATION,
    EVENT,
    NO_DATA,
    Plan,
    Scope,
    SourceData,
    plans,
)

log = logging.getLogger(__name__)

_MISSING = object()
RESTART_HOLD = 60.0  # s: longest wait for the backlog before absence rules judge again
VALUE_REFRESH = 30 * NS  # an active alert's shown value follows its readings this often
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


@dataclass(frozen=True)
class Step:
    """One level of a threshold rule, ready to evaluate."""

    raise_: Expression
    clear: Expression | None
    raise_for: int  # ns
    clear_for: int  # ns


def ladder(compiled: CompiledRule) -> list[Step]:
    rule = compiled.rule
    steps = []
    for n, level in enumerate(rule.levels):
        raise_for = level.for_ if level.for_ is not None else rule.for_
        clear_for = level.clear_for if level.clear_for is not None else rule.clear_for
        steps.append(Step(compiled.expressions[f"levels.{n}.raise"],
                          compiled.expressions.get(f"levels.{n}.clear"),
                          round(raise_for * NS), round(clear_for * NS)))
    return steps


def _test(expression: Expression, scope: Scope) -> bool | None:
    try:
        return expression.test(scope)
    except Unknown:
        return None


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


class Evaluator:
    def __init__(self, rules: RuleSet, topology: Topology, started_at: int) -> None:
        self.topology = topology
        self.tz = ZoneInfo(topology.timezone)
        self.started_at = started_at  # first start of the site's engine (no-data of the unseen)
        self.data: dict[str, SourceData] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        self.by_rule: dict[str, dict[str, Instance]] = {}
        self.dirty: set[tuple[str, str]] = set()  # instances to store
        self.timing: set[tuple[str, str]] = set()  # threshold instances with a running timer
        self.recheck: set[tuple[str, str]] = set()  # to evaluate at the next tick (reload)
        self.series_dirty: set[str] = set()  # sources whose windows took samples
        self.absence_due: dict[str, int] = {}  # absence rule -> earliest time one may fire
        self.absence_from = 0  # absence rules hold until then (backlog after a restart)
        self.history = 0  # inputs older than their source's newest: not applied
        self.lag = 0  # how old the input being evaluated is (0 on a tick)
        self._schedule_state: dict[str, bool] = {}
        self._schedules: dict[tuple[tuple[str, ...], int], bool] = {}
        self._local = (0, datetime.fromtimestamp(0, self.tz))
        self.units_of: dict[str, list[str]] = {}  # controller -> its units, in order
        for source in topology.sources.values():
            controller = source.tags.get("controller")
            if controller:
                self.units_of.setdefault(controller, []).append(source.id)
        self.tags_of = {s.id: s.tags for s in topology.sources.values()}
        self.scope = Scope(self.local, self.in_schedules)
        self.set_rules(rules)
        # Every source's state is made now, not on its first reading: it lives as long as
        # the engine, and made at start it is frozen with the rest (rules/service.py).
        for source_id in topology.sources:
            self._source(source_id)

    def set_rules(self, rules: RuleSet) -> None:
        old = getattr(self, "rules", None)
        self.rules = rules
        self.plans: dict[str, Plan] = plans(rules.rules)
        self.sources_of = {rid: frozenset(c.sources) for rid, c in rules.rules.items()}
        self.ladders = {rid: ladder(c) for rid, c in rules.rules.items()
                        if c.rule.type == "threshold"}
        self.clocked = [c for c in rules.rules.values() if c.rule.type == "threshold"
                        and (c.rule.schedule or any(e.uses_time
                                                    for e in c.expressions.values()))]
        self.absence = [c for c in rules.rules.values() if c.rule.type == "absence"]
        self.timed = [c for c in rules.rules.values() if c.rule.type != "threshold"
                      and (c.rule.type != "absence" or c.rule.schedule)]
        self.absence_due = {}
        self._schedules = {}
        for key in [k for k in self.instances if k[0] not in rules.rules]:
            self._forget(key)
        for source, data in self.data.items():
            data.fit(self.plans.get(source, Plan()))
        if old is not None:  # new or changed rules look at what is known now, at the next tick
            for compiled in rules.rules.values():
                before = old.rules.get(compiled.id)
                if compiled.rule.type == "threshold" and \
                        (before is None or before.revision != compiled.revision):
                    self.recheck.update((compiled.id, s) for s in compiled.sources
                                        if self._reported(s))

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
        if inst.timing:
            self.timing.add(key)

    def _source(self, source: str) -> SourceData:
        data = self.data.get(source)
        if data is None:
            data = self.data[source] = SourceData()
            data.fit(self.plans.get(source, Plan()))
        return data

    def _reported(self, source: str) -> bool:
        data = self.data.get(source)
        return data is not None and data.last_reading is not None

    def _forget(self, key: tuple[str, str]) -> None:
        self.instances.pop(key, None)
        self.by_rule.get(key[0], {}).pop(key[1], None)
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

    def _truth(self, compiled: CompiledRule, fld: str, source: str, now: int) -> bool | None:
        expression = compiled.expressions.get(fld)
        data = self.data.get(source)
        if expression is None or data is None:
            return None
        scope = self.scope.bind(data, self.tags_of.get(source, {}), compiled.rule.params, now)
        try:
            return expression.test(scope)
        except Unknown:
            return None

    def _value(self, compiled: CompiledRule, fld: str, source: str) -> tuple[Scalar | None, str]:
        expression = compiled.expressions.get(fld)
        data = self.data.get(source)
        if expression is None or data is None:
            return None, ""
        for name in sorted(expression.names) + sorted(expression.sampled):
            if name in data.values:
                return data.values[name], data.units.get(name, "")
        return None, ""

    # --- inputs ---------------------------------------------------------------------

    def on_reading(self, reading: Reading, now: int) -> list[Signal]:
        source = reading.device
        plan = self.plans.get(source)
        if plan is None:
            if source not in self.topology.sources:
                return []  # not a source of this site: nothing to judge, nothing kept
            plan = Plan()
        data = self.data.get(source) or self._source(source)
        self.lag = now - reading.ts
        # A device clock ahead of ours cannot order what comes after it (a gateway stamps
        # with its receive time once the skew is too large): such a time counts as now.
        key = reading.ts if reading.ts <= now else now
        if key < data.input_ts:
            self.history += 1  # older than what the source already said: history, not news
            return []
        if reading.quality is Quality.COMM_FAILURE and not reading.values:
            return []  # the gateway says it has no data: the no-data timers run on
        data.input_ts = key
        data.last_reading = now
        values = data.values
        incoming = reading.values
        changed = {name for name in plan.reads.intersection(incoming)
                   if values.get(name, _MISSING) != incoming[name]}
        values.update(incoming)
        if reading.units:
            data.units.update(reading.units)
        for name in plan.aged:
            if name in incoming:
                data.seen_at[name] = now
        for name, series in data.series.items():
            value = incoming.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) \
                    and math.isfinite(value) and series.add(reading.ts, float(value)):
                changed.add(name)
                self.series_dirty.add(source)
        out: list[Signal] = []
        if plan.thresholds and changed:
            self.scope.bind(data, self.tags_of.get(source, {}), {}, now)
            for compiled, names in plan.thresholds:
                if not names.isdisjoint(changed):
                    signals = self._threshold(compiled, source, now, bound=True)
                    if signals:
                        out += signals
        if plan.thresholds:
            for compiled, _ in plan.thresholds:
                inst = self.instances.get((compiled.id, source))
                if inst is not None and inst.active and now - inst.refreshed >= VALUE_REFRESH:
                    out += self._refresh(compiled, inst, source, now)
        for watch in plan.on_reading:
            kind = watch.kind
            compiled = watch.compiled
            if kind == EVENT:
                out += self._event_on_reading(compiled, source, now, watch.reads, changed)
            elif kind == NO_DATA:
                inst = self.by_rule.get(compiled.id, {}).get(source)
                if inst is not None and inst.active:
                    out.append(self._set(inst, -1, now, None))
            elif kind == COMMAND:
                out += self._command_check(compiled, source, now)
            elif kind == CORRELATION and compiled.rule.signal:
                out += self._correlate(compiled, source, now,
                                       self._truth(compiled, "signal", source, now))
        return out

    def _event_on_reading(self, compiled: CompiledRule, source: str, now: int,
                          reads: frozenset[str], changed: set[str]) -> list[Signal]:
        rule = compiled.rule
        inst = self.by_rule.get(compiled.id, {}).get(source)
        if inst is not None and inst.active:
            # clear_when is judged on every reading while active: the device says it is over
            if rule.clear_when and self._truth(compiled, "clear_when", source, now):
                return [self._set(inst, -1, now, None)]
            return []
        if rule.raise_when and not reads.isdisjoint(changed) \
                and self.in_schedules(rule.schedule, now) \
                and self._truth(compiled, "raise_when", source, now):
            value, unit = self._value(compiled, "raise_when", source)
            return [self._set(self.instance(compiled, source), 0, now, rule.severity,
                              value=value, unit=unit, force=True, detail={"reading": True})]
        return []

    def on_event(self, event: Event, now: int) -> list[Signal]:
        out: list[Signal] = []
        self.lag = now - event.ts
        if event.device in self.topology.sources:
            data = self.data.get(event.device) or self._source(event.device)
            key = event.ts if event.ts <= now else now
            if key < data.input_ts:
                self.history += 1
                return out
            data.input_ts = key
        for watch in self.plans.get(event.device, Plan()).watches:
            compiled = watch.compiled
            rule = compiled.rule
            if rule.type == "event":
                inst = self.instance(compiled, event.device)
                if event.name in rule.raise_on and self.in_schedules(rule.schedule, now):
                    where = compiled.expressions.get("where")
                    if where is not None:
                        try:
                            ok = where.truth({"attrs": dict(event.attrs), "name": event.name,
                                              "text": event.text}, {})
                        except Unknown:
                            ok = False
                        if not ok:
                            continue
                    out.append(self._set(inst, 0, now, rule.severity, value=event.name,
                                         text=event.text, force=True,
                                         detail={"event": event.id}))
                elif event.name in rule.clear_on and inst.active:
                    out.append(self._set(inst, -1, now, None, value=event.name,
                                         text=event.text))
            elif rule.type == "correlation" and event.name in rule.signal_events:
                out += self._correlate(compiled, event.device, now, True, momentary=True)
        return out

    def on_status(self, status: DeviceStatus, now: int) -> list[Signal]:
        self.lag = 0  # not a device's input: never late
        if status.device not in self.topology.sources:
            return []
        data = self._source(status.device)
        if data.status is not status.state:
            data.status = status.state
            # A status's own time is when its state began, unless it is older than the
            # state it ends: a last will carries the time its connection was made, and the
            # state changed when the broker noticed, i.e. now (then the hold applies).
            began = status.ts
            if began > now or began < now - 86400 * NS or began <= data.status_since:
                began = now
            data.status_since = began
        out: list[Signal] = []
        for watch in self.plans.get(status.device, Plan()).watches:
            compiled = watch.compiled
            if compiled.rule.type != "absence" or not compiled.rule.status:
                continue
            if status.state is Availability.ONLINE:
                inst = self.by_rule.get(compiled.id, {}).get(status.device)
                if inst is not None and inst.active:
                    out.append(self._set(inst, -1, now, None, text=status.reason))
            else:  # it may fire earlier than the rule's next check
                due = data.status_since + round(compiled.rule.after * NS)
                self.absence_due[compiled.id] = min(self.absence_due.get(compiled.id, due), due)
        return out

    def on_command(self, command: Command, now: int) -> list[Signal]:
        self.lag = 0  # not a device's input: never late
        out: list[Signal] = []
        targets = self._command_targets(command)
        for compiled in self.rules.rules.values():
            rule = compiled.rule
            if rule.type != "command":
                continue
            sources = self.sources_of[compiled.id]
            for source in targets:
                if source not in sources:
                    continue
                inst = self.instance(compiled, source)
                self.dirty.add((compiled.id, source))
                if command.action in rule.actions:
                    inst.deadline = now + round(rule.within * NS)
                    inst.command = command.id
                else:  # another order supersedes the expectation
                    inst.deadline = None
                    inst.command = command.id
                    if inst.active:
                        action = label(COMMAND_ACTION, command.action)
                        out.append(self._set(inst, -1, now, None, text=f"被{action}指令取代"))
        return out

    def on_command_result(self, result: CommandResult, now: int) -> list[Signal]:
        self.lag = 0  # not a device's input: never late
        out: list[Signal] = []
        for compiled in self.rules.rules.values():
            rule = compiled.rule
            if rule.type != "command" or result.status.value not in rule.fail_on_result:
                continue
            for source, inst in list(self.by_rule.get(compiled.id, {}).items()):
                if inst.command == result.id and inst.deadline is not None:
                    inst.deadline = None
                    value, unit = self._value(compiled, "expect", source)
                    # What the operator reads: the status in Chinese, the gateway's detail.
                    said = f"{label(COMMAND_STATUS, result.status)}：{result.detail}".rstrip("：")
                    out.append(self._set(inst, 0, now, rule.severity, value=value, unit=unit,
                                         text=said, detail={"command": result.id}))
        return out

    def _command_targets(self, command: Command) -> list[str]:
        units = self.units_of.get(command.device, [])
        if command.device in self.topology.sources and not units:
            return [command.device]
        number = command.params.get("unit", command.params.get("bollard"))
        if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= len(units):
            return [units[number - 1]]
        return list(units)

    # --- rule kinds -----------------------------------------------------------------

    def _set(self, inst: Instance, level: int, now: int, severity: Severity | None, *,
             value: Scalar | None = None, unit: str = "", text: str = "", force: bool = False,
             detail: dict[str, Any] | None = None) -> Signal:
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
        if inst.restored_gap and level >= 0:
            detail["timer_spanned_restart_s"] = round(inst.restored_gap / NS, 1)
            inst.restored_gap = 0
        return Signal(rule=inst.rule, source=inst.source, active=level >= 0, ts=now,
                      severity=severity, value=value, unit=unit, text=text, detail=detail)

    def _threshold(self, compiled: CompiledRule, source: str, now: int,
                   bound: bool = False) -> list[Signal]:
        """`bound`: the scope is already bound to this source and time (on_reading)."""
        rule = compiled.rule
        ladder = self.ladders[compiled.id]
        key = (compiled.id, source)
        inst = self.instances.get(key)
        in_schedule = self.in_schedules(rule.schedule, now) if rule.schedule else True
        scope = self.scope
        if bound:
            scope.params = rule.params
        else:
            scope.bind(self.data[source], self.tags_of.get(source, {}), rule.params, now)
        if inst is None or len(inst.on) != len(ladder):
            # A rule that has never held for this source has no state: none is made (and
            # kept, stored, walked by the garbage collector) until one of its levels holds.
            if not in_schedule:
                return []
            for step in ladder:
                if _test(step.raise_, scope):
                    break
            else:
                return []
            inst = self.instance(compiled, source)
        on, pending, clearing = inst.on, inst.pending, inst.clearing
        if len(ladder) == 1 and in_schedule and not on[0] and pending[0] is None:
            # The common case, an idle one-level rule whose condition does not hold: no
            # timer to start, nothing to store, no signal.
            try:
                if not ladder[0].raise_.test(scope):
                    return []
            except Unknown:
                return []
        before = inst.level
        touched = False
        for n, step in enumerate(ladder):
            if not in_schedule:
                if on[n] or pending[n] is not None:
                    on[n], pending[n], clearing[n] = False, None, None
                    touched = True
                continue
            if not on[n]:
                raised = _test(step.raise_, scope)
                if raised is None:
                    continue
                if raised:
                    started = pending[n]
                    if started is None:
                        started = pending[n] = now
                        touched = True
                    if now - started >= step.raise_for:
                        on[n], pending[n], clearing[n] = True, None, None
                        touched = True
                elif pending[n] is not None:
                    pending[n] = None
                    touched = True
            else:
                if step.clear is not None:
                    cleared = _test(step.clear, scope)
                else:
                    raised = _test(step.raise_, scope)
                    cleared = None if raised is None else not raised
                if cleared is None:
                    continue
                if cleared:
                    started = clearing[n]
                    if started is None:
                        started = clearing[n] = now
                        touched = True
                    if now - started >= step.clear_for:
                        on[n], clearing[n] = False, None
                        touched = True
                elif clearing[n] is not None:
                    clearing[n] = None
                    touched = True
        # A level is on only while every level below it is: the severity steps down through
        # the ladder and the alert ends when the lowest level clears.
        level = -1
        for n in range(len(ladder)):
            if on[n]:
                level = n
            else:
                for m in range(n + 1, len(ladder)):
                    on[m] = False
                break
        if touched:
            self.dirty.add(key)
            if inst.timing:
                self.timing.add(key)
            else:
                self.timing.discard(key)
        if level == before:
            return []
        inst.refreshed = now
        value, unit = self._value(compiled, f"levels.{max(level, 0)}.raise", source)
        severity = rule.levels[level].severity if level >= 0 else None
        return [self._set(inst, level, now, severity, value=value, unit=unit)]

    def _refresh(self, compiled: CompiledRule, inst: Instance, source: str,
                 now: int) -> list[Signal]:
        """While a level holds, the value shown on screens follows the readings, at most
        every VALUE_REFRESH (a screen is not rewritten every second)."""
        value, unit = self._value(compiled, f"levels.{inst.level}.raise", source)
        if value is None or value == inst.value:
            return []
        inst.value, inst.refreshed = value, now
        self.dirty.add((inst.rule, inst.source))
        return [Signal(rule=inst.rule, source=source, active=True, ts=now,
                       severity=compiled.rule.levels[inst.level].severity, value=value,
                       unit=unit, detail={"refresh": True})]

    def _command_check(self, compiled: CompiledRule, source: str, now: int) -> list[Signal]:
        inst = self.by_rule.get(compiled.id, {}).get(source)
        if inst is None or (inst.deadline is None and not inst.active):
            return []
        if self._truth(compiled, "expect", source, now):
            inst.deadline = None
            self.dirty.add((compiled.id, source))
            if inst.active:
                value, unit = self._value(compiled, "expect", source)
                return [self._set(inst, -1, now, None, value=value, unit=unit)]
        return []

    def _correlate(self, compiled: CompiledRule, member: str, now: int, signal: bool | None,
                   momentary: bool = False) -> list[Signal]:
        rule = compiled.rule
        group = self.topology.group_key(member, rule.group_by)
        if signal is None:
            return []
        inst = self.instance(compiled, group)
        if signal:
            inst.members[member] = now
            if not momentary and member not in inst.current:
                inst.current.append(member)
        elif member in inst.current:
            inst.current.remove(member)
        elif not inst.members and not inst.active:
            return []  # a quiet member of a quiet group: nothing changed, nothing to store
        self.dirty.add((compiled.id, group))
        return self._correlation_state(compiled, inst, now)

    def _correlation_state(self, compiled: CompiledRule, inst: Instance,
                           now: int) -> list[Signal]:
        rule = compiled.rule
        window = rule.window * NS
        recent = {m for m, t in inst.members.items() if now - t <= window} | set(inst.current)
        for m in [m for m, t in inst.members.items() if now - t > window]:
            del inst.members[m]
        kinds = {self.topology.sources[m].kind for m in recent if m in self.topology.sources}
        met = len(recent) >= rule.min_devices and set(rule.require_kinds) <= kinds \
            and self.in_schedules(rule.schedule, now)
        if met and not inst.active:
            return [self._set(inst, 0, now, rule.severity, value=len(recent),
                              detail={"members": sorted(recent)})]
        if met:
            inst.clearing = [None]
            if inst.value != len(recent):
                inst.value = len(recent)
                self.dirty.add((inst.rule, inst.source))
        elif inst.active:
            started = inst.clearing[0]
            if started is None:
                started = inst.clearing[0] = now
                self.dirty.add((inst.rule, inst.source))
            if now - started >= rule.clear_for * NS:
                inst.clearing[0] = None
                return [self._set(inst, -1, now, None, value=len(recent))]
        return []

    # --- time -----------------------------------------------------------------------

    def tick(self, now: int) -> list[Signal]:
        self.lag = 0  # not a device's input: never late
        out: list[Signal] = []
        keys = self.timing | self.recheck
        self.recheck = set()
        for compiled in self.clocked:
            if self._clock_moves(compiled, now):
                keys |= {(compiled.id, s) for s in compiled.sources if self._reported(s)}
        for rid, source in sorted(keys):
            found = self.rules.rules.get(rid)
            if found is not None and found.rule.type == "threshold" and self._reported(source):
                out += self._threshold(found, source, now)
        for compiled in self.absence:
            out += self._absence(compiled, now)
        for compiled in self.timed:
            rule = compiled.rule
            kind = rule.type
            instances = list(self.by_rule.get(compiled.id, {}).values())
            if kind == "command":
                for inst in instances:
                    if inst.deadline is not None and now >= inst.deadline:
                        inst.deadline = None
                        if not inst.active:
                            value, unit = self._value(compiled, "expect", inst.source)
                            out.append(self._set(inst, 0, now, rule.severity, value=value,
                                                 unit=unit, detail={"command": inst.command},
                                                 text="规定时间内未确认到位"))
            elif kind == "event" and rule.auto_clear is not None:
                for inst in instances:
                    if inst.active and now - inst.since >= rule.auto_clear * NS:
                        out.append(self._set(inst, -1, now, None, text="自动解除"))
            elif kind == "correlation":
                for inst in instances:
                    if inst.active or inst.members:
                        out += self._correlation_state(compiled, inst, now)
            if kind in ("event", "command", "absence") and rule.schedule \
                    and not self.in_schedules(rule.schedule, now):
                for inst in instances:
                    if inst.active:
                        out.append(self._set(inst, -1, now, None, text="不在监视时段内"))
        return out

    def _clock_moves(self, compiled: CompiledRule, now: int) -> bool:
        """Whether the clock alone may have changed this rule's conditions since the last
        tick: it reads the time, or its schedule turned on or off."""
        if any(e.uses_time for e in compiled.expressions.values()):
            return True
        state = self.in_schedules(compiled.rule.schedule, now)
        turned = self._schedule_state.get(compiled.id) is not state
        self._schedule_state[compiled.id] = state
        return turned

    def caught_up(self, now: int) -> None:
        """The service took in what the broker held for it: absence rules may judge again."""
        if self.absence_from:
            log.info("absence rules judge again after %.1fs of backlog",
                     (now - self.absence_from + round(RESTART_HOLD * NS)) / NS)
            self.absence_from = 0

    def _absence(self, compiled: CompiledRule, now: int) -> list[Signal]:
        rule = compiled.rule
        if self.absence_from and now < self.absence_from:
            return []
        if now < self.absence_due.get(compiled.id, 0) and not rule.schedule:
            return []  # nothing can be due yet: no scan of every source
        out: list[Signal] = []
        in_schedule = self.in_schedules(rule.schedule, now)
        due = now + 3600 * NS
        mine = self.by_rule.get(compiled.id, {})
        for source in compiled.sources:
            data = self.data.get(source)
            deadline: int | None
            if rule.status:
                if data is not None and data.status is Availability.OFFLINE:
                    deadline = data.status_since + round(rule.after * NS)
                else:
                    deadline = None
                since = data.status_since if data is not None else now
                text = "通信中断"
            else:
                period = self.topology.sources[source].report_period
                limit = rule.after if rule.after is not None else rule.after_periods * period
                last = data.last_reading if data and data.last_reading else self.started_at
                deadline = last + round(limit * NS)
                since = last
                text = f"{(now - last) / NS:.0f}秒无数据"
            missing = deadline is not None and now >= deadline
            inst = mine.get(source)
            active = inst is not None and inst.active
            if missing and not active and not rule.status and self._gateway_down(source):
                # Its gateway is known to be away (its will came) and its offline alarm
                # waits for its hold: the device's silence is that outage, not news of its
                # own (a 10 s blip of the PLC's gateway must not raise the PLC's no-data).
                continue
            if missing and in_schedule and not active:
                inst = self.instance(compiled, source)
                out.append(self._set(inst, 0, now, rule.severity, text=text,
                                     detail={"since": since}))
            elif active and not missing and inst is not None:
                out.append(self._set(inst, -1, now, None))
            elif deadline is not None and not missing:
                due = min(due, deadline)
        self.absence_due[compiled.id] = due
        return out

    def _gateway_down(self, source: str) -> bool:
        src = self.topology.sources.get(source)
        if src is None or not src.gateway or src.gateway == source:
            return False
        gateway = self.data.get(src.gateway)
        if gateway is None or gateway.status is not Availability.OFFLINE:
            return False
        # Held only until the gateway's own offline alarm is up: then the device's raises
        # under it, suppressed as it is raised.
        return not any((inst := self.by_rule.get(c.id, {}).get(src.gateway)) is not None
                       and inst.active for c in self.absence if c.rule.status)

    # --- what the store keeps besides instances -------------------------------------

    def last_seen(self) -> dict[str, int]:
        """When each source last reported (clock time), for the store: a restart must not
        reset no-data timers."""
        return {s: d.last_reading for s, d in self.data.items() if d.last_reading}

    def series_slice(self, limit: int) -> dict[str, dict[str, dict[str, str]]]:
        """Window samples (Series.dump) of sources that took samples since they were last
        given out, up to about `limit` samples in all: the store gets them a slice at a
        time, so no heartbeat writes megabytes while alerts wait."""
        out: dict[str, dict[str, dict[str, str]]] = {}
        taken = 0
        while self.series_dirty and taken < limit:
            source = self.series_dirty.pop()
            data = self.data.get(source)
            if data is not None and data.series:
                out[source] = {name: series.dump() for name, series in data.series.items()}
                taken += sum(len(s.windows[max(s.windows)]) for s in data.series.values()
                             if s.windows)
        return out

    def restore_seen(self, last_seen: dict[str, int],
                     series: dict[str, dict[str, list[Any]]]) -> None:
        for source in set(last_seen) | set(series):
            if source not in self.topology.sources:
                continue
            data = self._source(source)
            if last_seen.get(source):
                data.last_reading = max(data.last_reading or 0, int(last_seen[source]))
            for name, dumped in (series.get(source) or {}).items():
                kept = data.series.get(name)
                if kept is not None and not kept.newest and isinstance(dumped, dict):
                    kept.load(dumped)
