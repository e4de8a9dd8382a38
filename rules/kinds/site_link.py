"""`site_link`: the site's link to the centre (a Mosquitto bridge, facility/bridge.py) as
one alert, and the hold it puts on the site's communication alarms.

Mosquitto writes the link's state on facility/v1/{site}/link/{bridge}: "1" when the bridge
connects, "0" (its will, published by the central broker) when it drops. A link down for
the rule's `after` raises one alert for the site, whose source is the bridge; "1" clears it.

While the link is down the centre hears nothing from the site, so the silence of its
devices is the link's, not news of their own: absence rules do not judge the site's
devices at all (rules/kinds/absence.py asks `holds()`), and there is no per-device alarm,
not even a suppressed one. When the link is back, the site broker sends what it queued,
in order; until that backlog is in (the first input no older than FRESH, or CATCH_UP at
the most) they still wait, and a device's silence counts from the link's return, never
from before the cut: the readings flowing in after a reconnect raise no stale no-data
alarm. What the backlog itself says (a fire alarm during the cut) is raised as it comes,
marked late like any late input.

A link that goes quiet without closing (a WAN that drops packets) is called down only by
the brokers' keepalives, 1.5 x the bridge's keepalive later. Until then a device's no-data
waits while nothing at all came from the site after its deadline, for at most the rule's
`detect`: one reading from anywhere on the site shows the link works and the device is
silent on its own.
"""

from __future__ import annotations

from facility import labels
from rules.clock import NS
from rules.config import CompiledRule, RuleSet
from rules.kinds.base import Context, Kind, Signal

FRESH = 5 * NS  # an input this young after the link came back: the backlog is in
CATCH_UP = 120 * NS  # the longest the absence rules wait for the backlog after a return


class SiteLink(Kind):
    type = "site_link"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.rules: list[CompiledRule] = []
        self.down: dict[str, int] = {}  # bridge -> since when its link is down
        self.bridged = False  # a link state came: the site is behind a bridge
        self.up_at = 0  # when a link last came back
        self.catching_up = False  # its backlog is still coming
        self.last_input = 0  # when anything last came from the site (clock time)
        self.detect = 0  # ns a silent link may take to be called down

    def load(self, rules: RuleSet, old: RuleSet | None) -> None:
        self.rules = [c for c in rules.rules.values() if c.rule.type == "site_link"]
        self.detect = max((round(c.rule.detect * NS) for c in self.rules), default=0)

    def on_link(self, bridge: str, up: bool, now: int) -> list[Signal]:
        self.bridged = True
        ctx = self.ctx
        if not up:
            self.down.setdefault(bridge, now)
            return []
        if self.down.pop(bridge, None) is not None:
            self.up_at = now
            self.catching_up = True
        out: list[Signal] = []
        for compiled in self.rules:
            inst = ctx.by_rule.get(compiled.id, {}).get(bridge)
            if inst is not None and inst.active:
                out.append(ctx.set_level(inst, -1, now, None, text=labels.SITE_LINK["restored"]))
        return out

    def heard(self, now: int, lag: int) -> None:
        """An input from the site (every reading): the backlog is in when one is fresh."""
        self.last_input = now
        if self.catching_up and lag < FRESH:
            self.catching_up = False

    def holds(self, now: int) -> bool:
        """Whether the site's absence rules must not judge now: its link is down, or its
        backlog is still coming in."""
        if self.down:
            return True
        if self.catching_up and now - self.up_at >= CATCH_UP:
            self.catching_up = False
        return self.catching_up

    def unheard(self, deadline: int, now: int) -> bool:
        """Nothing came from the site since a device's deadline, and a silent link could
        still be what it is (within `detect`)."""
        return self.bridged and self.last_input < deadline and now - deadline < self.detect

    def tick(self, compiled: CompiledRule, now: int) -> list[Signal]:
        ctx = self.ctx
        rule = compiled.rule
        out: list[Signal] = []
        for bridge, since in self.down.items():
            if now - since < round(rule.after * NS):
                continue
            inst = ctx.instance(compiled, bridge)
            if not inst.active:
                out.append(ctx.set_level(inst, 0, now, rule.severity,
                                         text=labels.SITE_LINK["unreachable_text"],
                                         detail={"since": since, "bridge": bridge}))
        return out
