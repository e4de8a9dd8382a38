"""`command`: a command whose outcome does not follow in time (`actions`, `within`,
`expect`), or whose result is a refusal or failure (`fail_on_result`)."""

from __future__ import annotations

from facility.labels import COMMAND_ACTION, COMMAND_STATUS, label
from facility.messages import Command, CommandResult
from rules.clock import NS
from rules.config import CompiledRule, RuleSet
from rules.kinds.base import Context, Kind, Signal
from rules.scope import Watch


class CommandKind(Kind):
    type = "command"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.rules: list[CompiledRule] = []
        self.sources_of: dict[str, frozenset[str]] = {}
        self.units_of: dict[str, list[str]] = {}  # controller -> its units, in order
        for source in ctx.topology.sources.values():
            controller = source.tags.get("controller")
            if controller:
                self.units_of.setdefault(controller, []).append(source.id)

    def load(self, rules: RuleSet, old: RuleSet | None) -> None:
        self.rules = [c for c in rules.rules.values() if c.rule.type == "command"]
        self.sources_of = {c.id: frozenset(c.sources) for c in self.rules}

    def on_reading(self, watch: Watch, source: str, now: int,
                   changed: set[str]) -> list[Signal]:
        """The expected outcome came: the deadline is off, an active alert clears."""
        ctx = self.ctx
        compiled = watch.compiled
        inst = ctx.by_rule.get(compiled.id, {}).get(source)
        if inst is None or (inst.deadline is None and not inst.active):
            return []
        if ctx.truth(compiled, "expect", source, now):
            inst.deadline = None
            ctx.dirty.add((compiled.id, source))
            if inst.active:
                value, unit = ctx.value(compiled, "expect", source)
                return [ctx.set_level(inst, -1, now, None, value=value, unit=unit)]
        return []

    def on_command(self, command: Command, now: int) -> list[Signal]:
        ctx = self.ctx
        out: list[Signal] = []
        targets = self._targets(command)
        for compiled in self.rules:
            rule = compiled.rule
            sources = self.sources_of[compiled.id]
            for source in targets:
                if source not in sources:
                    continue
                inst = ctx.instance(compiled, source)
                ctx.dirty.add((compiled.id, source))
                if command.action in rule.actions:
                    inst.deadline = now + round(rule.within * NS)
                    inst.command = command.id
                else:  # another order supersedes the expectation
                    inst.deadline = None
                    inst.command = command.id
                    if inst.active:
                        action = label(COMMAND_ACTION, command.action)
                        out.append(ctx.set_level(inst, -1, now, None,
                                                 text=f"被{action}指令取代"))
        return out

    def on_command_result(self, result: CommandResult, now: int) -> list[Signal]:
        ctx = self.ctx
        out: list[Signal] = []
        for compiled in self.rules:
            rule = compiled.rule
            if result.status.value not in rule.fail_on_result:
                continue
            for source, inst in list(ctx.by_rule.get(compiled.id, {}).items()):
                if inst.command == result.id and inst.deadline is not None:
                    inst.deadline = None
                    value, unit = ctx.value(compiled, "expect", source)
                    # What the operator reads: the status in Chinese, the gateway's detail.
                    said = f"{label(COMMAND_STATUS, result.status)}：{result.detail}".rstrip("：")
                    out.append(ctx.set_level(inst, 0, now, rule.severity, value=value,
                                             unit=unit, text=said,
                                             detail={"command": result.id}))
        return out

    def _targets(self, command: Command) -> list[str]:
        units = self.units_of.get(command.device, [])
        if command.device in self.ctx.topology.sources and not units:
            return [command.device]
        number = command.params.get("unit", command.params.get("bollard"))
        if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= len(units):
            return [units[number - 1]]
        return list(units)

    def tick(self, compiled: CompiledRule, now: int) -> list[Signal]:
        """Deadlines that passed without the expected outcome."""
        ctx = self.ctx
        rule = compiled.rule
        out: list[Signal] = []
        for inst in list(ctx.by_rule.get(compiled.id, {}).values()):
            if inst.deadline is not None and now >= inst.deadline:
                inst.deadline = None
                if not inst.active:
                    value, unit = ctx.value(compiled, "expect", inst.source)
                    out.append(ctx.set_level(inst, 0, now, rule.severity, value=value,
                                             unit=unit, detail={"command": inst.command},
                                             text="规定时间内未确认到位"))
        return out + ctx.off_schedule(compiled, now)
