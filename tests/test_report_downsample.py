"""Downsampling in the real InfluxDB: the continuous queries exist once however often the
setup runs, a changed definition replaces the old one, and InfluxDB itself fills the
rollup from fresh raw points."""

from __future__ import annotations

import time

from facility.influx import InfluxClient
from facility.schema import ENERGY, ensure_downsampling
from facility.settings import Settings
from facility.site import load_site
from tests.helpers import eventually, rows
from tests.reportdata import MINUTE_NS, Meter, meter_lines, write_lines


async def _cqs(influx: InfluxClient) -> list[str]:
    result = await influx.query("SHOW CONTINUOUS QUERIES")
    return sorted(row["name"] for s in result[0] if s.name == influx.database
                  for row in s.rows())


async def test_setup_is_idempotent_and_replaces_changed_queries(influx: InfluxClient) -> None:
    await ensure_downsampling(influx)
    first = await _cqs(influx)
    assert len(first) == 2 and all(n.startswith(("cq_energy_15m_", "cq_ev_charger_15m_"))
                                   for n in first)
    await ensure_downsampling(influx)
    assert await _cqs(influx) == first
    policies = await rows(influx, f'SHOW RETENTION POLICIES ON "{influx.database}"')
    rollup = next(p for p in policies if p["name"] == "rollup")
    assert rollup["duration"] == "0s" and rollup["default"] is False  # INF, not the default
    await ensure_downsampling(influx, every="1m", for_="3h")
    changed = await _cqs(influx)
    assert len(changed) == 2 and not set(changed) & set(first)


async def test_continuous_query_fills_the_rollup(settings: Settings,
                                                 influx: InfluxClient) -> None:
    site = load_site(settings.site_path)
    # Resample every second so the test sees InfluxDB run the query without waiting
    # for the 5-minute default.
    await ensure_downsampling(influx, every="1s", for_="2h")
    now = time.time_ns() - time.time_ns() % (15 * MINUTE_NS)
    meter = Meter("em-main-total", lambda t: 60.0, now - 60 * MINUTE_NS, now, counter=100.0)
    await write_lines(influx, meter_lines(site, meter))
    found = await eventually(
        lambda: rows(influx, f'SELECT sum(c_count) AS n, min(c_first) AS lo, max(c_last) AS hi '
                             f'FROM rollup.{ENERGY.name} WHERE device = \'em-main-total\''),
        lambda r: bool(r) and r[0]["n"] == 60, 60, "the continuous query's rollup rows")
    assert found[0]["lo"] == 100.0
    assert abs(found[0]["hi"] - (100.0 + 59.0)) < 1e-6
