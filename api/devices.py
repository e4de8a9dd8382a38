"""What the control room knows about each device now: where it is, whether it is online,
and its latest values with their quality.

Device knowledge comes from the site file, through the rules engine's Topology (it
already expands the bollards behind their PLC and knows each source's zone and place).
Latest values come from the live readings; after a restart, until a device reports
again, from its last point in InfluxDB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from facility import messages as m
from facility.influx import InfluxClient, InfluxError, quote_ident, quote_string
from facility.topology import Source, Topology

log = logging.getLogger(__name__)

FAMILIES = [f.value for f in m.Family if f is not m.Family.GATEWAY]
# Columns of a stored point that are not values (the rest of the tags are the source's).
STORAGE_COLUMNS = {"time", "quality", "site", "device", "gateway"}


@dataclass
class Latest:
    ts: int
    quality: str
    values: dict[str, m.Scalar]
    units: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    source: str = "live"  # live (from the broker) or influxdb (last stored point)


@dataclass
class Status:
    state: str
    reason: str
    ts: int


class DeviceBook:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.latest: dict[str, Latest] = {}
        self.status: dict[str, Status] = {}

    def source(self, device_id: str) -> Source | None:
        return self.topology.sources.get(device_id)

    def devices(self) -> list[Source]:
        return [s for s in self.topology.sources.values() if s.family != "gateway"]

    def gateways(self) -> list[Source]:
        return [s for s in self.topology.sources.values() if s.family == "gateway"]

    def take_reading(self, reading: m.Reading) -> bool:
        """Keep it if it is newer than what we have; False for a device we do not know."""
        if reading.device not in self.topology.sources:
            return False
        have = self.latest.get(reading.device)
        if have is not None and have.ts > reading.ts and have.source == "live":
            return True
        units = dict(have.units) if have else {}
        units.update(reading.units)
        self.latest[reading.device] = Latest(reading.ts, reading.quality.value,
                                             dict(reading.values), units, dict(reading.errors))
        return True

    def take_status(self, status: m.DeviceStatus) -> None:
        self.status[status.device] = Status(status.state.value, status.reason, status.ts)

    def online(self, source: Source) -> bool | None:
        """Its own status; a unit behind a controller follows the controller's."""
        status = self.status.get(source.id)
        if status is None and source.parent and source.tags.get("controller"):
            status = self.status.get(source.parent)
        return None if status is None else status.state == m.Availability.ONLINE.value

    async def seed(self, influx: InfluxClient, retention_policy: str, site_id: str) -> int:
        """Fill in latest values from InfluxDB for devices not heard from yet."""
        seeded = 0
        for family in FAMILIES:
            query = (f"SELECT * FROM {quote_ident(retention_policy)}.{quote_ident(family)} "
                     f"WHERE time > now() - 7d AND site = {quote_string(site_id)} "
                     f"GROUP BY device ORDER BY time DESC LIMIT 1")
            try:
                result = await influx.query(query)
            except InfluxError as exc:
                if "database not found" in str(exc):
                    return seeded
                raise
            for series in result[0] if result else []:
                device = series.tags.get("device", "")
                source = self.topology.sources.get(device)
                if source is None or device in self.latest:
                    continue
                for row in series.rows():
                    self.latest[device] = _from_row(row, STORAGE_COLUMNS | set(source.tags))
                    seeded += 1
        return seeded


def _from_row(row: dict[str, Any], not_values: set[str]) -> Latest:
    values = {k: v for k, v in row.items() if k not in not_values and v is not None}
    return Latest(ts=int(row["time"]), quality=str(row.get("quality") or "good"),
                  values=values, source="influxdb")
