"""Seeded, counter-based randomness: the same seed and key always give the same number.

Every random quantity is looked up by a key (device, quantity, time bucket) instead of
drawn from a shared generator, so a value does not depend on how often or in what order
the simulation was sampled. That is what makes a run reproducible: same seed and same
clock times give the same readings.
"""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from dataclasses import dataclass

Key = str | int | float


@dataclass(frozen=True)
class Noise:
    seed: int

    def _bits(self, key: tuple[Key, ...]) -> int:
        # repr() of ints, floats and strings is stable across processes, unlike hash().
        digest = hashlib.blake2b(repr((self.seed, *key)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    def uniform(self, *key: Key) -> float:
        """In [0, 1)."""
        return (self._bits(key) >> 11) / float(1 << 53)

    def between(self, low: float, high: float, *key: Key) -> float:
        return low + (high - low) * self.uniform(*key)

    def gauss(self, *key: Key) -> float:
        """Standard normal (Box-Muller on two keyed uniforms)."""
        u1 = 1.0 - self.uniform(*key, "g1")  # (0, 1], so log() is finite
        u2 = self.uniform(*key, "g2")
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def integer(self, low: int, high: int, *key: Key) -> int:
        """In [low, high]."""
        return low + self._bits(key) % (high - low + 1)

    def rng(self, *key: Key) -> random.Random:
        """A generator of its own for one keyed sequence (e.g. a day's schedule)."""
        return random.Random(self._bits(key))

    def uuid4(self, *key: Key) -> uuid.UUID:
        raw = bytearray(self._bits((*key, "a")).to_bytes(8, "big")
                        + self._bits((*key, "b")).to_bytes(8, "big"))
        return uuid.UUID(bytes=bytes(raw), version=4)

    def hex(self, digits: int, *key: Key) -> str:
        return f"{self._bits(key):016x}"[:digits]

    def smooth(self, t: float, period: float, *key: Key) -> float:
        """Noise that drifts smoothly: a standard normal per `period`, cosine-interpolated."""
        k = math.floor(t / period)
        frac = t / period - k
        w = (1 - math.cos(math.pi * frac)) / 2
        return (1 - w) * self.gauss(*key, k) + w * self.gauss(*key, k + 1)
