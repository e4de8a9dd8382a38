"""`facility dashboards export|check|push`."""

from __future__ import annotations

import argparse
import sys
import time

from facility.catalog import Catalog
from facility.influx import InfluxClient
from facility.influxroutes import route_for
from facility.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "dashboards", help="Grafana dashboards as code: export JSON and provisioning, check "
                           "every query against InfluxDB, push to a Grafana",
        description="The control-room, bollard, fire, drainage, EV and energy dashboards "
                    "(Grafana 11.6) are built in dashboards/boards.py.")
    commands = parser.add_subparsers(dest="dashboards", required=True, metavar="ACTION")
    p = commands.add_parser("export", help="write dashboards/json/*.json and "
                                           "dashboards/provisioning/*")
    p.set_defaults(func=cmd_export)
    p = commands.add_parser("check", help="validate the dashboards and run every panel's "
                                          "query against InfluxDB")
    p.add_argument("--hours", type=float, default=24.0, help="time range to query (default 24)")
    p.set_defaults(func=cmd_check)
    p = commands.add_parser(
        "push", help="upload the data source, folder and dashboards to Grafana (idempotent)",
        description="URL and token from settings grafana.url / grafana.token or "
                    "FACILITY_GRAFANA_URL / FACILITY_GRAFANA_TOKEN (a service-account token).")
    p.add_argument("--url", help="Grafana URL (default from settings)")
    p.add_argument("--secrets", action="store_true",
                   help="send the InfluxDB password to Grafana again (after a change)")
    p.set_defaults(func=cmd_push)


async def cmd_export(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from dashboards.export import HERE, write

    written = write()
    for path in written:
        print(f"wrote {path.relative_to(HERE.parent)}")
    if not written:
        print("dashboards/ is up to date")
    return 0


async def cmd_check(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from dashboards.check import run_all
    from dashboards.export import dashboards
    from dashboards.validate import problems

    boards = dashboards()
    found = [p for b in boards for p in problems(b)]
    for problem in found:
        print(f"invalid: {problem}")
    end_ms = int(time.time() * 1000)
    start_ms = end_ms - int(args.hours * 3600 * 1000)
    async with InfluxClient(route_for(settings.influx, catalog.site.site.id)) as influx:
        results = await run_all(influx, boards, start_ms, end_ms)
    for r in results:
        state = "ok" if r.ok else ("ERROR " + r.error if r.error else "no data")
        print(f"{r.dashboard:20} {r.panel[:28]:28} {r.ref_id} {r.series:4} series  {state}")
    failed = [r for r in results if r.error]
    empty = [r for r in results if not r.ok and not r.error]
    print(f"{len(results)} queries: {len(failed)} failed, {len(empty)} returned no data",
          file=sys.stderr)
    return 1 if found or failed else 0


async def cmd_push(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from dashboards.push import PushError, push

    try:
        result = await push(settings, url=args.url, resend_secrets=args.secrets,
                            site=catalog.site.site.id)
    except PushError as exc:
        print(f"facility dashboards push: {exc}", file=sys.stderr)
        return 1
    for name in result.created:
        print(f"created   {name}")
    for name in result.updated:
        print(f"updated   {name}")
    print(result)
    return 0
