"""Escalation: an alarm left unacknowledged goes to the next team of its rule's
`escalate:` ladder, counted from when the operator could see it."""

from __future__ import annotations

from facility.messages import AlertState
from rules.clock import NS
from rules.ledger import Ledger


def escalate(book: Ledger, now: int) -> None:
    for alert in book.open.values():
        if alert.state is not AlertState.ACTIVE_UNACK:
            continue
        compiled = book.rules.rules.get(alert.rule)
        if compiled is None:
            continue
        since = alert.unack_since or alert.raised_at
        due = [e for e in compiled.rule.escalate if now - since >= e.after * NS]
        for level in range(alert.escalation + 1, len(due) + 1):
            team = due[level - 1].to
            before = alert.state
            alert.escalation, alert.escalated_to = level, team
            book.record(alert, "escalated", before, now, "system",
                         f"not acknowledged in {due[level - 1].after:.0f}s",
                         {"level": level, "team": team})
            book.escalations.append((alert, team))
