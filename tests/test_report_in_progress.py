"""A report for a period that includes now (issue 16): it says so, leaves out the
15-minute interval in progress, counts nothing after now as a data gap, and compares with
the same stretch of the previous period; against a real InfluxDB."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from facility.influx import InfluxClient
from facility.schema import ensure_downsampling
from facility.settings import Settings
from facility.site import load_site
from reports import periods, render
from reports.calendar import load_calendar
from reports.energy_report import build
from reports.model import Report, Table
from tests.reportdata import Meter, meter_lines, ns, write_lines

TZ = ZoneInfo("Asia/Shanghai")
MONTH = periods.month(date(2026, 10, 1), TZ)
AT = datetime(2026, 10, 3, 10, 7, 30, tzinfo=TZ)  # 7.5 minutes into the 10:00 interval


def table(report: Report, key: str) -> Table:
    return next(t for t in report.tables() if t.key == key)


def test_until_now_cuts_at_the_interval_in_progress() -> None:
    cut = periods.until_now(MONTH, AT)
    assert (cut.start, cut.end, cut.full_end) == (MONTH.start, AT.replace(minute=0, second=0),
                                                   MONTH.end)
    assert cut.in_progress and cut.label == "2026-10" and cut.slug == "2026-10"
    assert periods.until_now(MONTH, MONTH.end) is MONTH  # over: all of it
    same = periods.same_length(MONTH.previous(), cut)
    assert (same.start, same.end) == (datetime(2026, 9, 1, tzinfo=TZ),
                                      datetime(2026, 9, 3, 10, tzinfo=TZ))
    with pytest.raises(ValueError, match="尚未开始"):
        periods.until_now(MONTH, MONTH.start - timedelta(seconds=1))
    with pytest.raises(ValueError, match="不足15分钟"):
        periods.until_now(MONTH, MONTH.start + timedelta(minutes=14))


async def test_a_month_in_progress(settings: Settings, influx: InfluxClient,
                                   tmp_path: Path) -> None:
    site = load_site(settings.site_path)
    await ensure_downsampling(influx, settings.reports)
    # 60 kW (1 kWh a minute) from the evening before September to a minute past AT: the
    # readings of the interval in progress exist but must not count.
    meter = Meter("em-main-total", lambda t: 60.0, ns(datetime(2026, 8, 31, 23, tzinfo=TZ)),
                  ns(AT) + 60 * 10**9)
    await write_lines(influx, meter_lines(site, meter))
    steps: list[str] = []
    report = await build(influx, settings, site, MONTH, load_calendar(settings.reports),
                         steps.append, at=AT)
    assert "本期尚未结束，数据截至 10月03日 10:00" in report.subtitle
    assert "2026年10月01日 至 2026年10月31日" in report.subtitle
    assert any("本期尚未结束" in line for line in report.method)
    row = next(r for r in table(report, "data_quality").rows if r[1] == "em-main-total")
    cells = dict(zip([c.label for c in table(report, "data_quality").columns], row, strict=True))
    # 58 hours to 10:00 at 60 kW; no gap (the 21 days to come are not one), full coverage.
    assert cells["用电量"] == 58 * 60.0
    assert (cells["缺口数"], cells["缺口时长"], cells["覆盖率"]) == (0, 0.0, 1.0)
    summary = {f.label: f for f in report.figures()}
    assert summary["总用电量"].value == 58 * 60.0
    # The previous month over the same 58 hours: the same energy, no change.
    by_building = table(report, "buildings")
    main = next(r for r in by_building.rows if r[0] == "主楼")
    columns = [c.label for c in by_building.columns]
    assert main[columns.index("上期")] == 58 * 60.0
    assert main[columns.index("环比")] == 0.0
    assert summary["环比"].value == "+0.0%"
    # Peak demand is a whole interval's (60 kW), none from the interval in progress.
    assert summary["园区最大需量"].value == 60.0

    # The workbook carries the numbers behind each chart: the days so far, by building.
    from openpyxl import load_workbook

    paths = render.write_all(report, tmp_path, "energy", ("xlsx",))
    book = load_workbook(paths["xlsx"])
    assert {"chart_daily", "chart_loads", "chart_office_hours", "chart_load_curve"} <= set(
        book.sheetnames)
    daily = [list(r) for r in book["chart_daily"].iter_rows(min_row=2, max_row=5,
                                                             values_only=True)]
    assert daily == [["日期", "主楼 (kWh)", "合计 (kWh)"], ["2026-10-01", 1440.0, 1440.0],
                     ["2026-10-02", 1440.0, 1440.0], ["2026-10-03", 600.0, 600.0]]
    curve = [list(r) for r in book["chart_load_curve"].iter_rows(min_row=3, values_only=True)]
    assert curve[0][0] == "00:00" and curve[95][0] == "23:45"
    # 1-3 October are National Day rest days. From 10:00 on, only the two whole days
    # before count; none comes from the interval in progress (no fake drop).
    assert curve[40][1:] == [None, 60.0, 0, 2]
    assert curve[39][1:] == [None, 60.0, 0, 3]
