"""What the evaluator keeps per source, and what a rule's expressions see.

`Plan` is computed once per rule set and source: which rules watch the source, which
value names each of them reads, which sample windows they need and which values they
read through age(). It is the index that lets a reading evaluate only the rules that
read a value this reading changed, instead of every rule of the device.

`SourceData` is the live state of a source: latest values, windows, last-seen time,
status. `Scope` is the Env (rules/expr.py) an expression is evaluated in; one is reused
for every evaluation, so evaluating allocates nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from facility.messages import Availability, Scalar
from rules.clock import NS
from rules.config import CompiledRule, ThresholdRule
from rules.expr import Node, Quiet, quiet_of
from rules.windows import Series, Window

THRESHOLD, EVENT, NO_DATA, OFFLINE, COMMAND, CORRELATION = range(6)
KINDS = {"threshold": THRESHOLD, "event": EVENT, "command": COMMAND,
         "correlation": CORRELATION}


@dataclass(frozen=True)
class Watch:
    """One rule watching one source; `reads`: the value names its conditions read."""

    compiled: CompiledRule
    kind: int
    reads: frozenset[str]


# A threshold rule as a reading sees it: the rule, the names it reads, and, when it has no
# schedule, the closures of its levels' raise conditions (else None) and where a number
# surely makes them all false (expr.Quiet: the window's function or None for the value
# itself, the value name or None if not known, the window's seconds, a, b, c, d). A rule
# with no state for the source and none of these true has nothing to do
# (Threshold.on_readings).
Gate = tuple[CompiledRule, frozenset[str], tuple[Node, ...] | None,
             "Callable[[Window], float | None] | None", str | None, float,
             float, float, float, float]


@dataclass
class Plan:
    watches: list[Watch] = field(default_factory=list)  # every rule on the source
    # What a reading must look at: threshold rules (with the names they read), and the
    # few others a reading can change (clear_when/raise_when, commands, correlations,
    # no-data). Offline rules and plain event rules never look at readings. `stateless`:
    # the part of on_reading that acts on a source with no rule state (no-data and
    # command rules only end what a state of theirs holds).
    thresholds: list[Gate] = field(default_factory=list)
    on_reading: list[Watch] = field(default_factory=list)
    stateless: list[Watch] = field(default_factory=list)
    reads: frozenset[str] = frozenset()  # union of the watches' reads
    # name -> window seconds -> whether max_of/min_of read it (else no extremes are kept)
    windows: dict[str, dict[float, bool]] = field(default_factory=dict)
    aged: frozenset[str] = frozenset()  # names read through age()


def plans(rules: Mapping[str, CompiledRule]) -> dict[str, Plan]:
    out: dict[str, Plan] = {}
    for compiled in rules.values():
        rule = compiled.rule
        kind = KINDS.get(rule.type)
        if rule.type == "absence":
            kind = OFFLINE if rule.status else NO_DATA
        reads: set[str] = set()
        windows: list[tuple[str, float, bool]] = []
        aged: set[str] = set()
        for fld, expression in compiled.expressions.items():
            if fld == "where":  # reads the event's attributes, not the device's values
                continue
            reads |= expression.names | expression.sampled
            windows += [(name, seconds, function in ("max_of", "min_of"))
                        for function, name, seconds in expression.windows]
            aged |= expression.aged
        watch = Watch(compiled, kind if kind is not None else THRESHOLD, frozenset(reads))
        stateless = (kind == EVENT and bool(rule.clear_when or rule.raise_when)) \
            or (kind == CORRELATION and bool(rule.signal))
        raises = None
        quiet: Quiet | None = None
        if isinstance(rule, ThresholdRule) and not rule.schedule:
            expressions = [compiled.expressions[f"levels.{n}.raise"]
                           for n in range(len(rule.levels))]
            raises = tuple(e.root for e in expressions)
            quiet = quiet_of(expressions)
        function, name, seconds, a, b, c, d = quiet or ("", None, 0.0, 0.0, 0.0, 0.0, 0.0)
        window = _WINDOW[function] if function else None
        for source in compiled.sources:
            plan = out.setdefault(source, Plan())
            plan.watches.append(watch)
            if watch.kind == THRESHOLD:
                plan.thresholds.append((compiled, watch.reads, raises, window, name, seconds,
                                        a, b, c, d))
            elif kind in (NO_DATA, COMMAND):
                plan.on_reading.append(watch)
            elif stateless:
                plan.on_reading.append(watch)
                plan.stateless.append(watch)
            plan.reads = plan.reads | watch.reads
            for name, seconds, extremes in windows:
                lengths = plan.windows.setdefault(name, {})
                lengths[seconds] = lengths.get(seconds, False) or extremes
            plan.aged = plan.aged | aged
    return out


@dataclass
class SourceData:
    values: dict[str, Scalar] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    seen_at: dict[str, int] = field(default_factory=dict)  # value name -> clock time (age())
    last_reading: int | None = None  # clock time of the last reading
    # Device time of the newest reading or event applied: readings and events come over
    # two connections, so after an outage an older one can arrive after a newer one.
    input_ts: int = 0
    status: Availability | None = None
    status_since: int = 0

    def fit(self, plan: Plan) -> None:
        """Windows for what the plan's rules ask (after a start or a reload)."""
        for name, lengths in plan.windows.items():
            series = self.series.get(name)
            if series is None:
                series = self.series[name] = Series()
            for seconds, extremes in lengths.items():
                series.window(seconds, extremes)
        for name in [n for n in self.series if n not in plan.windows]:
            del self.series[name]


_WINDOW: dict[str, Callable[[Window], float | None]] = {
    "rate": Window.rate, "delta": Window.delta, "avg": Window.avg,
    "max_of": Window.max_of, "min_of": Window.min_of}


class Scope:
    """The Env of one evaluation: bound to a source, its data, a rule and a time."""

    __slots__ = ("data", "in_schedules", "local_time", "now", "params", "tags", "values")

    def __init__(self, local_time: Callable[[int], datetime],
                 in_schedules: Callable[[list[str], int], bool]) -> None:
        self.local_time = local_time
        self.in_schedules = in_schedules
        self.data = SourceData()
        self.values: Mapping[str, Any] = self.data.values
        self.tags: Mapping[str, Any] = {}
        self.params: Mapping[str, Any] = {}
        self.now = 0

    def bind(self, data: SourceData, tags: Mapping[str, Any], params: Mapping[str, Any],
             now: int) -> Scope:
        self.data = data
        self.values = data.values
        self.tags = tags
        self.params = params
        self.now = now
        return self

    def local(self) -> datetime:
        return self.local_time(self.now)

    def window(self, function: str, name: str, seconds: float) -> float | None:
        series = self.data.series.get(name)
        window = series.windows.get(seconds) if series is not None else None
        return _WINDOW[function](window) if window is not None else None

    def age(self, name: str) -> float | None:
        seen = self.data.seen_at.get(name)
        return (self.now - seen) / NS if seen is not None else None

    def in_schedule(self, name: str) -> bool:
        return self.in_schedules([name], self.now)
