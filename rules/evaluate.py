"""Stage 1, evaluate: readings, events, statuses and commands in; signals out.

A Signal says that one rule's condition for one source is now active (with a severity)
or no longer active. Each (rule, source) pair has an Instance holding its timers: the
raise and clear timers of each threshold level, the deadline of a command, the members of
a correlation. Instances are plain data so the store can keep them across restarts.
All time comes from the `now` the caller passes in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from facility.messages import (
    Availability,
    Command,
    CommandResult,
    DeviceStatus,
    Event,
    Reading,
    Scalar,
    Severity,
)
from rules.clock import NS
from rules.config import CompiledRule, RuleSet
from rules.expr import Unknown
from rules.topology import Topology

MAX_SAMPLES = 2000  # per source and value name


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

    @property
    def active(self) -> bool:
        return self.level >= 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        return cls(**data)


@dataclass
class SourceData:
    values: dict[str, Scalar] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    samples: dict[str, deque[tuple[int, float]]] = field(default_factory=dict)
    seen_at: dict[str, int] = field(default_factory=dict)  # value name -> clock time
    last_reading: int | None = None  # clock time of the last reading
    status: Availability | None = None
    status_since: int = 0


class Evaluator:
    def __init__(self, rules: RuleSet, topology: Topology, started_at: int) -> None:
        self.topology = topology
        self.tz = ZoneInfo(topology.timezone)
        self.started_at = started_at
        self.data: dict[str, SourceData] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.set_rules(rules)

    def set_rules(self, rules: RuleSet) -> None:
        self.rules = rules
        self.by_source: dict[str, list[CompiledRule]] = {}
        for compiled in rules.rules.values():
            for sid in compiled.sources:
                self.by_source.setdefault(sid, []).append(compiled)
        signals_off = [key for key in self.instances if key[0] not in rules.rules]
        for key in signals_off:
            del self.instances[key]

    # --- helpers --------------------------------------------------------------------

    def instance(self, compiled: CompiledRule, source: str) -> Instance:
        key = (compiled.id, source)
        inst = self.instances.get(key)
        n = len(compiled.rule.levels) if compiled.rule.type == "threshold" else 1
        if inst is None or len(inst.on) != n:
            inst = self.instances[key] = Instance(rule=compiled.id, source=source, on=[False] * n,
                                                  pending=[None] * n, clearing=[None] * n)
        return inst

    def local(self, now: int) -> datetime:
        return datetime.fromtimestamp(now / NS, self.tz)

    def in_schedules(self, names: list[str], now: int) -> bool:
        if not names:
            return True
        local = self.local(now)
        return any(self.rules.schedules[n].contains(local) for n in names)

    def _functions(self, source: str, now: int) -> dict[str, Any]:
        data = self.data.get(source) or SourceData()

        def window(name: str, seconds: float) -> list[tuple[int, float]]:
            samples = data.samples.get(name)
            if not samples:
                return []
            newest = samples[-1][0]
            return [s for s in samples if s[0] >= newest - seconds * NS]

        def rate(name: str, seconds: float) -> float | None:
            """Change per minute: least-squares slope over the window's samples."""
            pts = window(name, seconds)
            if len(pts) < 2 or pts[-1][0] - pts[0][0] < min(seconds, 60) * NS / 4:
                return None
            t0 = pts[0][0]
            xs = [(t - t0) / NS / 60 for t, _ in pts]
            ys = [v for _, v in pts]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            var = sum((x - mx) ** 2 for x in xs)
            if var == 0:
                return None
            return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var

        def delta(name: str, seconds: float) -> float | None:
            pts = window(name, seconds)
            return pts[-1][1] - pts[0][1] if len(pts) >= 2 else None

        def avg(name: str, seconds: float) -> float | None:
            pts = window(name, seconds)
            return sum(v for _, v in pts) / len(pts) if pts else None

        def max_of(name: str, seconds: float) -> float | None:
            pts = window(name, seconds)
            return max(v for _, v in pts) if pts else None

        def min_of(name: str, seconds: float) -> float | None:
            pts = window(name, seconds)
            return min(v for _, v in pts) if pts else None

        def age(name: str) -> float | None:
            seen = data.seen_at.get(name)
            return (now - seen) / NS if seen is not None else None

        def in_schedule(name: str) -> bool:
            return self.in_schedules([name], now)

        def get(name: str, default: Any = None) -> Any:
            return data.values.get(name, default)

        return {"get": get, "rate": rate, "delta": delta, "avg": avg, "max_of": max_of,
                "min_of": min_of,
                "age": age, "in_schedule": in_schedule}

    def _names(self, compiled: CompiledRule, source: str, now: int) -> dict[str, Any]:
        data = self.data.get(source) or SourceData()
        local = self.local(now)
        src = self.topology.sources.get(source)
        return {**data.values, "tags": dict(src.tags) if src else {},
                "params": compiled.rule.params, "hour": local.hour, "minute": local.minute,
                "weekday": local.weekday(), "true": True, "false": False}

    def _truth(self, compiled: CompiledRule, fld: str, source: str, now: int) -> bool | None:
        expression = compiled.expressions.get(fld)
        if expression is None:
            return None
        try:
            return expression.truth(self._names(compiled, source, now),
                                    self._functions(source, now))
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
        data = self.data.setdefault(reading.device, SourceData())
        data.last_reading = now
        for name, value in reading.values.items():
            data.values[name] = value
            data.seen_at[name] = now
            if isinstance(value, int | float) and not isinstance(value, bool) \
                    and math.isfinite(value):
                samples = data.samples.setdefault(name, deque(maxlen=MAX_SAMPLES))
                if samples and reading.ts < samples[-1][0]:
                    continue  # out of order (a buffered uplink): not part of the trend
                samples.append((reading.ts, float(value)))
        data.units.update(reading.units)
        out: list[Signal] = []
        for compiled in self.by_source.get(reading.device, []):
            kind = compiled.rule.type
            if kind == "threshold":
                out += self._threshold(compiled, reading.device, now)
            elif kind == "event" and compiled.rule.clear_when:
                inst = self.instance(compiled, reading.device)
                if inst.active and self._truth(compiled, "clear_when", reading.device, now):
                    out.append(self._set(inst, -1, now, None))
            elif kind == "absence" and compiled.rule.after_periods is not None:
                inst = self.instance(compiled, reading.device)
                if inst.active:
                    out.append(self._set(inst, -1, now, None))
            elif kind == "command":
                out += self._command_check(compiled, reading.device, now)
            elif kind == "correlation" and compiled.rule.signal:
                out += self._correlate(compiled, reading.device, now,
                                       self._truth(compiled, "signal", reading.device, now))
        return out

    def on_event(self, event: Event, now: int) -> list[Signal]:
        out: list[Signal] = []
        for compiled in self.by_source.get(event.device, []):
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
        return [s for s in out if s is not None]

    def on_status(self, status: DeviceStatus, now: int) -> list[Signal]:
        data = self.data.setdefault(status.device, SourceData())
        if data.status is not status.state:
            data.status = status.state
            data.status_since = min(now, status.ts) if status.ts > now - 86400 * NS else now
        out: list[Signal] = []
        if status.state is Availability.ONLINE:
            for compiled in self.by_source.get(status.device, []):
                if compiled.rule.type == "absence" and compiled.rule.status:
                    inst = self.instance(compiled, status.device)
                    if inst.active:
                        out.append(self._set(inst, -1, now, None, text=status.reason))
        return out

    def on_command(self, command: Command, now: int) -> list[Signal]:
        out: list[Signal] = []
        targets = self._command_targets(command)
        for compiled in self.rules.rules.values():
            rule = compiled.rule
            if rule.type != "command":
                continue
            for source in targets:
                if source not in compiled.sources:
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
                        out.append(self._set(inst, -1, now, None,
                                             text=f"superseded by {command.action}"))
        return out

    def on_command_result(self, result: CommandResult, now: int) -> list[Signal]:
        out: list[Signal] = []
        for compiled in self.rules.rules.values():
            rule = compiled.rule
            if rule.type != "command" or result.status.value not in rule.fail_on_result:
                continue
            for source in compiled.sources:
                inst = self.instances.get((compiled.id, source))
                if inst is not None and inst.command == result.id and inst.deadline is not None:
                    inst.deadline = None
                    value, unit = self._value(compiled, "expect", source)
                    out.append(self._set(inst, 0, now, rule.severity, value=value, unit=unit,
                                         text=f"{result.status.value}: {result.detail}".strip(),
                                         detail={"command": result.id}))
        return out

    def _command_targets(self, command: Command) -> list[str]:
        if command.device in self.topology.sources and \
                not any(s.tags.get("controller") == command.device
                        for s in self.topology.sources.values()):
            return [command.device]
        units = [s.id for s in self.topology.sources.values()
                 if s.tags.get("controller") == command.device]
        number = command.params.get("unit", command.params.get("bollard"))
        if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= len(units):
            return [units[number - 1]]
        return units

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
        if inst.restored_gap and level >= 0:
            detail["timer_spanned_restart_s"] = round(inst.restored_gap / NS, 1)
            inst.restored_gap = 0
        return Signal(rule=inst.rule, source=inst.source, active=level >= 0, ts=now,
                      severity=severity, value=value, unit=unit, text=text, detail=detail)

    def _threshold(self, compiled: CompiledRule, source: str, now: int) -> list[Signal]:
        rule = compiled.rule
        inst = self.instance(compiled, source)
        in_schedule = self.in_schedules(rule.schedule, now)
        before = inst.level
        touched = False
        for n, level in enumerate(rule.levels):
            raise_for = level.for_ if level.for_ is not None else rule.for_
            clear_for = level.clear_for if level.clear_for is not None else rule.clear_for
            if not in_schedule:
                if inst.on[n] or inst.pending[n] is not None:
                    inst.on[n], inst.pending[n], inst.clearing[n] = False, None, None
                    touched = True
                continue
            if not inst.on[n]:
                raised = self._truth(compiled, f"levels.{n}.raise", source, now)
                if raised is None:
                    continue
                if raised:
                    if inst.pending[n] is None:
                        inst.pending[n] = now
                        touched = True
                    if now - inst.pending[n] >= raise_for * NS:  # type: ignore[operator]
                        inst.on[n], inst.pending[n], inst.clearing[n] = True, None, None
                        touched = True
                elif inst.pending[n] is not None:
                    inst.pending[n] = None
                    touched = True
            else:
                if level.clear is not None:
                    cleared = self._truth(compiled, f"levels.{n}.clear", source, now)
                else:
                    raised = self._truth(compiled, f"levels.{n}.raise", source, now)
                    cleared = None if raised is None else not raised
                if cleared is None:
                    continue
                if cleared:
                    if inst.clearing[n] is None:
                        inst.clearing[n] = now
                        touched = True
                    if now - inst.clearing[n] >= clear_for * NS:  # type: ignore[operator]
                        inst.on[n], inst.clearing[n] = False, None
                        touched = True
                elif inst.clearing[n] is not None:
                    inst.clearing[n] = None
                    touched = True
        # A level is on only while every level below it is: the severity steps down through
        # the ladder and the alert ends when the lowest level clears.
        level = -1
        for n in range(len(rule.levels)):
            if inst.on[n]:
                level = n
            else:
                for m in range(n + 1, len(rule.levels)):
                    inst.on[m] = False
                break
        if touched:
            self.dirty.add((compiled.id, source))
        if level == before:
            return []
        value, unit = self._value(compiled, f"levels.{max(level, 0)}.raise", source)
        severity = rule.levels[level].severity if level >= 0 else None
        return [self._set(inst, level, now, severity, value=value, unit=unit)]

    def _command_check(self, compiled: CompiledRule, source: str, now: int) -> list[Signal]:
        inst = self.instances.get((compiled.id, source))
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
        inst = self.instance(compiled, group)
        if signal is None:
            return []
        if signal:
            inst.members[member] = now
            if not momentary and member not in inst.current:
                inst.current.append(member)
        elif member in inst.current:
            inst.current.remove(member)
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
        out: list[Signal] = []
        for compiled in self.rules.rules.values():
            rule = compiled.rule
            if rule.type == "threshold":
                for source in compiled.sources:
                    if source in self.data:
                        out += self._threshold(compiled, source, now)
            elif rule.type == "absence":
                out += self._absence(compiled, now)
            elif rule.type == "command":
                for source in compiled.sources:
                    inst = self.instances.get((compiled.id, source))
                    if inst is not None and inst.deadline is not None and now >= inst.deadline:
                        inst.deadline = None
                        if not inst.active:
                            value, unit = self._value(compiled, "expect", source)
                            out.append(self._set(inst, 0, now, rule.severity, value=value,
                                                 unit=unit, detail={"command": inst.command},
                                                 text="no confirmation in time"))
            elif rule.type == "event" and rule.auto_clear is not None:
                for (rid, _), inst in list(self.instances.items()):
                    if rid == compiled.id and inst.active and \
                            now - inst.since >= rule.auto_clear * NS:
                        out.append(self._set(inst, -1, now, None, text="auto clear"))
            elif rule.type == "correlation":
                for (rid, _), inst in list(self.instances.items()):
                    if rid == compiled.id and (inst.active or inst.members):
                        out += self._correlation_state(compiled, inst, now)
            if rule.type in ("event", "command", "absence") and rule.schedule \
                    and not self.in_schedules(rule.schedule, now):
                for (rid, _), inst in list(self.instances.items()):
                    if rid == compiled.id and inst.active:
                        out.append(self._set(inst, -1, now, None, text="outside schedule"))
        return out

    def _absence(self, compiled: CompiledRule, now: int) -> list[Signal]:
        rule = compiled.rule
        out: list[Signal] = []
        in_schedule = self.in_schedules(rule.schedule, now)
        for source in compiled.sources:
            data = self.data.get(source)
            if rule.status:
                missing = data is not None and data.status is Availability.OFFLINE \
                    and now - data.status_since >= rule.after * NS
                since = data.status_since if data is not None else now
                text = "offline"
            else:
                period = self.topology.sources[source].report_period
                limit = rule.after if rule.after is not None else rule.after_periods * period
                last = data.last_reading if data and data.last_reading else self.started_at
                missing = now - last >= limit * NS
                since = last
                text = f"no data for {(now - last) / NS:.0f}s"
            inst = self.instances.get((compiled.id, source))
            active = inst is not None and inst.active
            if missing and in_schedule and not active:
                inst = self.instance(compiled, source)
                out.append(self._set(inst, 0, now, rule.severity, text=text,
                                     detail={"since": since}))
            elif active and not missing and inst is not None:
                out.append(self._set(inst, -1, now, None))
        return out
