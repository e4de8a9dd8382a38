"""Panel helpers on top of the foundation SDK: one line per panel in boards.py, with the
InfluxQL target, unit and Chinese title; ids are given by the dashboard's own counter."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import count

from grafana_foundation_sdk.builders import (
    dashboard,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from dashboards.influxql import DATASOURCE_TYPE, DATASOURCE_UID, InfluxQL
from facility.labels import label

DATASOURCE = model.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)
TIMEZONE = "Asia/Shanghai"

PanelBuilder = timeseries.Panel | stat.Panel | statetimeline.Panel | table.Panel


def ids() -> Iterator[int]:
    return count(1)


def _targets(panel: PanelBuilder, queries: tuple[InfluxQL, ...]) -> None:
    for index, query in enumerate(queries):
        panel.with_target(query.ref_id(chr(ord("A") + index)))


def mapping(words: Mapping[str, str], **colours: str) -> list[model.ValueMapping]:
    """Value mappings: raw state -> its word in the label table (facility/labels.py) and
    a colour."""
    return [model.ValueMap(options={
        raw: model.ValueMappingResult(text=label(words, raw), color=colour, index=index)
        for index, (raw, colour) in enumerate(colours.items())})]


def graph(next_id: Iterator[int], title: str, unit: str, *queries: InfluxQL,
          description: str = "", width: int = 12, height: int = 8,
          bars: bool = False) -> timeseries.Panel:
    panel = (timeseries.Panel().id(next(next_id)).title(title).unit(unit).span(width)
             .height(height).datasource(DATASOURCE))
    if description:
        panel.description(description)
    if bars:
        panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(70)
    _targets(panel, queries)
    return panel


def single(next_id: Iterator[int], title: str, unit: str, query: InfluxQL, *,
           description: str = "", width: int = 4, height: int = 4,
           mappings: list[model.ValueMapping] | None = None,
           no_value: str | None = None) -> stat.Panel:
    panel = (stat.Panel().id(next(next_id)).title(title).unit(unit).span(width).height(height)
             .datasource(DATASOURCE).graph_mode(common.BigValueGraphMode.NONE)
             .color_mode(common.BigValueColorMode.VALUE))
    if description:
        panel.description(description)
    if mappings:
        panel.mappings(mappings)
    if no_value is not None:
        panel.no_value(no_value)
    _targets(panel, (query,))
    return panel


def timeline(next_id: Iterator[int], title: str, query: InfluxQL,
             mappings: list[model.ValueMapping], *, description: str = "",
             width: int = 24, height: int = 10) -> statetimeline.Panel:
    panel = (statetimeline.Panel().id(next(next_id)).title(title).span(width).height(height)
             .datasource(DATASOURCE).mappings(mappings).show_value(common.VisibilityMode.NEVER))
    if description:
        panel.description(description)
    _targets(panel, (query,))
    return panel


def grid(next_id: Iterator[int], title: str, query: InfluxQL, *, description: str = "",
         width: int = 24, height: int = 8) -> table.Panel:
    panel = (table.Panel().id(next(next_id)).title(title).span(width).height(height)
             .datasource(DATASOURCE))
    if description:
        panel.description(description)
    _targets(panel, (query.table(),))
    return panel


def row(next_id: Iterator[int], title: str) -> dashboard.Row:
    return dashboard.Row(title).id(next(next_id))


def board(uid: str, title: str, tags: list[str], *, refresh: str = "30s",
          span: str = "now-6h", description: str = "") -> dashboard.Dashboard:
    built = (dashboard.Dashboard(title).uid(uid).tags(["facility", *tags]).refresh(refresh)
             .time(span, "now").timezone(TIMEZONE).readonly()
             .tooltip(model.DashboardCursorSync.CROSSHAIR)
             .annotation(dashboard.AnnotationQuery().name("Annotations & Alerts").built_in(1)
                         .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                         .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)")
                         .type("dashboard")))
    if description:
        built.description(description)
    return built


def tag_variable(name: str, label: str, measurement: str, key: str,
                 where: str = "") -> dashboard.QueryVariable:
    """A multi-value variable of a tag's values; 'All' matches every value (regex .*)."""
    query = f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "{key}"'
    if where:
        query += f" WHERE {where}"
    return (dashboard.QueryVariable(name).label(label).query(query).datasource(DATASOURCE)
            .multi(True).include_all(True).all_value(".*")
            .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .current(model.VariableOption(selected=True, text="All", value="$__all")))
