"""`facility report energy|district|shift|rollup`: the energy-saving reports of the campus
and of the district's sites, the shift report, and the InfluxDB downsampling they read."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from zoneinfo import ZoneInfo

from facility.catalog import Catalog
from facility.influx import InfluxClient
from facility.influxroutes import route_for
from facility.settings import Settings

FORMATS = ("html", "pdf", "xlsx")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "report", help="energy-saving and control-room shift reports (HTML, PDF, XLSX)",
        description="Reports from InfluxDB (and the alert store for shifts). Every figure "
                    "states its formula and the share of the period its data covers.")
    reports = parser.add_subparsers(dest="report", required=True, metavar="REPORT")

    p = reports.add_parser(
        "energy", help="energy by building and load, kgce, intensity, office hours vs "
                       "nights and weekends, peak demand, comparisons, EV charging, anomalies",
        description="The energy-saving report of one month, ISO week or date range, compared "
                    "with the previous period and the same period a year earlier.")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--month", help="YYYY-MM, e.g. 2026-10")
    when.add_argument("--week", help="ISO week YYYY-Www (e.g. 2026-W41) or a date in it")
    when.add_argument("--from", dest="from_", metavar="DATE", help="first day YYYY-MM-DD")
    p.add_argument("--to", metavar="DATE", help="last day YYYY-MM-DD (with --from)")
    _output_options(p, FORMATS)
    p.set_defaults(func=cmd_energy)

    p = reports.add_parser(
        "district", help="energy across the district's sites: kgce per m² and per person, "
                         "office hours vs nights, ranking within each kind of public body, "
                         "change against last year, sites with incomplete data",
        description="The district energy report of a month, ISO week or date range over the "
                    "sites this process serves (sites_dir, or the one site file; `facility "
                    "--sites A,B report district` for a subset), against the same period a "
                    "year earlier. Each site is read from its InfluxDB (influx.routes).")
    p.add_argument("--period", required=True, metavar="PERIOD",
                   help="YYYY-MM (2026-10), ISO week YYYY-Www (2026-W41), or "
                        "FROM..TO (2026-10-01..2026-10-15, inclusive)")
    _output_options(p, FORMATS)
    p.set_defaults(func=cmd_district)

    p = reports.add_parser(
        "shift", help="control-room shift report: alerts, ISA-18.2 alarm figures, bollard "
                      "operations, device availability",
        description="The report of one 24-hour duty shift, starting at reports.shift_start "
                    "(08:00 by default) on --date.")
    p.add_argument("--date", required=True, help="YYYY-MM-DD, the day the shift starts")
    p.add_argument("--hours", type=float, default=24.0, help="shift length (default 24)")
    _output_options(p, ("html", "pdf"))
    p.set_defaults(func=cmd_shift)

    p = reports.add_parser(
        "rollup", help="create the downsampling (retention policy, continuous queries) and "
                       "rebuild the 15-minute rollups of a range",
        description="Idempotent. Ingest calls the same setup at start-up; run this to backfill "
                    "history imported or replayed after the fact.")
    p.add_argument("--from", dest="from_", metavar="DATE", help="first day to rebuild")
    p.add_argument("--to", metavar="DATE", help="last day to rebuild (inclusive)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_rollup)


def _output_options(p: argparse.ArgumentParser, formats: tuple[str, ...]) -> None:
    p.add_argument("--out", type=Path, help="output folder (default: reports.output_dir)")
    p.add_argument("--format", action="append", choices=formats, dest="formats",
                   help=f"repeatable; default all of {', '.join(formats)}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@contextmanager
def progress(total: int, label: str, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr (only on a terminal); yields a step(description) call."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="step", file=sys.stderr, leave=False,
               disable=None if enabled else True)
    try:
        def step(text: str) -> None:
            bar.set_postfix_str(text[:40])
            bar.update()
        yield step
    finally:
        bar.close()


def _out_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return args.out or settings.resolve(settings.reports.output_dir)


async def cmd_energy(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from reports import periods, render
    from reports.calendar import load_calendar
    from reports.energy_report import build

    site = catalog.site
    tz = ZoneInfo(site.site.timezone)
    try:
        period = periods.parse(tz, month_text=args.month, week_text=args.week,
                               from_text=args.from_, to_text=args.to)
    except ValueError as exc:
        print(f"facility report energy: {exc}", file=sys.stderr)
        return 2
    calendar = load_calendar(settings.reports, settings.config_folder)
    formats = tuple(args.formats or FORMATS)
    started = time.perf_counter()
    with progress(8 + len(formats), "能耗报告", not args.no_progress) as step:
        async with InfluxClient(route_for(settings.influx, site.site.id)) as influx:
            try:
                report = await build(influx, settings, site, period, calendar, step)
            except ValueError as exc:  # a period that has not started yet
                print(f"facility report energy: {exc}", file=sys.stderr)
                return 2
        computed = time.perf_counter() - started
        paths = render.write_all(report, _out_dir(args, settings), f"energy-{period.slug}",
                                 formats)
        for _ in formats:
            step("rendered")
    total = time.perf_counter() - started
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    print(f"figures in {computed:.2f} s, with rendering {total:.2f} s", file=sys.stderr)
    return 0


async def cmd_district(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from facility.influxroutes import InfluxRouter
    from reports import render
    from reports.calendar import load_calendar
    from reports.district import build, parse_period

    district: dict[str, Catalog] = getattr(args, "district", None) or \
        {catalog.site.site.id: catalog}
    sites = [one.site for one in district.values()]
    try:
        period = parse_period(args.period, ZoneInfo(sites[0].site.timezone))
    except ValueError as exc:
        print(f"facility report district: {exc}", file=sys.stderr)
        return 2
    calendar = load_calendar(settings.reports, settings.config_folder)
    formats = tuple(args.formats or FORMATS)
    started = time.perf_counter()
    with progress(5 + len(formats), "区内公共机构能耗报告", not args.no_progress) as step:
        async with InfluxRouter(settings.influx) as router:
            clients = {site.site.id: await router.client(site.site.id) for site in sites}
            try:
                report = await build(clients.__getitem__, settings, sites, period, calendar,
                                     step)
            except ValueError as exc:  # a period that has not started yet
                print(f"facility report district: {exc}", file=sys.stderr)
                return 2
        computed = time.perf_counter() - started
        paths = render.write_all(report, _out_dir(args, settings), f"district-{period.slug}",
                                 formats)
        for _ in formats:
            step("rendered")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    print(f"{len(sites)} sites; figures in {computed:.2f} s, with rendering "
          f"{time.perf_counter() - started:.2f} s", file=sys.stderr)
    return 0


async def cmd_shift(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from reports import render
    from reports.shift import build, shift_period

    site = catalog.site
    tz = ZoneInfo(site.site.timezone)
    try:
        period = shift_period(args.date, settings.reports.shift_start, args.hours, tz)
    except ValueError as exc:
        print(f"facility report shift: {exc}", file=sys.stderr)
        return 2
    formats = tuple(args.formats or ("html", "pdf"))
    with progress(4 + len(formats), "值班报告", not args.no_progress) as step:
        async with InfluxClient(route_for(settings.influx, site.site.id)) as influx:
            try:
                report = await build(influx, settings, site, period, step)
            except ValueError as exc:  # a shift that has not begun
                print(f"facility report shift: {exc}", file=sys.stderr)
                return 2
        paths = render.write_all(report, _out_dir(args, settings), f"shift-{args.date}", formats)
        for _ in formats:
            step("rendered")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


async def cmd_rollup(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from facility.schema import DAY_NS, ROLLUPS, ensure_downsampling, rebuild
    from reports import periods

    server = route_for(settings.influx, catalog.site.site.id)  # the site's InfluxDB
    async with InfluxClient(server) as influx:
        await influx.ensure_database()
        await ensure_downsampling(influx, settings.reports)
        print(f"downsampling ready in {server.database} on {server.url} "
              f"(retention policy {settings.reports.rollup_retention_policy})")
        if args.from_ or args.to:
            try:
                period = periods.parse(ZoneInfo(catalog.site.site.timezone), from_text=args.from_,
                                       to_text=args.to)
            except ValueError as exc:
                print(f"facility report rollup: {exc}", file=sys.stderr)
                return 2
            start, end = period.ns()
            # A day per query: a month in one SELECT ... INTO outlasts any sane timeout.
            days = range(start, end, DAY_NS)
            with progress(len(days) * len(ROLLUPS), "rollups", not args.no_progress) as step:
                for rollup in ROLLUPS:
                    for day in days:
                        await rebuild(influx, rollup, day, min(day + DAY_NS, end),
                                      settings.reports)
                        step(rollup.name)
            print(f"rebuilt {', '.join(r.name for r in ROLLUPS)} for {period.label}")
    return 0
