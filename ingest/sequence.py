"""Loss detection end to end: every reading and event carries its gateway's sequence
number; a number that never arrives is a message lost somewhere between the gateway and
InfluxDB (a broker restart beyond its limits, a dropped queue).

QoS 1 redelivery and reconnects can bring numbers late or twice, so a missing number is
only counted as lost after `grace` seconds. A gateway that restarts counts from 1 again.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

RESTART_BELOW = 10  # a gateway that starts again sends 1, 2, ...
MAX_TRACKED = 100_000  # missing numbers remembered per gateway; beyond, counted at once


@dataclass
class Gap:
    missing: dict[int, float] = field(default_factory=dict)  # seq -> when noticed
    last: int = 0


class SequenceTracker:
    def __init__(self, grace: float = 60.0) -> None:
        self.grace = grace
        self.gateways: dict[str, Gap] = {}
        self.lost: Counter[str] = Counter()
        self.late: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()

    def seen(self, gateway: str, seq: int, now: float) -> None:
        if not gateway or seq <= 0:
            return
        state = self.gateways.get(gateway)
        if state is None:
            self.gateways[gateway] = Gap(last=seq)
            return
        if seq == state.last + 1:
            state.last = seq
        elif seq > state.last:
            first = state.last + 1
            if seq - first > MAX_TRACKED:
                self._report(gateway, seq - first, f"{first}..{seq - 1}")
            else:
                for missing in range(first, seq):
                    state.missing[missing] = now
            state.last = seq
        elif state.missing.pop(seq, None) is not None:
            self.late[gateway] += 1
        elif seq <= RESTART_BELOW < state.last:
            self.restarts[gateway] += 1
            self._expire(gateway, state, now, force=True)
            self.gateways[gateway] = Gap(last=seq)
        else:
            self.duplicates[gateway] += 1

    def check(self, now: float) -> int:
        """Count as lost what stayed missing longer than the grace; returns how many."""
        return sum(self._expire(g, s, now) for g, s in list(self.gateways.items()))

    def _expire(self, gateway: str, state: Gap, now: float, force: bool = False) -> int:
        expired = [s for s, since in state.missing.items() if force or now - since >= self.grace]
        for seq in expired:
            del state.missing[seq]
        if expired:
            self._report(gateway, len(expired), f"{min(expired)}..{max(expired)}")
        return len(expired)

    def _report(self, gateway: str, count: int, span: str) -> None:
        self.lost[gateway] += count
        log.error("gateway %s: %d messages never arrived (sequence %s)", gateway, count, span)
