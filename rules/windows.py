"""Sliding windows over one value of one source, for rate(), delta(), avg(), max_of(),
min_of(): each new sample updates running sums and monotonic queues, so a query costs
the same whether the window holds 3 samples or 2,000 (recomputing over every sample on
every reading was a large share of the engine's time at high rates).

Samples live in `array` buffers, not in deques of tuples: the garbage collector walks
every element of a deque on each full collection, and a few thousand windows of a
thousand samples made those pauses 20-90 ms under load. Arrays hold plain numbers it
does not look into.

A window holds the samples whose time is within `seconds` of the newest sample (the
readings' own times, not the clock), at most MAX_SAMPLES of them.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections import deque

from rules.clock import NS

MAX_SAMPLES = 2000  # per window: a bound on memory whatever the reporting rate
MIN_SPAN = 60.0  # rate() needs samples spanning a quarter of min(window, this), s
_MINUTE = 60 * NS


class Window:
    """Samples of one value within `seconds` of the newest, with running aggregates."""

    __slots__ = ("_first", "_highs", "_lows", "_n", "_next", "_origin", "_start", "_sx",
                 "_sxx", "_sxy", "_sy", "_times", "_values", "extremes", "seconds", "span_ns")

    def __init__(self, seconds: float, extremes: bool = True) -> None:
        self.seconds = seconds
        self.extremes = extremes  # keep the max/min queues (only max_of/min_of need them)
        self.span_ns = round(seconds * NS)
        self._times = array("q")  # ns; live samples are [_start:]
        self._values = array("d")
        self._start = 0
        # Sequence numbers of candidates for the maximum (values decreasing) and the
        # minimum (increasing); numbers, not times: two samples may share a time.
        self._highs: deque[int] = deque()
        self._lows: deque[int] = deque()
        self._first = 0  # sequence number of the oldest live sample
        self._next = 0  # sequence number of the next sample
        self._origin = 0  # ns; x of the sums is minutes since here (kept near the data)
        self._n = 0
        self._sx = self._sy = self._sxx = self._sxy = 0.0

    def __len__(self) -> int:
        return self._n

    def _value(self, seq: int) -> float:
        return self._values[self._start + seq - self._first]

    def add(self, ts: int, value: float) -> None:
        if not self._n or ts - self._origin > 4 * self.span_ns + _MINUTE:
            self._rebase(ts)
        self._times.append(ts)
        self._values.append(value)
        x = (ts - self._origin) / _MINUTE
        self._n += 1
        self._sx += x
        self._sy += value
        self._sxx += x * x
        self._sxy += x * value
        seq = self._next
        self._next += 1
        if self.extremes:
            highs, lows = self._highs, self._lows
            while highs and self._value(highs[-1]) <= value:
                highs.pop()
            highs.append(seq)
            while lows and self._value(lows[-1]) >= value:
                lows.pop()
            lows.append(seq)
        oldest = ts - self.span_ns
        while self._times[self._start] < oldest or self._n > MAX_SAMPLES:
            self._drop()
        if self._start > 1024 and self._start * 2 > len(self._times):
            del self._times[:self._start]  # compact now and then: amortised O(1)
            del self._values[:self._start]
            self._start = 0

    def _drop(self) -> None:
        ts, value = self._times[self._start], self._values[self._start]
        self._start += 1
        x = (ts - self._origin) / _MINUTE
        self._n -= 1
        self._sx -= x
        self._sy -= value
        self._sxx -= x * x
        self._sxy -= x * value
        if self._highs and self._highs[0] == self._first:
            self._highs.popleft()
        if self._lows and self._lows[0] == self._first:
            self._lows.popleft()
        self._first += 1

    def _rebase(self, ts: int) -> None:
        """Move the origin of the sums to `ts` and recompute them (rounding stays small)."""
        self._origin = ts
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        for t, v in self.samples():
            x = (t - ts) / _MINUTE
            self._sx += x
            self._sy += v
            self._sxx += x * x
            self._sxy += x * v

    def samples(self) -> list[tuple[int, float]]:
        start = self._start
        return list(zip(self._times[start:], self._values[start:], strict=True))

    def arrays(self) -> tuple[array[int], array[float]]:
        """Copies of the live samples' times and values."""
        return self._times[self._start:], self._values[self._start:]

    def rate(self) -> float | None:
        """Change per minute: the least-squares slope over the window's samples."""
        n = self._n
        if n < 2:
            return None
        if self._times[-1] - self._times[self._start] < min(self.seconds, MIN_SPAN) * NS / 4:
            return None
        var = self._sxx - self._sx * self._sx / n
        if var <= 1e-12:
            return None
        return (self._sxy - self._sx * self._sy / n) / var

    def delta(self) -> float | None:
        return self._values[-1] - self._values[self._start] if self._n >= 2 else None

    def avg(self) -> float | None:
        return self._sy / self._n if self._n else None

    def max_of(self) -> float | None:
        if not self.extremes:
            return max(self._values[self._start:]) if self._n else None
        return self._value(self._highs[0]) if self._highs else None

    def min_of(self) -> float | None:
        if not self.extremes:
            return min(self._values[self._start:]) if self._n else None
        return self._value(self._lows[0]) if self._lows else None


class Series:
    """One value of one source: the windows its rules ask for (a sample goes to each)."""

    __slots__ = ("newest", "windows")

    def __init__(self) -> None:
        self.windows: dict[float, Window] = {}
        self.newest = 0  # ns of the newest sample taken

    def window(self, seconds: float, extremes: bool = True) -> Window:
        found = self.windows.get(seconds)
        if found is not None and (found.extremes or not extremes):
            return found
        # New, or now read by max_of/min_of too (a reload): it starts from what is known.
        known = found or max(self.windows.values(), key=lambda w: w.seconds, default=None)
        window = self.windows[seconds] = Window(seconds, extremes)
        if known is not None:
            for ts, value in known.samples():
                window.add(ts, value)
        return window

    def add(self, ts: int, value: float) -> bool:
        """Take a sample; False for one older than the newest (a buffered uplink's late
        message is not part of the trend)."""
        if ts < self.newest:
            return False
        self.newest = ts
        for window in self.windows.values():
            window.add(ts, value)
        return True

    def samples(self) -> list[tuple[int, float]]:
        """The samples of the longest window (every shorter one is a tail of it)."""
        if not self.windows:
            return []
        return max(self.windows.values(), key=lambda w: w.seconds).samples()

    def dump(self) -> dict[str, str]:
        """The samples of the longest window as two base64 arrays (times int64, values
        float64, little-endian): copied, not walked sample by sample, for the store."""
        if not self.windows:
            return {"t": "", "v": ""}
        longest = max(self.windows.values(), key=lambda w: w.seconds)
        times, values = longest.arrays()
        if sys.byteorder != "little":
            times.byteswap()
            values.byteswap()
        return {"t": base64.b64encode(times.tobytes()).decode(),
                "v": base64.b64encode(values.tobytes()).decode()}

    def load(self, dumped: dict[str, str]) -> None:
        times, values = array("q"), array("d")
        times.frombytes(base64.b64decode(dumped.get("t", "")))
        values.frombytes(base64.b64decode(dumped.get("v", "")))
        if sys.byteorder != "little":
            times.byteswap()
            values.byteswap()
        for ts, value in zip(times, values, strict=False):
            self.add(ts, value)
