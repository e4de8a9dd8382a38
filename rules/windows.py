"""Sliding windows over one value of one source, for rate(), delta(), avg(), max_of(),
min_of(): each new sample updates running sums and monotonic queues, so a query costs
the same whether the window holds 3 samples or 2,000 (recomputing over every sample on
every reading was a large share of the engine's time at high rates).

A window holds the samples whose time is within `seconds` of the newest sample (the
readings' own times, not the clock), at most MAX_SAMPLES of them.
"""

from __future__ import annotations

from collections import deque

from rules.clock import NS

MAX_SAMPLES = 2000  # per window: a bound on memory whatever the reporting rate
MIN_SPAN = 60.0  # rate() needs samples spanning a quarter of min(window, this), s


class Window:
    """Samples of one value within `seconds` of the newest, with running aggregates."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.span_ns = round(seconds * NS)
        self.samples: deque[tuple[int, float]] = deque()
        # (sequence number, value) of candidates: decreasing values, max first; increasing
        # values, min first. Sequence numbers, not times: two samples may share a time.
        self._highs: deque[tuple[int, float]] = deque()
        self._lows: deque[tuple[int, float]] = deque()
        self._first = 0  # sequence number of samples[0]
        self._next = 0  # sequence number of the next sample
        self._origin = 0  # ns; x of the sums is minutes since here (kept near the data)
        self._n = 0
        self._sx = self._sy = self._sxx = self._sxy = 0.0

    def add(self, ts: int, value: float) -> None:
        if not self.samples or ts - self._origin > 4 * self.span_ns + 60 * NS:
            self._rebase(ts)
        self.samples.append((ts, value))
        x = (ts - self._origin) / (60 * NS)
        self._n += 1
        self._sx += x
        self._sy += value
        self._sxx += x * x
        self._sxy += x * value
        seq = self._next
        self._next += 1
        highs, lows = self._highs, self._lows
        while highs and highs[-1][1] <= value:
            highs.pop()
        highs.append((seq, value))
        while lows and lows[-1][1] >= value:
            lows.pop()
        lows.append((seq, value))
        oldest = ts - self.span_ns
        samples = self.samples
        while samples[0][0] < oldest or len(samples) > MAX_SAMPLES:
            self._drop()

    def _drop(self) -> None:
        ts, value = self.samples.popleft()
        x = (ts - self._origin) / (60 * NS)
        self._n -= 1
        self._sx -= x
        self._sy -= value
        self._sxx -= x * x
        self._sxy -= x * value
        if self._highs and self._highs[0][0] == self._first:
            self._highs.popleft()
        if self._lows and self._lows[0][0] == self._first:
            self._lows.popleft()
        self._first += 1

    def _rebase(self, ts: int) -> None:
        """Move the origin of the sums to `ts` and recompute them (rounding stays small)."""
        self._origin = ts
        self._n = 0
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        for t, v in self.samples:
            x = (t - ts) / (60 * NS)
            self._n += 1
            self._sx += x
            self._sy += v
            self._sxx += x * x
            self._sxy += x * v

    def rate(self) -> float | None:
        """Change per minute: the least-squares slope over the window's samples."""
        n = self._n
        if n < 2:
            return None
        samples = self.samples
        if samples[-1][0] - samples[0][0] < min(self.seconds, MIN_SPAN) * NS / 4:
            return None
        var = self._sxx - self._sx * self._sx / n
        if var <= 1e-12:
            return None
        return (self._sxy - self._sx * self._sy / n) / var

    def delta(self) -> float | None:
        return self.samples[-1][1] - self.samples[0][1] if len(self.samples) >= 2 else None

    def avg(self) -> float | None:
        return self._sy / self._n if self._n else None

    def max_of(self) -> float | None:
        return self._highs[0][1] if self._highs else None

    def min_of(self) -> float | None:
        return self._lows[0][1] if self._lows else None


class Series:
    """One value of one source: the windows its rules ask for (a sample goes to each)."""

    def __init__(self) -> None:
        self.windows: dict[float, Window] = {}
        self.newest = 0  # ns of the newest sample taken

    def window(self, seconds: float) -> Window:
        found = self.windows.get(seconds)
        if found is None:
            found = self.windows[seconds] = Window(seconds)
            longest = max(self.windows.values(), key=lambda w: w.seconds)
            for ts, value in longest.samples:  # a new window starts from what is known
                found.add(ts, value)
        return found

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
        return list(max(self.windows.values(), key=lambda w: w.seconds).samples)
