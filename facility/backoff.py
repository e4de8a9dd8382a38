"""One reconnect policy for Modbus, MQTT and InfluxDB: jittered, growing, capped delays."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Full-jitter exponential backoff (the AWS architecture blog's variant).

    Each delay is uniform in [0, min(cap, initial * factor**attempt)], so many clients
    that lost the same server do not come back in lock step. `reset()` after a success.
    """

    initial: float = 0.2
    cap: float = 30.0
    factor: float = 2.0
    attempts: int = 0  # since the last success
    total_attempts: int = 0  # ever; exported as a metric
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * self.factor**self.attempts)
        self.attempts += 1
        self.total_attempts += 1
        # Never zero: a floor of a tenth of the ceiling keeps a tight loop impossible.
        return self.rng.uniform(ceiling / 10, ceiling)

    def reset(self) -> None:
        self.attempts = 0
