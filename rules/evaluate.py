"""Stage 1, evaluate: readings, events, statuses and commands in; signals out.

The Evaluator keeps what is known of each source and routes each input to the rule
kinds that can be changed by it (rules/kinds/: threshold, event, absence, command,
correlation, each behind `Kind`'s small interface). Each (rule, source) pair has an
Instance holding its timers. All time comes from the `now` the caller passes in.

What it costs: a reading evaluates only the rules of its device that read a value the
reading changed (rules/scope.py's Plan), with compiled expressions and incremental
windows. A tick evaluates only what the clock alone can change: running `for`/`clear_for`
timers, rules that read the time or whose schedule just turned, command deadlines,
correlation windows, auto-clears, and absence rules when one of them is due. Doing
everything on every reading and every tick, as the first version did, cost 2 ms a reading
and 200 ms a tick with 1,000 rules.
"""

from __future__ import annotations

import math
from typing import Any

from facility.messages import (
    Command,
    CommandResult,
    DeviceStatus,
    Event,
    Quality,
    Reading,
)
from facility.topology import Topology
from rules.clock import NS
from rules.config import CompiledRule, RuleSet
from rules.kinds.absence import RESTART_HOLD, Absence
from rules.kinds.base import Context, Instance, Kind, Signal
from rules.kinds.command import CommandKind
from rules.kinds.correlation import Correlation
from rules.kinds.event import EventKind
from rules.kinds.site_link import SiteLink
from rules.kinds.threshold import Threshold
from rules.scope import COMMAND, CORRELATION, EVENT, NO_DATA, Plan, plans

__all__ = ["RESTART_HOLD", "Evaluator", "Instance", "Signal"]

_MISSING = object()
_NUMBER = (int, float)  # a constant: `int | float` in the loop would build a union each time


class Evaluator(Context):
    def __init__(self, rules: RuleSet, topology: Topology, started_at: int) -> None:
        super().__init__(rules, topology, started_at)
        self.history = 0  # inputs older than their source's newest: not applied
        self.series_dirty: set[str] = set()  # sources whose windows took samples
        self.threshold = Threshold(self)
        self.absence = Absence(self)
        self.command = CommandKind(self)
        self.site_link = SiteLink(self)
        self.absence.link = self.site_link  # the site's link holds its absence rules
        self.kinds: dict[str, Kind] = {
            k.type: k for k in (self.threshold, EventKind(self), self.absence, self.command,
                                Correlation(self), self.site_link)}
        # What a reading's watches (rules/scope.py) go to, by the watch's kind.
        self.by_watch: dict[int, Kind] = {
            EVENT: self.kinds["event"], NO_DATA: self.absence, COMMAND: self.command,
            CORRELATION: self.kinds["correlation"]}
        self._loaded = False
        self.set_rules(rules)
        # Every source's state is made now, not on its first reading: it lives as long as
        # the engine, and made at start it is frozen with the rest (rules/service.py).
        for source_id in topology.sources:
            self.source(source_id)

    @property
    def absence_from(self) -> int:
        return self.absence.hold_until

    @absence_from.setter
    def absence_from(self, until: int) -> None:
        self.absence.hold_until = until

    def set_rules(self, rules: RuleSet) -> None:
        old = self.rules if self._loaded else None
        self._loaded = True
        self.rules = rules
        self.plans = plans(rules.rules)
        # The rules the tick visits besides thresholds and absence scans, in rule order.
        self.timed: list[tuple[Kind, CompiledRule]] = [
            (self.kinds[c.rule.type], c) for c in rules.rules.values()
            if c.rule.type != "threshold" and (c.rule.type != "absence" or c.rule.schedule)]
        self._schedules = {}
        for kind in self.kinds.values():
            kind.load(rules, old)
        for key in [k for k in self.instances if k[0] not in rules.rules]:
            self.forget(key)
        for source, data in self.data.items():
            data.fit(self.plans.get(source, Plan()))

    # --- inputs ---------------------------------------------------------------------

    def on_reading(self, reading: Reading, now: int) -> list[Signal]:
        source = reading.device
        plan = self.plans.get(source)
        if plan is None:
            if source not in self.topology.sources:
                return []  # not a source of this site: nothing to judge, nothing kept
            plan = Plan()
        data = self.data.get(source) or self.source(source)
        self.lag = now - reading.ts
        self.drill = reading.drill
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
        self.site_link.heard(now, self.lag)
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
            if isinstance(value, _NUMBER) and not isinstance(value, bool) \
                    and math.isfinite(value) and series.add(reading.ts, float(value)):
                changed.add(name)
                self.series_dirty.add(source)
        out: list[Signal] = []
        if plan.thresholds:
            out += self.threshold.on_readings(plan, data, source, now, changed)
        by_watch = self.by_watch
        # Without rule state for this source, no-data and command rules have nothing to end.
        watches = plan.on_reading if source in self.by_source else plan.stateless
        for watch in watches:
            out += by_watch[watch.kind].on_reading(watch, source, now, changed)
        return out

    def on_event(self, event: Event, now: int) -> list[Signal]:
        out: list[Signal] = []
        self.lag = now - event.ts
        self.drill = event.drill
        if event.device in self.topology.sources:
            data = self.data.get(event.device) or self.source(event.device)
            key = event.ts if event.ts <= now else now
            if key < data.input_ts:
                self.history += 1
                return out
            data.input_ts = key
        kinds = self.kinds
        for watch in self.plans.get(event.device, Plan()).watches:
            out += kinds[watch.compiled.rule.type].on_event(watch.compiled, event, now)
        return out

    def on_status(self, status: DeviceStatus, now: int) -> list[Signal]:
        self.lag = 0  # not a device's input: never late
        self.drill = ""
        if status.device not in self.topology.sources:
            return []
        data = self.source(status.device)
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
            if watch.compiled.rule.type == "absence":
                out += self.absence.on_status(watch.compiled, status, data.status_since, now)
        return out

    def on_link(self, bridge: str, up: bool, now: int) -> list[Signal]:
        self.lag = 0  # the broker's word, never late
        self.drill = ""
        return self.site_link.on_link(bridge, up, now)

    def on_command(self, command: Command, now: int) -> list[Signal]:
        self.lag = 0  # not a device's input: never late
        self.drill = ""
        return self.command.on_command(command, now)

    def on_command_result(self, result: CommandResult, now: int) -> list[Signal]:
        self.lag = 0  # not a device's input: never late
        self.drill = ""
        return self.command.on_command_result(result, now)

    # --- time -----------------------------------------------------------------------

    def tick(self, now: int) -> list[Signal]:
        self.lag = 0  # not a device's input: never late
        self.drill = ""
        out = self.threshold.due(now)
        for compiled in self.absence.rules:
            out += self.absence.scan(compiled, now)
        for kind, compiled in self.timed:
            out += kind.tick(compiled, now)
        return out

    def caught_up(self, now: int) -> None:
        """The service took in what the broker held for it: absence rules may judge again."""
        self.absence.caught_up(now)

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
            data = self.source(source)
            if last_seen.get(source):
                data.last_reading = max(data.last_reading or 0, int(last_seen[source]))
            for name, dumped in (series.get(source) or {}).items():
                kept = data.series.get(name)
                if kept is not None and not kept.newest and isinstance(dumped, dict):
                    kept.load(dumped)
