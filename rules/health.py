"""Alarm-system performance as ISA-18.2 (ANSI/ISA-18.2-2016 section 16, IEC 62682) measures
it, from the store's history. Every figure says how it was computed (`formulas`), as the
campus's report asks of every quantitative indicator.

Targets (ISA-18.2 table 'recommended alarm performance metrics', per operator position):
~1 annunciated alarm per 10 min (2 at most); < 1 % of 10-minute periods in flood (> 10
alarms); the top 10 alarms < 1-5 % of all; 0 chattering; < 5 stale (active > 24 h);
priorities about 80 % low, 15 % medium, 5 % high.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from rules.clock import NS
from rules.store import AlertStore

TEN_MIN = 600 * NS
FLOOD = 10  # alarms in 10 minutes
STALE = 24 * 3600 * NS


@dataclass
class AlarmHealth:
    site: str
    start: int
    end: int
    annunciated: int  # alarms raised and shown to the operator
    per_10_min_avg: float
    per_10_min_max: int
    per_hour_avg: float
    flood_periods: list[dict[str, int]]  # [{start, end, alarms}]
    flood_share: float  # of 10-minute periods, %
    top: list[dict[str, Any]]  # [{rule, source, count, share}]
    top10_share: float  # %
    chattering: list[dict[str, Any]]  # [{rule, source, raises, within_s}]
    stale: list[dict[str, Any]]  # [{alert, rule, source, active_h}]
    priority_share: dict[str, float]  # high/medium/low, %
    shelved: int
    suppressed: int
    out_of_service: int
    ack_median_s: float | None
    ack_p90_s: float | None
    formulas: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _band(priority: int) -> str:
    return "high" if priority <= 2 else "medium" if priority == 3 else "low"


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def alarm_health(store: AlertStore, site: str, start: int, end: int, *,
                       chatter_count: int = 3, chatter_window_s: float = 60.0) -> AlarmHealth:
    """Figures for raised alarms with start <= time < end (ns)."""
    history = await store.history(site=site, since=start, until=end)
    alerts = {a.id: a for a in await store.alerts(site, since=start - STALE, limit=100_000)}
    for a in await store.alerts(site, open_only=True, limit=100_000):
        alerts[a.id] = a
    raised = [h for h in history if h["action"] in ("raised", "re_raised")]
    shown = [h for h in raised if h["to_state"] == "active_unack"
             and alerts.get(h["alert"]) is not None and alerts[h["alert"]].category == "alarm"]
    periods = max(1, -(-(end - start) // TEN_MIN))
    buckets: Counter[int] = Counter((h["ts"] - start) // TEN_MIN for h in shown)
    floods: list[dict[str, int]] = []
    for index in sorted(b for b, n in buckets.items() if n > FLOOD):
        p_start = start + index * TEN_MIN
        if floods and floods[-1]["end"] == p_start:
            floods[-1]["end"] += TEN_MIN
            floods[-1]["alarms"] += buckets[index]
        else:
            floods.append({"start": p_start, "end": p_start + TEN_MIN, "alarms": buckets[index]})
    per_point: Counter[tuple[str, str]] = Counter()
    times: dict[tuple[str, str], list[int]] = defaultdict(list)
    for h in shown:
        a = alerts[h["alert"]]
        per_point[(a.rule, a.source)] += 1
    for h in raised:
        found = alerts.get(h["alert"])
        if found is not None:
            times[(found.rule, found.source)].append(h["ts"])
    total = len(shown)
    top: list[dict[str, Any]] = [
        {"rule": r, "source": s, "count": n, "share": round(100 * n / total, 1)}
        for (r, s), n in per_point.most_common(10)]
    chattering = []
    window = round(chatter_window_s * NS)
    for (rule, source), ts in times.items():
        ts.sort()
        best = 0
        j = 0
        for i in range(len(ts)):
            while ts[i] - ts[j] > window:
                j += 1
            best = max(best, i - j + 1)
        if best >= chatter_count:
            chattering.append({"rule": rule, "source": source, "raises": best,
                               "within_s": chatter_window_s})
    stale = [{"alert": a.id, "rule": a.rule, "source": a.source,
              "active_h": round((end - a.raised_at) / 3600 / NS, 1)}
             for a in alerts.values()
             if a.active and not a.closed_at and a.raised_at <= end - STALE]
    bands: Counter[str] = Counter(_band(alerts[h["alert"]].priority) for h in shown)
    acks = [(alerts[h["alert"]].acked_at - alerts[h["alert"]].raised_at) / NS for h in shown
            if alerts[h["alert"]].acked_at]
    states = Counter(a.state.value for a in alerts.values() if not a.closed_at)
    return AlarmHealth(
        site=site, start=start, end=end, annunciated=total,
        per_10_min_avg=round(total / periods, 2), per_10_min_max=max(buckets.values(), default=0),
        per_hour_avg=round(total / ((end - start) / 3600 / NS), 2) if end > start else 0.0,
        flood_periods=floods, flood_share=round(100 * sum(1 for n in buckets.values()
                                                          if n > FLOOD) / periods, 2),
        top=top, top10_share=round(sum(t["count"] for t in top) * 100 / total, 1) if total else 0,
        chattering=chattering, stale=stale,
        priority_share={b: round(100 * bands[b] / total, 1) if total else 0.0
                        for b in ("high", "medium", "low")},
        shelved=states["shelved"], suppressed=states["suppressed"],
        out_of_service=states["out_of_service"],
        ack_median_s=_percentile(acks, 0.5), ack_p90_s=_percentile(acks, 0.9),
        formulas={
            "annunciated": "count of 'raised'/'re_raised' transitions into active_unack of "
                           "category 'alarm' alerts with start <= ts < end",
            "per_10_min_avg": "annunciated / ceil((end - start) / 10 min)",
            "per_10_min_max": "max over 10-minute periods from start of annunciated alarms",
            "per_hour_avg": "annunciated / ((end - start) in hours)",
            "flood_share": f"100 x (10-minute periods with more than {FLOOD} alarms) / periods",
            "flood_periods": f"consecutive 10-minute periods with more than {FLOOD} alarms",
            "top10_share": "100 x (alarms of the 10 most frequent rule/source points) / "
                           "annunciated",
            "chattering": f"points with {chatter_count} or more raises within "
                          f"{chatter_window_s:.0f} s (any transition, annunciated or not)",
            "stale": "alerts still active and raised more than 24 h before end",
            "priority_share": "100 x annunciated alarms per band / annunciated; priority 1-2 "
                              "high, 3 medium, 4-5 low",
            "ack_median_s": "median of (acked_at - raised_at) over annunciated alarms "
                            "acknowledged",
            "shelved/suppressed/out_of_service": "open alerts in that state now",
        })
