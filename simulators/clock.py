"""The simulated clock every simulator reads instead of `time.time()`.

Simulated time runs at `scale` simulated seconds per wall second from `start`. It can be
paused, sped up, slowed down or jumped forward; tests freeze it (scale 0 or paused) to
compare exact values, and advance it instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    def __init__(self, start: float | None = None, scale: float = 1.0,
                 wall: Callable[[], float] = time.time) -> None:
        if scale < 0:
            raise ValueError(f"clock scale must be >= 0, not {scale}")
        self._wall = wall
        self._base_wall = wall()
        self._base_sim = self._base_wall if start is None else float(start)
        self._scale = float(scale)
        self._paused = False
        self._listeners: list[Callable[[], None]] = []

    # Reading.
    def now(self) -> float:
        """Simulated epoch seconds."""
        if self._paused or self._scale == 0:
            return self._base_sim
        return self._base_sim + (self._wall() - self._base_wall) * self._scale

    def now_ns(self) -> int:
        return round(self.now() * 1e9)

    @property
    def running(self) -> bool:
        """True while simulated time moves on its own."""
        return not self._paused and self._scale > 0

    def wall_delay(self, sim_seconds: float) -> float | None:
        """Wall seconds until `sim_seconds` of simulated time have passed; None if frozen."""
        if not self.running:
            return None
        return max(0.0, sim_seconds / self._scale)

    # Steering.
    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"clock scale must be >= 0, not {value}")
        self._rebase()
        self._scale = float(value)
        self._changed()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._rebase()
        self._paused = True
        self._changed()

    def resume(self) -> None:
        self._base_wall = self._wall()
        self._paused = False
        self._changed()

    def advance(self, seconds: float) -> None:
        """Jump forward; works while paused."""
        if seconds < 0:
            raise ValueError("the simulated clock only moves forward")
        self._base_sim += seconds
        self._changed()

    # Whoever waits in simulated time (the MQTT device loops) re-plans on every change.
    def add_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _rebase(self) -> None:
        self._base_sim = self.now()
        self._base_wall = self._wall()

    def _changed(self) -> None:
        for callback in list(self._listeners):
            callback()

    def __repr__(self) -> str:
        state = "paused" if self._paused else f"x{self._scale:g}"
        return f"SimClock({self.now():.3f}, {state})"
