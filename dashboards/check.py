"""Run every panel's query against InfluxDB, with Grafana's macros and variables expanded
the way Grafana's InfluxDB data source expands them, and say which return nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from facility.influx import InfluxClient, QueryError

NICE_INTERVALS = (10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def interval(start_ms: int, end_ms: int, points: int = 1000, minimum_s: int = 10) -> str:
    """Grafana's $__interval: the range over max data points, rounded up to a nice step."""
    wanted = max(minimum_s, (end_ms - start_ms) / 1000 / points)
    seconds = next((s for s in NICE_INTERVALS if s >= wanted), NICE_INTERVALS[-1])
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _regex_value(values: list[str] | None, all_value: str) -> str:
    if values is None:
        return all_value
    escaped = [re.sub(r"([\\/^$.|?*+()\[\]{}])", r"\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(query: str, start_ms: int, end_ms: int,
           variables: dict[str, list[str] | None] | None = None, all_value: str = ".*") -> str:
    """The query as Grafana sends it to InfluxDB (None as a variable's value means All)."""
    step = interval(start_ms, end_ms)
    text = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    text = text.replace("$__interval_ms", str(_seconds(step) * 1000))
    text = text.replace("$__interval", step)
    for name, values in (variables or {}).items():
        value = _regex_value(values, all_value)
        for pattern in (f"${{{name}}}", f"[[{name}]]", f"${name}"):
            text = text.replace(pattern, value)
    return text


def _seconds(step: str) -> int:
    return int(step[:-1]) * (60 if step.endswith("m") else 1)


@dataclass(frozen=True, slots=True)
class QueryResult:
    dashboard: str
    panel: str
    ref_id: str
    query: str
    series: int
    values: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.values > 0


async def run_all(influx: InfluxClient, boards: list[dict[str, Any]], start_ms: int,
                  end_ms: int) -> list[QueryResult]:
    out = []
    for board in boards:
        variables = board.get("templating", {}).get("list", [])
        names: dict[str, list[str] | None] = {v["name"]: None for v in variables}  # All
        for variable in variables:  # the variables' own queries (SHOW TAG VALUES ...)
            try:
                result = await influx.query(variable["query"])
            except QueryError as exc:
                out.append(QueryResult(board["uid"], f"variable ${variable['name']}", "-",
                                       variable["query"], 0, 0, str(exc)))
                continue
            series = [s for statement in result for s in statement]
            out.append(QueryResult(board["uid"], f"variable ${variable['name']}", "-",
                                   variable["query"], len(series),
                                   sum(len(s.values) for s in series)))
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                query = expand(target["query"], start_ms, end_ms, names)
                try:
                    result = await influx.query(query, epoch="ms")
                except QueryError as exc:
                    out.append(QueryResult(board["uid"], panel["title"], target["refId"],
                                           query, 0, 0, str(exc)))
                    continue
                series = [s for statement in result for s in statement]
                values = sum(1 for s in series for row in s.values
                             if any(v is not None for v in row[1:]))
                out.append(QueryResult(board["uid"], panel["title"], target["refId"], query,
                                       len(series), values))
    return out
