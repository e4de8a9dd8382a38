"""`correlation`: several devices of one place or zone signalling within a window
(`signal` on readings and/or `signal_events`, `group_by`, `window`, `min_devices`,
`require_kinds`, `clear_for`). Its instance is the group's, not a device's."""

from __future__ import annotations

from facility.messages import Event
from rules.clock import NS
from rules.config import CompiledRule
from rules.kinds.base import Instance, Kind, Signal
from rules.scope import Watch


class Correlation(Kind):
    type = "correlation"

    def on_reading(self, watch: Watch, source: str, now: int,
                   changed: set[str]) -> list[Signal]:
        compiled = watch.compiled
        if not compiled.rule.signal:
            return []
        return self._member(compiled, source, now,
                            self.ctx.truth(compiled, "signal", source, now))

    def on_event(self, compiled: CompiledRule, event: Event, now: int) -> list[Signal]:
        if event.name not in compiled.rule.signal_events:
            return []
        return self._member(compiled, event.device, now, True, momentary=True)

    def tick(self, compiled: CompiledRule, now: int) -> list[Signal]:
        out: list[Signal] = []
        for inst in list(self.ctx.by_rule.get(compiled.id, {}).values()):
            if inst.active or inst.members:
                out += self._state(compiled, inst, now)
        return out

    def _member(self, compiled: CompiledRule, member: str, now: int, signal: bool | None,
                momentary: bool = False) -> list[Signal]:
        ctx = self.ctx
        rule = compiled.rule
        group = ctx.topology.group_key(member, rule.group_by)
        if signal is None:
            return []
        inst = ctx.instance(compiled, group)
        if signal:
            inst.members[member] = now
            if not momentary and member not in inst.current:
                inst.current.append(member)
        elif member in inst.current:
            inst.current.remove(member)
        elif not inst.members and not inst.active:
            return []  # a quiet member of a quiet group: nothing changed, nothing to store
        ctx.dirty.add((compiled.id, group))
        return self._state(compiled, inst, now)

    def _state(self, compiled: CompiledRule, inst: Instance, now: int) -> list[Signal]:
        ctx = self.ctx
        rule = compiled.rule
        window = rule.window * NS
        recent = {m for m, t in inst.members.items() if now - t <= window} | set(inst.current)
        for m in [m for m, t in inst.members.items() if now - t > window]:
            del inst.members[m]
        sources = ctx.topology.sources
        kinds = {sources[m].kind for m in recent if m in sources}
        met = len(recent) >= rule.min_devices and set(rule.require_kinds) <= kinds \
            and ctx.in_schedules(rule.schedule, now)
        if met and not inst.active:
            return [ctx.set_level(inst, 0, now, rule.severity, value=len(recent),
                                  detail={"members": sorted(recent)})]
        if met:
            inst.clearing = [None]
            if inst.value != len(recent):
                inst.value = len(recent)
                ctx.dirty.add((inst.rule, inst.source))
        elif inst.active:
            started = inst.clearing[0]
            if started is None:
                started = inst.clearing[0] = now
                ctx.dirty.add((inst.rule, inst.source))
            if now - started >= rule.clear_for * NS:
                inst.clearing[0] = None
                return [ctx.set_level(inst, -1, now, None, value=len(recent))]
        return []
