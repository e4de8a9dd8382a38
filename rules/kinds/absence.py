"""`absence`: a source offline for N (`status: offline`, `after`), or with no data for N
(`after`) or for N report periods (`after_periods`).

Its fast path: a scan of every source of a rule runs only when one of them can be due
(`due`, the earliest deadline the last scan saw; an offline status brings it forward).
After a restart the rules wait (at most RESTART_HOLD) until the broker's backlog is in.
A site behind a bridge: its link to the centre holds them (rules/kinds/site_link.py).
"""

from __future__ import annotations

import logging

from facility.messages import Availability, DeviceStatus
from rules.clock import NS
from rules.config import CompiledRule, RuleSet
from rules.kinds.base import Context, Kind, Signal
from rules.kinds.site_link import SiteLink
from rules.scope import Watch

log = logging.getLogger(__name__)

RESTART_HOLD = 60.0  # s: longest wait for the backlog before absence rules judge again


class Absence(Kind):
    type = "absence"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.rules: list[CompiledRule] = []
        self.due: dict[str, int] = {}  # absence rule -> earliest time one may fire
        self.hold_until = 0  # absence rules hold until then (backlog after a restart)
        self.link: SiteLink | None = None  # the site's link to the centre, if bridged

    def load(self, rules: RuleSet, old: RuleSet | None) -> None:
        self.rules = [c for c in rules.rules.values() if c.rule.type == "absence"]
        self.due = {}

    def on_reading(self, watch: Watch, source: str, now: int,
                   changed: set[str]) -> list[Signal]:
        """Data came: a no-data alert clears."""
        inst = self.ctx.by_rule.get(watch.compiled.id, {}).get(source)
        if inst is not None and inst.active:
            return [self.ctx.set_level(inst, -1, now, None)]
        return []

    def on_status(self, compiled: CompiledRule, status: DeviceStatus,
                  status_since: int, now: int) -> list[Signal]:
        if not compiled.rule.status:
            return []
        if status.state is Availability.ONLINE:
            inst = self.ctx.by_rule.get(compiled.id, {}).get(status.device)
            if inst is not None and inst.active:
                return [self.ctx.set_level(inst, -1, now, None, text=status.reason)]
        else:  # it may fire earlier than the rule's next check
            due = status_since + round(compiled.rule.after * NS)
            self.due[compiled.id] = min(self.due.get(compiled.id, due), due)
        return []

    def tick(self, compiled: CompiledRule, now: int) -> list[Signal]:
        return self.ctx.off_schedule(compiled, now)

    def caught_up(self, now: int) -> None:
        if self.hold_until:
            log.info("absence rules judge again after %.1fs of backlog",
                     (now - self.hold_until + round(RESTART_HOLD * NS)) / NS)
            self.hold_until = 0

    def scan(self, compiled: CompiledRule, now: int) -> list[Signal]:
        ctx = self.ctx
        rule = compiled.rule
        if self.hold_until and now < self.hold_until:
            return []
        link = self.link
        if link is not None and link.holds(now):
            return []  # the site's silence is its link's (rules/kinds/site_link.py)
        back = link.up_at if link is not None else 0
        if now < self.due.get(compiled.id, 0) and not rule.schedule:
            return []  # nothing can be due yet: no scan of every source
        out: list[Signal] = []
        in_schedule = ctx.in_schedules(rule.schedule, now)
        due = now + 3600 * NS
        mine = ctx.by_rule.get(compiled.id, {})
        for source in compiled.sources:
            data = ctx.data.get(source)
            deadline: int | None
            if rule.status:
                if data is not None and data.status is Availability.OFFLINE:
                    deadline = data.status_since + round(rule.after * NS)
                else:
                    deadline = None
                since = data.status_since if data is not None else now
                text = "通信中断"
            else:
                period = ctx.topology.sources[source].report_period
                limit = rule.after if rule.after is not None else rule.after_periods * period
                last = data.last_reading if data and data.last_reading else ctx.started_at
                last = max(last, back)  # silence counts from the link's return, if later
                deadline = last + round(limit * NS)
                since = last
                text = f"{(now - last) / NS:.0f}秒无数据"
            missing = deadline is not None and now >= deadline
            inst = mine.get(source)
            active = inst is not None and inst.active
            if missing and not active and not rule.status and link is not None \
                    and deadline is not None and link.unheard(deadline, now):
                due = min(due, now + NS)  # judged again as soon as the site is heard
                continue  # nothing from the whole site since: maybe a link gone quiet
            if missing and not active and not rule.status and self._gateway_down(source):
                # Its gateway is known to be away (its will came) and its offline alarm
                # waits for its hold: the device's silence is that outage, not news of its
                # own (a 10 s blip of the PLC's gateway must not raise the PLC's no-data).
                continue
            if missing and in_schedule and not active:
                inst = ctx.instance(compiled, source)
                out.append(ctx.set_level(inst, 0, now, rule.severity, text=text,
                                         detail={"since": since}))
            elif active and not missing and inst is not None:
                out.append(ctx.set_level(inst, -1, now, None))
            elif deadline is not None and not missing:
                due = min(due, deadline)
        self.due[compiled.id] = due
        return out

    def _gateway_down(self, source: str) -> bool:
        ctx = self.ctx
        src = ctx.topology.sources.get(source)
        if src is None or not src.gateway or src.gateway == source:
            return False
        gateway = ctx.data.get(src.gateway)
        if gateway is None or gateway.status is not Availability.OFFLINE:
            return False
        # Held only until the gateway's own offline alarm is up: then the device's raises
        # under it, suppressed as it is raised.
        return not any((inst := ctx.by_rule.get(c.id, {}).get(src.gateway)) is not None
                       and inst.active for c in self.rules if c.rule.status)
