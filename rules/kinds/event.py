"""`event`: device events raise and clear (`raise_on`, `clear_on`, `where` on the event's
attributes); on readings, `raise_when` (when one of its values changes) and `clear_when`
(on every reading while active); `auto_clear` after a time."""

from __future__ import annotations

from facility.messages import Event
from rules.clock import NS
from rules.config import CompiledRule
from rules.expr import Unknown
from rules.kinds.base import Kind, Signal
from rules.scope import Watch


class EventKind(Kind):
    type = "event"

    def on_reading(self, watch: Watch, source: str, now: int,
                   changed: set[str]) -> list[Signal]:
        ctx = self.ctx
        compiled = watch.compiled
        rule = compiled.rule
        inst = ctx.by_rule.get(compiled.id, {}).get(source)
        if inst is not None and inst.active:
            # clear_when is judged on every reading while active: the device says it is over
            if rule.clear_when and ctx.truth(compiled, "clear_when", source, now):
                return [ctx.set_level(inst, -1, now, None)]
            return []
        if rule.raise_when and not watch.reads.isdisjoint(changed) \
                and ctx.in_schedules(rule.schedule, now) \
                and ctx.truth(compiled, "raise_when", source, now):
            value, unit = ctx.value(compiled, "raise_when", source)
            return [ctx.set_level(ctx.instance(compiled, source), 0, now, rule.severity,
                                  value=value, unit=unit, force=True,
                                  detail={"reading": True})]
        return []

    def on_event(self, compiled: CompiledRule, event: Event, now: int) -> list[Signal]:
        ctx = self.ctx
        rule = compiled.rule
        inst = ctx.instance(compiled, event.device)
        if event.name in rule.raise_on and ctx.in_schedules(rule.schedule, now):
            where = compiled.expressions.get("where")
            if where is not None:
                try:
                    ok = where.truth({"attrs": dict(event.attrs), "name": event.name,
                                      "text": event.text}, {})
                except Unknown:
                    ok = False
                if not ok:
                    return []
            return [ctx.set_level(inst, 0, now, rule.severity, value=event.name,
                                  text=event.text, force=True, detail={"event": event.id})]
        if event.name in rule.clear_on and inst.active:
            return [ctx.set_level(inst, -1, now, None, value=event.name, text=event.text)]
        return []

    def tick(self, compiled: CompiledRule, now: int) -> list[Signal]:
        ctx = self.ctx
        out: list[Signal] = []
        auto_clear = compiled.rule.auto_clear
        if auto_clear is not None:
            for inst in list(ctx.by_rule.get(compiled.id, {}).values()):
                if inst.active and now - inst.since >= auto_clear * NS:
                    out.append(ctx.set_level(inst, -1, now, None, text="自动解除"))
        return out + ctx.off_schedule(compiled, now)
