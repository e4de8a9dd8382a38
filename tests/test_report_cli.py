"""The commands end to end: `facility report energy|shift|rollup` and `facility dashboards
export` through app.cli.main, with settings from the environment as in production."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from app.cli import main
from facility.influx import InfluxClient
from facility.localservers import InfluxServer
from facility.settings import InfluxSettings, load_settings
from facility.site import load_site
from reports import periods
from tests.reportdata import Meter, meter_lines, ns, write_lines

WEEK = periods.week(2026, 41, ZoneInfo("Asia/Shanghai"))


async def _write(url: str, database: str) -> None:
    settings = load_settings(influx=InfluxSettings(url=url, database=database))
    site = load_site(settings.site_path)
    start = ns(WEEK.start - timedelta(hours=1))
    meter = Meter("em-conf-total", lambda t: 12.0, start, ns(WEEK.end) + 3600 * 10**9)
    async with InfluxClient(settings.influx) as influx:
        await influx.ensure_database()
        await write_lines(influx, meter_lines(site, meter))


def test_commands(influx_server: InfluxServer, unique: str, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    database = f"cli_{unique}"
    monkeypatch.setenv("FACILITY_INFLUX_URL", influx_server.url)
    monkeypatch.setenv("FACILITY_INFLUX_DATABASE", database)
    monkeypatch.setenv("FACILITY_STATE_URL", f"sqlite:///{tmp_path / 'state.sqlite'}")
    asyncio.run(_write(influx_server.url, database))

    assert main(["report", "rollup", "--from", "2026-10-05", "--to", "2026-10-11"]) == 0
    assert main(["report", "energy", "--week", "2026-W41", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    for suffix in ("html", "pdf", "xlsx"):
        path = tmp_path / f"energy-2026-W41.{suffix}"
        assert path.stat().st_size > 1000 and str(path) in out
    html = (tmp_path / "energy-2026-W41.html").read_text(encoding="utf-8")
    assert "会议中心" in html and f"{12.0 * 24 * 7 * 0.1229:,.1f}" in html  # kgce

    assert main(["report", "energy", "--month", "2026-13", "--out", str(tmp_path)]) == 2
    assert main(["report", "shift", "--date", "2026-10-09", "--out", str(tmp_path),
                 "--format", "html", "--no-progress"]) == 0
    shift = (tmp_path / "shift-2026-10-09.html").read_text(encoding="utf-8")
    assert "值班报告" in shift and "值班时段内没有升降柱指令" in shift
    assert main(["dashboards", "export"]) == 0
    assert "up to date" in capsys.readouterr().out
