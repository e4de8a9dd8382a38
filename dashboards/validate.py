"""Structural checks of exported dashboards for Grafana 11.6 (schemaVersion 41): what
Grafana needs to load a dashboard and run its panels, without a Grafana at hand."""

from __future__ import annotations

import re
from typing import Any

from dashboards import SCHEMA_VERSION
from dashboards.influxql import DATASOURCE_TYPE, DATASOURCE_UID

# Core panel plugins shipped with Grafana 11.6 (public/app/plugins/panel).
CORE_PANELS = frozenset({
    "row", "timeseries", "stat", "table", "state-timeline", "status-history", "barchart",
    "bargauge", "gauge", "piechart", "text", "heatmap", "histogram", "logs", "news",
    "nodeGraph", "trend", "xychart", "candlestick", "canvas", "dashlist", "alertlist",
    "annolist", "geomap", "flamegraph", "traces", "datagrid"})
UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
GRAFANA_MACROS = frozenset({"timeFilter", "__interval", "__interval_ms", "__timeFilter",
                            "__from", "__to", "__range", "__rate_interval"})
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def problems(board: dict[str, Any]) -> list[str]:
    """Everything that would stop Grafana 11.6 from loading or querying this dashboard."""
    where = board.get("uid", "?")
    found: list[str] = []

    def bad(text: str) -> None:
        found.append(f"{where}: {text}")

    for key in ("uid", "title", "schemaVersion", "panels", "time", "timezone"):
        if key not in board:
            bad(f"missing '{key}'")
    for key in ("templating", "annotations"):
        if not isinstance(board.get(key, {}).get("list"), list):
            bad(f"'{key}' needs a 'list'")
    if not UID.fullmatch(str(board.get("uid", ""))):
        bad("uid must be 1-40 letters, digits, '-' or '_'")
    if board.get("schemaVersion") != SCHEMA_VERSION:
        bad(f"schemaVersion {board.get('schemaVersion')} is not {SCHEMA_VERSION} (Grafana 11.6)")
    variables = {v["name"] for v in board.get("templating", {}).get("list", [])}
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query" and variable.get("datasource", {}).get("uid") \
                != DATASOURCE_UID:
            bad(f"variable {variable['name']}: not on the InfluxDB data source")
    seen_ids: set[int] = set()
    boxes: list[tuple[int, int, int, int, str]] = []
    for panel in board.get("panels", []):
        title = panel.get("title", "?")
        pid = panel.get("id")
        if not isinstance(pid, int) or pid in seen_ids:
            bad(f"panel {title!r}: id {pid!r} is missing or not unique")
        else:
            seen_ids.add(pid)
        if panel.get("type") not in CORE_PANELS:
            bad(f"panel {title!r}: type {panel.get('type')!r} is not a Grafana 11.6 panel")
        pos = panel.get("gridPos", {})
        try:
            x, y, w, h = (int(pos[k]) for k in ("x", "y", "w", "h"))
        except (KeyError, TypeError, ValueError):
            bad(f"panel {title!r}: gridPos needs integer x, y, w, h")
            continue
        if x < 0 or w < 1 or h < 1 or x + w > 24:
            bad(f"panel {title!r}: gridPos {pos} is outside the 24-column grid")
        for ox, oy, ow, oh, other in boxes:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                bad(f"panel {title!r} overlaps {other!r}")
        boxes.append((x, y, w, h, title))
        if panel.get("type") == "row":
            continue
        found += [f"{where}: panel {title!r}: {p}" for p in _target_problems(panel, variables)]
    return found


def _target_problems(panel: dict[str, Any], variables: set[str]) -> list[str]:
    out = []
    if panel.get("datasource", {}).get("type") != DATASOURCE_TYPE:
        out.append("datasource is not InfluxDB")
    targets = panel.get("targets") or []
    if not targets:
        out.append("no query")
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs) or not all(refs):
        out.append(f"refIds {refs} are missing or repeated")
    for target in targets:
        if target.get("datasource", {}).get("uid") != DATASOURCE_UID:
            out.append(f"query {target.get('refId')}: datasource uid is not {DATASOURCE_UID}")
        if not target.get("rawQuery") or not str(target.get("query", "")).strip():
            out.append(f"query {target.get('refId')}: not a raw InfluxQL query")
        if target.get("resultFormat") not in ("time_series", "table"):
            out.append(f"query {target.get('refId')}: resultFormat {target.get('resultFormat')}")
        for match in VARIABLE.finditer(str(target.get("query", ""))):
            name = next(g for g in match.groups() if g)
            if name not in variables and name not in GRAFANA_MACROS:
                out.append(f"query {target.get('refId')}: ${name} is not defined")
    return out
