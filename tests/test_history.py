"""`facility up`'s simulated history (app/history.py, simulators/history.py) against a real
InfluxDB: two days (the demo writes 35) of every family, skipped when there is data, the
energy counters and the bollards' cycle counts continuing into the live simulators without
a drop, and 15-minute rollups equal to what InfluxDB's own SELECT ... INTO gives."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from app.history import backfill
from facility import lineprotocol as lp
from facility.influx import InfluxClient
from facility.schema import ENERGY, EV_CHARGING, rebuild, sync_rollups
from facility.settings import Settings
from simulators.campus import Campus
from simulators.clock import SimClock
from simulators.history import f32
from tests.conftest import catalog
from tests.reportdata import tags_of

END = datetime(2026, 11, 20, 10, 7, 30, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


async def _rows(influx: InfluxClient, statement: str) -> list[list[Any]]:
    result = await influx.query(statement)
    return [row for series in result[0] for row in series.values] if result and result[0] \
        else []


async def test_two_days_of_history_then_the_live_campus(settings: Settings,
                                                       influx: InfluxClient) -> None:
    cat = catalog()
    live = Campus(cat.site, settings.mqtt, clock=SimClock(start=END, scale=0), seed=3)
    done = await backfill(settings, cat, live, days=2, progress=False)
    assert done is not None and done.lines > 20_000
    assert done.end == END and END - done.start >= 2 * 86_400

    # Every family, and every device online from the start.
    measurements = {row[0] for row in await _rows(influx, "SHOW MEASUREMENTS")}
    assert {"energy", "bollard", "fire", "ev_charger", "drainage", "gas", "device_status",
            "energy_15m", "ev_charger_15m"} <= measurements
    online = await _rows(influx, 'SELECT count("state") FROM "device_status" '
                                 "WHERE \"state\" = 'online'")
    assert online[0][1] == sum(1 for _ in cat.site.all_device_ids()) + len(cat.site.gateways)

    # Meters: readings every 5 minutes with the live tags; the counter never falls and
    # its last reading is the live meter's reading at the start less the last 5 minutes.
    meter = live.meter("em-main-total")
    rows = await _rows(influx, 'SELECT "energy_import", "power_total", "building", "load" '
                               "FROM \"energy\" WHERE \"device\" = 'em-main-total'")
    assert len(rows) == (END - done.start) // 300 + 1
    readings = [r[1] for r in rows]
    assert readings == sorted(readings)
    assert {(r[3], r[4]) for r in rows} == {("main-building", "total")}
    assert readings[-1] <= f32(meter.energy_import(END))
    expected_last = f32(meter.energy_import(END) - rows[-1][2] * 300 / 3600)
    assert abs(readings[-1] - expected_last) <= 1.0  # float32 steps of a 10^5 kWh counter

    # Bollards: the cycle counters end at the live PLC's.
    plc = live.plc()
    cycles = await _rows(influx, 'SELECT last("cycle_count") FROM "bollard" '
                                 "WHERE \"device\" = 'bollard-s20'")
    assert cycles[0][1] == plc.bollards[19].cycles

    # Rollups: the counts match the raw data (no day to rebuild), and InfluxDB's own
    # SELECT ... INTO gives the same rows.
    start_ns, end_ns = int(done.start * 1e9), int(END * 1e9)
    query = ('SELECT "c_first", "c_last", "c_min", "c_max", "c_count", "p_mean", "p_max" '
             'FROM "rollup"."{name}" WHERE "device" = \'{device}\'')
    ours = {}
    for rollup, device in ((ENERGY, "em-main-total"), (EV_CHARGING, "evc-cp-01")):
        ours[rollup.name] = await _rows(influx, query.format(name=rollup.name, device=device))
        assert len(ours[rollup.name]) > (150 if rollup is ENERGY else 50)
        assert await sync_rollups(influx, rollup, start_ns, end_ns, settings.reports) == []
    for rollup, device in ((ENERGY, "em-main-total"), (EV_CHARGING, "evc-cp-01")):
        await rebuild(influx, rollup, start_ns, end_ns, settings.reports)
        theirs = await _rows(influx, query.format(name=rollup.name, device=device))
        assert len(theirs) == len(ours[rollup.name])
        for mine, its in zip(ours[rollup.name], theirs, strict=True):
            assert mine[:6] == its[:6]
            assert abs(mine[6] - its[6]) < 1e-9  # a mean: summed in another order

    # A database with data is left alone, and a demo started again later goes on from the
    # counters it stored, not from the seeded ones (a drop reads as a meter replaced).
    run = tags_of(cat.site, "em-main-total")  # the live run's last reading, an hour in
    await influx.write(lp.line("energy", run, {"quality": "good", "energy_import": f32(
        meter.energy_import(END) + 1000.0)}, int((END + 3600) * 1e9)).encode())
    last = await _rows(influx, 'SELECT last("energy_import") FROM "energy" '
                               "WHERE \"device\" = 'em-main-total'")
    later = Campus(cat.site, settings.mqtt, clock=SimClock(start=END + 86_400, scale=0),
                   seed=3)
    assert later.meter("em-main-total").energy_import() < last[0][1]
    assert await backfill(settings, cat, later, days=2, progress=False) is None
    assert later.meter("em-main-total").energy_import() == last[0][1]
    later.clock.advance(3600)
    assert later.meter("em-main-total").energy_import() > last[0][1]
    assert later.plc().bollards[19].cycles == plc.bollards[19].cycles
