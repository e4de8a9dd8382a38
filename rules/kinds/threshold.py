"""`threshold`: a ladder of levels, each with `raise` and `clear` (hysteresis) and
`for`/`clear_for` durations.

Its fast paths: a reading evaluates only the threshold rules of its device that read a
value the reading changed, with the scope bound once for all of them; a rule that never
held for a source keeps no state; a tick evaluates only running timers, rules reloaded,
and rules that read the clock or whose schedule just turned.

Most rules a reading touches have no state and stay quiet, so they are gated before
evaluate(): their levels' raise conditions in one call (expr.first_true), or, for a
ladder of `x >= 70`, `v < 198 or v > 242`, `rate('x', 300) >= 20` and the like, by
comparing the number with bounds worked out when the rule was loaded (expr.Quiet), with
no call at all. Written here rather than found in a library because it is a property of
our expression language; tests/test_rules_fast_paths.py holds it to evaluating every rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.clock import NS
from rules.config import CompiledRule, RuleSet
from rules.expr import Expression, Unknown, first_true
from rules.kinds.base import Context, Instance, Kind, Signal
from rules.scope import Plan, Scope, SourceData

VALUE_REFRESH = 30 * NS  # an active alert's shown value follows its readings this often
_NO_TAGS: dict[str, str] = {}  # shared, never written: no dict made per reading
_REAL = (int, float)  # a number compares as the closures compare it (a bool as 0/1)


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


class Threshold(Kind):
    type = "threshold"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.ladders: dict[str, list[Step]] = {}
        self.clocked: list[CompiledRule] = []
        self._schedule_state: dict[str, bool] = {}

    def load(self, rules: RuleSet, old: RuleSet | None) -> None:
        ctx = self.ctx
        mine = [c for c in rules.rules.values() if c.rule.type == "threshold"]
        self.ladders = {c.id: ladder(c) for c in mine}
        self.clocked = [c for c in mine if c.rule.schedule
                        or any(e.uses_time for e in c.expressions.values())]
        if old is not None:  # new or changed rules look at what is known now, at the next tick
            for compiled in mine:
                before = old.rules.get(compiled.id)
                if before is None or before.revision != compiled.revision:
                    ctx.recheck.update((compiled.id, s) for s in compiled.sources
                                       if ctx.reported(s))

    def on_readings(self, plan: Plan, data: SourceData, source: str, now: int,
                    changed: set[str]) -> list[Signal]:
        """A reading: the rules that read a value it changed, then the shown values of
        the active ones (at most every VALUE_REFRESH)."""
        ctx = self.ctx
        out: list[Signal] = []
        held = ctx.by_source.get(source)  # this source's rule states, if it has any
        if changed:
            scope = ctx.scope.bind(data, ctx.tags_of.get(source, _NO_TAGS), _NO_TAGS, now)
            values, series = data.values, data.series
            for compiled, names, raises, window, name, seconds, a, b, c, d in plan.thresholds:
                if names.isdisjoint(changed):
                    continue
                if raises is not None and (held is None or compiled.id not in held):
                    # No state and no schedule: evaluate() would test each level's raise
                    # condition and stop there unless one holds. Asked here: for `x >= 70`,
                    # `rate('x', 300) >= 20` and the like by comparing numbers (as
                    # Scope.window reads a window), else through the closures in one call.
                    if name is not None:
                        if window is None:
                            v = values.get(name)
                        else:
                            kept = series.get(name)
                            found = kept.windows.get(seconds) if kept is not None else None
                            v = window(found) if found is not None else None
                        if isinstance(v, _REAL) and v < a and v <= b and v >= c and v > d:
                            continue
                    scope.params = compiled.rule.params
                    if not first_true(raises, scope):
                        continue
                signals = self.evaluate(compiled, source, now, bound=True)
                if signals:
                    out += signals
        if held:
            for compiled, *_ in plan.thresholds:
                inst = held.get(compiled.id)
                if inst is not None and inst.active and now - inst.refreshed >= VALUE_REFRESH:
                    out += self._refresh(compiled, inst, source, now)
        return out

    def due(self, now: int) -> list[Signal]:
        """A tick: running timers, reloaded rules, and rules the clock moves."""
        ctx = self.ctx
        out: list[Signal] = []
        keys = ctx.timing | ctx.recheck
        ctx.recheck = set()
        for compiled in self.clocked:
            if self._clock_moves(compiled, now):
                keys |= {(compiled.id, s) for s in compiled.sources if ctx.reported(s)}
        for rid, source in sorted(keys):
            found = ctx.rules.rules.get(rid)
            if found is not None and found.rule.type == "threshold" and ctx.reported(source):
                out += self.evaluate(found, source, now)
        return out

    def _clock_moves(self, compiled: CompiledRule, now: int) -> bool:
        """Whether the clock alone may have changed this rule's conditions since the last
        tick: it reads the time, or its schedule turned on or off."""
        if any(e.uses_time for e in compiled.expressions.values()):
            return True
        state = self.ctx.in_schedules(compiled.rule.schedule, now)
        turned = self._schedule_state.get(compiled.id) is not state
        self._schedule_state[compiled.id] = state
        return turned

    def evaluate(self, compiled: CompiledRule, source: str, now: int,
                 bound: bool = False) -> list[Signal]:
        """`bound`: the scope is already bound to this source and time (on_readings)."""
        ctx = self.ctx
        rule = compiled.rule
        ladder = self.ladders[compiled.id]
        key = (compiled.id, source)
        inst = ctx.instances.get(key)
        in_schedule = ctx.in_schedules(rule.schedule, now) if rule.schedule else True
        scope = ctx.scope
        if bound:
            scope.params = rule.params
        else:
            scope.bind(ctx.data[source], ctx.tags_of.get(source, {}), rule.params, now)
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
            inst = ctx.instance(compiled, source)
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
            ctx.dirty.add(key)
            if inst.timing:
                ctx.timing.add(key)
            else:
                ctx.timing.discard(key)
        if level == before:
            return []
        inst.refreshed = now
        value, unit = ctx.value(compiled, f"levels.{max(level, 0)}.raise", source)
        severity = rule.levels[level].severity if level >= 0 else None
        return [ctx.set_level(inst, level, now, severity, value=value, unit=unit)]

    def _refresh(self, compiled: CompiledRule, inst: Instance, source: str,
                 now: int) -> list[Signal]:
        """While a level holds, the value shown on screens follows the readings, at most
        every VALUE_REFRESH (a screen is not rewritten every second)."""
        value, unit = self.ctx.value(compiled, f"levels.{inst.level}.raise", source)
        if value is None or value == inst.value:
            return []
        inst.value, inst.refreshed = value, now
        self.ctx.dirty.add((inst.rule, inst.source))
        return [Signal(rule=inst.rule, source=source, active=True, ts=now,
                       severity=compiled.rule.levels[inst.level].severity, value=value,
                       unit=unit, detail={"refresh": True})]
