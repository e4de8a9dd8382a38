"""The rule of shared loss detection, without I/O: a worker's marks (the sequence numbers
it stored, as bitmaps of WINDOW numbers per gateway) and `judge`, one checker round for a
gateway over the union of every worker's marks. ingest/ledger.py keeps them in PostgreSQL;
the module docstring there says how the pieces fit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

WINDOW = 4096  # numbers per bitmap: 512 bytes a row
RESTART_BELOW = 10  # a gateway that starts again sends 1, 2, ... (as ingest/sequence.py)
MAX_NOTICED = 100_000  # missing numbers timed per gateway; a bigger gap is counted at once


class LedgerUnavailable(Exception):
    """The shared store did not answer; the marks wait, the messages do not."""


class Marks:
    """The numbers one worker stored and has not recorded yet: (gateway, base) -> mask.
    Its `seen` is the converter's sequence hook (ingest/convert.py)."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, int], int] = defaultdict(int)

    def seen(self, gateway: str, seq: int, now: float = 0.0) -> None:
        if gateway and seq > 0:
            base = seq - seq % WINDOW
            self.windows[(gateway, base)] |= 1 << (seq - base)

    def take(self) -> Marks:
        taken = Marks()
        taken.windows, self.windows = self.windows, defaultdict(int)
        return taken

    def merge(self, other: Marks) -> None:
        for key, mask in other.windows.items():
            self.windows[key] |= mask

    def __len__(self) -> int:
        return len(self.windows)


@dataclass
class Verdict:
    """What one round of checking decided for a gateway."""

    next_seq: int
    lost: list[tuple[int, int]] = field(default_factory=list)  # (first, last) ranges
    late: int = 0
    restart: bool = False
    delete_below: int = 0  # windows with a smaller base are judged and can go
    delete_from: int | None = None  # on a restart, the old run's windows from here up

    @property
    def lost_count(self) -> int:
        return sum(last - first + 1 for first, last in self.lost)


def _numbers(mask: int, base: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(base + low.bit_length() - 1)
        mask ^= low
    return out


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def judge(next_seq: int, windows: dict[int, int], noticed: dict[int, float], now: float,
          grace: float, judged: set[int] | None = None) -> Verdict:
    """One gateway's round: `next_seq` its cursor (0: never seen), `windows` the union of
    all workers' bitmaps by base, `noticed` when each missing number was first seen
    missing and `judged` the numbers counted lost in the window still open (the checker's
    memory, both updated here: a judged number that turns up there is late)."""
    judged = set() if judged is None else judged
    if not windows:
        return Verdict(next_seq, delete_below=next_seq - next_seq % WINDOW)
    if next_seq <= 0:
        first = min(b for b, mask in windows.items() if mask)
        next_seq = _numbers(windows[first] & -windows[first], first)[0]
    open_base = next_seq - next_seq % WINDOW
    reappeared = sorted(n for b, mask in windows.items() if b < open_base
                        for n in _numbers(mask, b))
    verdict = Verdict(next_seq)
    if reappeared and reappeared[0] <= RESTART_BELOW < next_seq - 1:
        # A restart: what the old run still missed is lost now; the new run starts at its
        # lowest number. The old run's windows go; the new run's are the reappeared ones.
        old = {b: m for b, m in windows.items() if b >= open_base}
        high = max((n for b, m in old.items() for n in _numbers(m, b)), default=next_seq - 1)
        missing = [n for n in range(next_seq, high + 1) if not _present(windows, n)]
        noticed.clear()
        judged.clear()
        restarted = judge(reappeared[0], {b: m for b, m in windows.items() if b < open_base},
                          noticed, now, grace, judged)
        restarted.lost[:0] = _ranges(missing)
        restarted.restart = True
        restarted.delete_from = open_base
        return restarted
    back = [n for n in judged if _present(windows, n)]
    judged.difference_update(back)
    verdict.late = len(reappeared) + len(back)
    high = max(n for b, mask in windows.items() if b >= open_base for n in _numbers(mask, b)) \
        if any(b >= open_base and m for b, m in windows.items()) else next_seq - 1
    missing = _missing(windows, next_seq, high)
    lost: list[int] = []
    if len(missing) > MAX_NOTICED:  # too many to time one by one: a gap that big is loss
        lost = missing
        next_seq = high + 1
    else:
        next_seq = high + 1
        blocked = False
        for n in missing:  # every gap is timed from the round that first saw it
            since = noticed.setdefault(n, now)
            if blocked:
                continue
            if now - since < grace:
                next_seq = n  # still within the grace: judged in a later round
                blocked = True
            else:
                lost.append(n)
    for n in [n for n in noticed if n < next_seq]:
        del noticed[n]
    verdict.next_seq = next_seq
    verdict.lost = _ranges(lost)
    verdict.delete_below = next_seq - next_seq % WINDOW
    judged.update(lost)
    judged.difference_update([n for n in judged if n < verdict.delete_below])
    return verdict


def _present(windows: dict[int, int], n: int) -> bool:
    base = n - n % WINDOW
    return bool(windows.get(base, 0) >> (n - base) & 1)


def _missing(windows: dict[int, int], first: int, last: int) -> list[int]:
    """The numbers in [first, last] no worker recorded, in order."""
    out: list[int] = []
    if last < first:
        return out
    for base in range(first - first % WINDOW, last + 1, WINDOW):
        lo, hi = max(first, base), min(last, base + WINDOW - 1)
        span = ((1 << (hi - lo + 1)) - 1) << (lo - base)
        out.extend(_numbers(~windows.get(base, 0) & span, base))
    return out


