"""Device availability over a time window, from the device_status measurement: each
device's status at the start (its last status before it) and every change inside."""

from __future__ import annotations

from dataclasses import dataclass, field

from facility.influx import InfluxClient, quote_string


@dataclass(slots=True)
class Availability:
    device: str
    family: str
    known_ns: int = 0  # time with a known status
    online_ns: int = 0
    offline_spells: int = 0  # times it went offline inside the window
    reasons: list[str] = field(default_factory=list)
    last_state: str = ""

    @property
    def share(self) -> float | None:
        return self.online_ns / self.known_ns if self.known_ns else None


async def availability(influx: InfluxClient, site: str, start: int,
                       end: int) -> dict[str, Availability]:
    where = f"site = {quote_string(site)}"
    before = await influx.query(
        f'SELECT last("state") AS "state", last("reason") AS "reason" FROM "device_status" '
        f"WHERE {where} AND time < {start} GROUP BY \"device\", \"family\"")
    inside = await influx.query(
        f'SELECT "state", "reason" FROM "device_status" WHERE {where} AND time >= {start} '
        f'AND time < {end} GROUP BY "device", "family"')
    changes: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    for series in before[0] if before else []:
        key = (series.tags.get("device", ""), series.tags.get("family", ""))
        for _, state, reason in series.values:
            changes.setdefault(key, []).append((start, state, reason or ""))
    for series in inside[0] if inside else []:
        key = (series.tags.get("device", ""), series.tags.get("family", ""))
        changes.setdefault(key, []).extend(
            (int(t), state, reason or "") for t, state, reason in series.values)
    out: dict[str, Availability] = {}
    for (device, family), seq in changes.items():
        seq.sort()
        result = out.setdefault(device, Availability(device, family))
        previous = ""
        for index, (t, state, reason) in enumerate(seq):
            until = seq[index + 1][0] if index + 1 < len(seq) else end
            span = max(0, until - t)
            result.known_ns += span
            if state == "online":
                result.online_ns += span
            elif previous != state and t > start:
                result.offline_spells += 1
            if state != "online" and reason and reason not in result.reasons:
                result.reasons.append(reason)
            previous = state
            result.last_state = state
    return out
