"""Alarm-system performance as ISA-18.2 (ANSI/ISA-18.2-2016 section 16, IEC 62682) measures
it, from the store's history. Every figure says how it was computed (`formulas`), as the
campus's report asks of every quantitative indicator.

Targets (ISA-18.2 table 'recommended alarm performance metrics', per operator position):
~1 annunciated alarm per 10 min (2 at most); < 1 % of 10-minute periods in flood (> 10
alarms); the top 10 alarms < 1-5 % of all; 0 chattering; < 5 stale (active > 24 h);
priorities about 80 % low, 15 % medium, 5 % high.

What counts as annunciated (shown to the operator). The history is read a *moment* at a
time: the transitions of one alert with the same `ts`. An engine step stamps everything it
does with its one `now` (dedupe, suppression, grouping, routing), so an alert raised and
suppressed in the same step never reached a screen; what the operator was shown is the
state after the moment, the `to_state` of its last transition. An alarm (category
'alarm'; reports need no acknowledgement and are not counted) is annunciated:

- once per activation ('raised' or 're_raised'), at the first moment of that activation
  after which it is active and shown (`active_unack` or `active_ack`): at once if it was
  raised in view, or later when it is unsuppressed, unshelved or returned to service while
  still active. An activation hidden (suppressed, shelved, out of service) for its whole
  active life is never annunciated; it is counted apart, in `not_annunciated`. Being
  hidden and shown again within one activation is not a new annunciation: the operator has
  already had it, and its acknowledgement stands;
- again at each 'severity_raised' while it is active and shown before and after the
  moment: the worse condition takes back the acknowledgement and asks for a new one, so
  it is a new annunciation, as ISA-18.2 counts a high-high after its high.

The moment is the engine's `now`. One caveat: the service takes a chunk of messages with
one reading of the clock, and stores and publishes after every message that changes
alerts; an alert raised by one message and suppressed by the next of the same chunk
shares their `ts` and is taken as never shown, though it was published for the moment
between them (a millisecond or so). The history has no step number to tell them apart.

Time: the worst 10 minutes is a sliding window, the most annunciations in any [t, t + 10
min) that starts at an annunciation. Flood periods are 10-minute periods aligned to the
clock (multiples of 10 minutes since the Unix epoch: :00, :10, ... of the local clock in
every time zone whose offset from UTC is a whole number of 10 minutes, Asia/Shanghai
among them), so the same history gives the same figures whenever it is asked. A period
that [start, end) cuts counts the annunciations inside the range only. Figures read only
the history in [start, end) (and, for alarms hidden when the range starts, their earlier
history), never what happened after `end`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from rules.alerts import Alert
from rules.clock import NS
from rules.store import AlertStore

TEN_MIN = 600 * NS
FLOOD = 10  # alarms in 10 minutes
STALE = 24 * 3600 * NS

SHOWN = frozenset({"active_unack", "active_ack"})  # active and in front of the operator
HIDDEN = frozenset({"suppressed", "shelved", "out_of_service"})
ACTIVATIONS = frozenset({"raised", "re_raised"})


@dataclass
class AlarmHealth:
    site: str
    start: int
    end: int
    annunciated: int  # alarm annunciations: what the operator was shown
    per_10_min_avg: float
    per_10_min_max: int  # sliding window
    per_hour_avg: float
    flood_periods: list[dict[str, int]]  # [{start, end, alarms}], aligned to the clock
    flood_share: float  # of the range's time, %
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
    not_annunciated: int = 0  # alarm activations hidden for all their active life
    formulas: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Annunciation:
    alert: str
    ts: int
    why: str  # raised, re_raised, unsuppressed, unshelved, ..., severity_raised


def _band(priority: int) -> str:
    return "high" if priority <= 2 else "medium" if priority == 3 else "low"


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _moments(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """One alert's transitions (oldest first) grouped by ts, in order."""
    out: list[list[dict[str, Any]]] = []
    for row in rows:
        if out and out[-1][0]["ts"] == row["ts"]:
            out[-1].append(row)
        else:
            out.append([row])
    return out


def annunciations(rows: list[dict[str, Any]], start: int) -> tuple[list[Annunciation], int]:
    """One alert's annunciations with ts >= start, and how many of its activations with
    ts >= start were never shown, from its transitions (oldest first; those before
    `start` only to know whether the activation going on at `start` was shown)."""
    out: list[Annunciation] = []
    hidden = 0
    shown = False  # this activation has been in front of the operator
    pending = False  # an activation since start not (yet) shown
    moments = _moments(rows)
    if moments and moments[0][0]["from_state"] in SHOWN:
        shown = True  # the history begins part-way through an activation that was shown
    for moment in moments:
        ts, actions = moment[0]["ts"], [r["action"] for r in moment]
        before, after = moment[0]["from_state"], moment[-1]["to_state"]
        activation = next((a for a in actions if a in ACTIVATIONS), "")
        if activation:
            hidden += pending
            shown, pending = False, ts >= start
        if after in SHOWN and not shown:
            shown, pending = True, False
            if ts >= start:
                why = activation or next((r["action"] for r in moment
                                          if r["from_state"] in HIDDEN
                                          and r["to_state"] not in HIDDEN), actions[-1])
                out.append(Annunciation(moment[0]["alert"], ts, why))
        elif after in SHOWN and before in SHOWN and "severity_raised" in actions \
                and ts >= start:
            out.append(Annunciation(moment[0]["alert"], ts, "severity_raised"))
    return out, hidden + pending


def worst_window(times: list[int], width: int = TEN_MIN) -> int:
    """The most times in any [t, t + width) that starts at one of them."""
    ordered = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ordered):
        j = max(j, i)
        while j < len(ordered) and ordered[j] < t + width:
            j += 1
        best = max(best, j - i)
    return best


def flood_periods(times: list[int]) -> list[dict[str, int]]:
    """Runs of 10-minute periods aligned to the clock with more than FLOOD alarms each."""
    buckets: Counter[int] = Counter(t // TEN_MIN for t in times)
    floods: list[dict[str, int]] = []
    for index in sorted(b for b, n in buckets.items() if n > FLOOD):
        p_start = index * TEN_MIN
        if floods and floods[-1]["end"] == p_start:
            floods[-1]["end"] += TEN_MIN
            floods[-1]["alarms"] += buckets[index]
        else:
            floods.append({"start": p_start, "end": p_start + TEN_MIN,
                           "alarms": buckets[index]})
    return floods


async def alarm_health(store: AlertStore, site: str, start: int, end: int, *,
                       chatter_count: int = 3, chatter_window_s: float = 60.0) -> AlarmHealth:
    """Figures for the history with start <= ts < end (ns)."""
    history = await store.history(site=site, since=start, until=end)
    alerts = {a.id: a for a in await store.alerts(site, since=start - STALE, limit=100_000)}
    for a in await store.alerts(site, open_only=True, limit=100_000):
        alerts[a.id] = a
    by_alert: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for h in history:
        by_alert[h["alert"]].append(h)
    for alert_id in by_alert:
        if alert_id not in alerts:  # raised long before, closed since
            found = await store.alert(alert_id)
            if found is not None:
                alerts[alert_id] = found

    # A drill's (演练) alerts test the people, not the alarm system: none is counted.
    drills = {alert_id for alert_id, a in alerts.items() if a.drill}
    for alert_id in drills:
        del alerts[alert_id]
        by_alert.pop(alert_id, None)
    history = [h for h in history if h["alert"] not in drills]

    def alarm(alert_id: str) -> Alert | None:
        found = alerts.get(alert_id)
        return found if found is not None and found.category == "alarm" else None

    shown: list[Annunciation] = []
    hidden = 0
    for alert_id, rows in by_alert.items():
        if alarm(alert_id) is None:
            continue
        first = rows[0]
        if first["action"] not in ACTIVATIONS and first["from_state"] in HIDDEN:
            # Hidden when the range starts: was this activation shown before it?
            rows = [h for h in await store.history(alert_id) if h["ts"] < end]
        mine, never = annunciations(rows, start)
        shown += mine
        hidden += never
    shown.sort(key=lambda n: (n.ts, n.alert))
    times = [n.ts for n in shown]
    floods = flood_periods(times)
    in_flood = sum(min(end, f["end"]) - max(start, f["start"]) for f in floods)
    periods = max(1, -(-(end - start) // TEN_MIN))

    per_point: Counter[tuple[str, str]] = Counter()
    for n in shown:
        a = alerts[n.alert]
        per_point[(a.rule, a.source)] += 1
    times_of: dict[tuple[str, str], list[int]] = defaultdict(list)
    for h in history:
        found_alert = alerts.get(h["alert"])
        if h["action"] in ACTIVATIONS and found_alert is not None:
            times_of[(found_alert.rule, found_alert.source)].append(h["ts"])
    total = len(shown)
    top: list[dict[str, Any]] = [
        {"rule": r, "source": s, "count": n, "share": round(100 * n / total, 1)}
        for (r, s), n in per_point.most_common(10)]
    chattering = []
    window = round(chatter_window_s * NS)
    for (rule, source), ts in times_of.items():
        best = worst_window(ts, window + 1)  # raises at most `window` apart, ends included
        if best >= chatter_count:
            chattering.append({"rule": rule, "source": source, "raises": best,
                               "within_s": chatter_window_s})
    stale = [{"alert": a.id, "rule": a.rule, "source": a.source,
              "active_h": round((end - a.raised_at) / 3600 / NS, 1)}
             for a in alerts.values()
             if a.active and not a.closed_at and a.raised_at <= end - STALE]
    bands: Counter[str] = Counter(_band(alerts[n.alert].priority) for n in shown)
    shown_of: dict[str, list[int]] = defaultdict(list)
    for n in shown:
        shown_of[n.alert].append(n.ts)
    acks: list[float] = []
    for alert_id, ann in shown_of.items():
        acked = [h["ts"] for h in by_alert[alert_id] if h["action"] == "acknowledged"]
        for i, at in enumerate(ann):
            until = ann[i + 1] if i + 1 < len(ann) else end
            first_ack = next((t for t in acked if at <= t < until), None)
            if first_ack is not None:
                acks.append((first_ack - at) / NS)
    states = Counter(a.state.value for a in alerts.values() if not a.closed_at)
    return AlarmHealth(
        site=site, start=start, end=end, annunciated=total,
        per_10_min_avg=round(total / periods, 2), per_10_min_max=worst_window(times),
        per_hour_avg=round(total / ((end - start) / 3600 / NS), 2) if end > start else 0.0,
        flood_periods=floods,
        flood_share=round(100 * in_flood / (end - start), 2) if end > start else 0.0,
        top=top, top10_share=round(sum(t["count"] for t in top) * 100 / total, 1) if total else 0,
        chattering=chattering, stale=stale,
        priority_share={b: round(100 * bands[b] / total, 1) if total else 0.0
                        for b in ("high", "medium", "low")},
        shelved=states["shelved"], suppressed=states["suppressed"],
        out_of_service=states["out_of_service"],
        ack_median_s=_percentile(acks, 0.5), ack_p90_s=_percentile(acks, 0.9),
        not_annunciated=hidden,
        formulas={
            "annunciated": "annunciations of category 'alarm' alerts (not a drill's) with "
                           "start <= ts < end: "
                           "once per activation (raised/re_raised), at the first moment "
                           "(transitions of one alert with one ts) after which it is active "
                           "and shown (active_unack/active_ack, not suppressed, shelved or "
                           "out of service), and again at each severity_raised while shown",
            "not_annunciated": "activations of 'alarm' alerts with start <= ts < end not "
                               "shown before their next activation or end (suppressed, "
                               "shelved or out of service all the while)",
            "per_10_min_avg": "annunciated / ceil((end - start) / 10 min)",
            "per_10_min_max": "most annunciations in any 10 minutes [t, t + 10 min), t an "
                              "annunciation (sliding window)",
            "per_hour_avg": "annunciated / ((end - start) in hours)",
            "flood_share": "100 x (time of [start, end) within flood periods) / "
                           "(end - start)",
            "flood_periods": f"runs of 10-minute periods aligned to the clock (:00, :10, ...) "
                             f"with more than {FLOOD} annunciations each",
            "top10_share": "100 x (annunciations of the 10 most frequent rule/source points) "
                           "/ annunciated",
            "chattering": f"points with {chatter_count} or more raises within "
                          f"{chatter_window_s:.0f} s (any transition, annunciated or not)",
            "stale": "alerts still active and raised more than 24 h before end",
            "priority_share": "100 x annunciations per band / annunciated; priority 1-2 "
                              "high, 3 medium, 4-5 low",
            "ack_median_s": "median of (first acknowledgement - annunciation) over "
                            "annunciations acknowledged before the alert's next one and "
                            "before end",
            "shelved/suppressed/out_of_service": "open alerts in that state now",
        })
