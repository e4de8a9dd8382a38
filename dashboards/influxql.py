"""A typed InfluxQL query target for Grafana's InfluxDB data source.

The foundation SDK (Grafana 11.6 branch) has no InfluxDB query type, so this is the small
builder that plugs into it: a `Dataquery` that serialises to what Grafana's InfluxDB data
source stores for a raw InfluxQL query, and a fluent `Builder` like the SDK's own.
"""

from __future__ import annotations

from typing import Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants

DATASOURCE_TYPE = "influxdb"
DATASOURCE_UID = "facility-influxdb"
ResultFormat = Literal["time_series", "table"]


class InfluxQLQuery(cogvariants.Dataquery):
    def __init__(self, ref_id: str = "A", query: str = "", alias: str | None = None,
                 result_format: ResultFormat = "time_series",
                 datasource_uid: str = DATASOURCE_UID, hide: bool = False) -> None:
        self.ref_id = ref_id
        self.query = query
        self.alias = alias
        self.result_format: ResultFormat = result_format
        self.datasource_uid = datasource_uid
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": {"type": DATASOURCE_TYPE, "uid": self.datasource_uid},
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias:
            payload["alias"] = self.alias
        if self.hide:
            payload["hide"] = True
        return payload


class InfluxQL(cogbuilder.Builder[InfluxQLQuery]):
    """`InfluxQL("SELECT ... WHERE $timeFilter ...").alias("$tag_building")`."""

    def __init__(self, query: str, ref_id: str = "A") -> None:
        self._internal = InfluxQLQuery(ref_id=ref_id, query=query)

    def build(self) -> InfluxQLQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def alias(self, alias: str) -> Self:
        self._internal.alias = alias
        return self

    def table(self) -> Self:
        self._internal.result_format = "table"
        return self

    def datasource_uid(self, uid: str) -> Self:
        self._internal.datasource_uid = uid
        return self
