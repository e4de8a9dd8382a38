"""The `facility` command: one subcommand per service, and `up` for all of them at once.

The composition root: every package the platform ships is imported here explicitly and
its subcommands registered; the library packages never import this one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import api.cli
import csms.cli
import dashboards.cli
import duty.cli
import reports.cli
import rules.cli
from app import wiring
from facility import bridge, brokeracl, logs
from facility.catalog import Catalog, site_rules_dir
from facility.configfile import ConfigError
from facility.metrics import serve_metrics
from facility.service import Service, forever
from facility.settings import Settings, redact_url
from simulators import drills as sim_drills

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.service import Gateway
    from ingest.service import Ingest

# Each command imports the services it runs (below, in its function): one process runs
# one command, and `facility ingest` need not load the API, the simulators and the
# central system (about 65 MB more resident and 2 s more to start).

log = logging.getLogger("facility")

DESCRIPTION = """\
Campus monitoring platform of the Panyu District administrative office centre.
Settings come from facility.yaml in the configuration folder (FACILITY_CONFIG_DIR, by
default the one shipped with the code), or from --config / FACILITY_CONFIG, and can be
overridden by environment variables such as FACILITY_MQTT_URL, FACILITY_INFLUX_URL and
FACILITY_INFLUX_DATABASE. The site, register maps, vendor mappings, endpoints and rules
are files in the configuration folder."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facility", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path,
                        help="settings file (default: facility.yaml in the configuration folder)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    parser.add_argument("--sites", metavar="A,B",
                        help="the sites of the sites folder (sites_dir) this process serves, "
                             "comma-separated (default: all; FACILITY_SITE_IDS)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate the settings, site file, register maps and "
                                     "vendor mappings, and print a summary")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "gateway", help="run gateways: poll Modbus devices or decode vendor MQTT, publish "
                        "canonical readings",
        description="Run one or more gateways from the site file. Each polls its Modbus "
                    "devices or decodes its vendors' MQTT messages and publishes canonical "
                    "readings, events and statuses. While the broker is away it spools to disk.")
    p.add_argument("--id", action="append", dest="ids", metavar="GATEWAY",
                   help="gateway id from the site file (repeatable; default: all)")
    _metrics_option(p)
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser(
        "ingest", help="write canonical messages from the broker into InfluxDB",
        description="Subscribe (QoS 1, persistent session) to telemetry, statuses, events and "
                    "dead letters and write them to InfluxDB in batches; a message is "
                    "acknowledged only after InfluxDB accepted it.")
    p.add_argument("--client-id", help="MQTT client id (default from settings: ingest)")
    p.add_argument("--retire", action="store_true",
                   help="take this worker slot out for good: store what the broker still "
                        "holds for it, then end its session (docs/ingest.md)")
    _metrics_option(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "simulate", help="run the campus device simulators (Modbus servers, vendor MQTT)",
        description="Serve the simulated bollard PLC and energy meters on the Modbus ports of "
                    "the site file and publish the fire, EV, drainage and gas devices' vendor "
                    "MQTT payloads.")
    _sim_options(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "up", help="run simulators and every service in one process (the demo)",
        description="Run the simulators, every gateway and ingest in one process, and show "
                    "what runs and live message rates per device family. With "
                    "--start-servers, InfluxDB and Mosquitto are started too when nothing "
                    "answers at the configured addresses.")
    _sim_options(p)
    p.add_argument("--no-simulators", action="store_true", help="real devices only")
    p.add_argument("--start-servers", action="store_true",
                   help="start InfluxDB/Mosquitto (data in var/) if they are not running")
    p.add_argument("--every", type=float, default=5.0, help="seconds between status lines")
    p.add_argument("--history-days", type=float, default=35.0,
                   help="days of simulated history written first into an empty InfluxDB "
                        "(default 35; 0: none)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "broker", help="the broker's access control and bridge, generated from the site file",
        description="Write Mosquitto's ACL file (acl_file) for this site: one user per "
                    "gateway, service and vendor platform, screens by endpoint id. Set the "
                    "passwords with mosquitto_passwd (see config/mosquitto/README.md). "
                    "`bridge --site SITE`: the site broker's bridge to the centre "
                    "(settings' bridge section; docs/district.md).")
    p.add_argument("what", choices=["acl", "users", "bridge"],
                   help="the ACL file, the user names, or a site broker's bridge")
    p.add_argument("--site", help="bridge: the site (default: the site file's)")
    p.add_argument("--centre-acl", action="store_true",
                   help="bridge: the central broker's ACL lines for the site's bridge user")
    p.add_argument("--out", type=Path, help="write to this file (default: standard output)")
    p.set_defaults(func=cmd_broker)

    # The packages' own subcommands; `rules run` starts the engine wired here (with the
    # simulated screens and PA zones on --displays).
    rules.cli.register(sub, run=cmd_rules_run)
    api.cli.register(sub)
    dashboards.cli.register(sub)
    duty.cli.register(sub)
    reports.cli.register(sub)
    csms.cli.register(sub, run=cmd_ocpp_run)
    sim_drills.register(sub)  # `facility drill ...`: 演练 on the running simulators
    _register_deploy(sub)  # `facility deploy systemd`: the units of a deployment
    return parser


def _metrics_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus /metrics and /healthz there (e.g. 127.0.0.1:9108)")


async def _serve_metrics(spec: str | None,
                         services: Sequence[Gateway | Ingest]) -> web.AppRunner | None:
    if not spec:
        return None
    host, _, port = spec.rpartition(":")
    return await serve_metrics([s.metrics for s in services],
                               host or "127.0.0.1", int(port),
                               healthy=lambda: all(s.ready.is_set() for s in services))


def _sim_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="simulated seconds per real second (e.g. 288: a day in 5 minutes)")
    p.add_argument("--start", type=datetime.fromisoformat, default=None,
                   help="simulated start time, ISO 8601 (default: now)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        # Every site this process serves (a sites folder, or the one site file); a
        # command that serves one site takes the first.
        settings, district = wiring.district(args.config, args.sites)
        args.district = district
        catalog = next(iter(district.values()))
        func: Callable[[argparse.Namespace, Settings, Catalog],
                       Coroutine[Any, Any, int]] = args.func
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(func(args, settings, catalog))
        return 0
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2


def _district(args: argparse.Namespace, catalog: Catalog) -> dict[str, Catalog]:
    """The sites this process serves (main() put them in args)."""
    district: dict[str, Catalog] = getattr(args, "district", None) or \
        {catalog.site.site.id: catalog}
    return district


async def cmd_check(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from gateway.service import Gateway
    from rules.service import load_all

    print(f"configuration in {settings.config_folder}")
    for one in _district(args, catalog).values():
        site = one.site  # the catalog checked the files against each other
        for spec in site.gateways:
            Gateway(settings, one, spec.id)  # compiles its read plans and decoders
        rules_dir = site_rules_dir(settings, one)
        rules = load_all(settings, one, rules_dir)[2]  # the site's rules against its devices
        devices = list(site.all_device_ids())
        print(f"site {site.site.id} ({site.site.name}): {len(site.places)} places, "
              f"{len(site.gateways)} gateways, {len(devices)} devices, "
              f"{len(one.models)} register maps, {len(one.vendors)} vendor mappings, "
              f"{len(one.endpoints.endpoints)} endpoints, {len(rules.rules)} rules "
              f"({rules_dir})")
    return 0


async def cmd_broker(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    if args.what == "bridge":
        sites = getattr(args, "district", None) or {catalog.site.site.id: catalog}
        site = args.site or catalog.site.site.id
        if site not in sites:
            raise ConfigError(f"--site {site!r}: no such site (sites: {', '.join(sites)})")
        make = bridge.centre_acl if args.centre_acl else bridge.config
        text = make(sites[site], settings, site)
    else:
        text = brokeracl.acl(catalog) if args.what == "acl" \
            else "\n".join(brokeracl.users(catalog)) + "\n"
    if args.out:
        # The bridge's file holds its password: readable by its owner only.
        mode = 0o600 if args.what == "bridge" else 0o644
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        print(text, end="")
    return 0


async def cmd_gateway(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from gateway.service import Gateway

    # An ocpp gateway is the central system (`facility ocpp run`), not a gateway process.
    # Gateway ids are unique in a district (facility/catalog.py), so --id needs no site.
    owner = {g.id: c for c in _district(args, catalog).values() for g in c.site.gateways
             if g.kind != "ocpp"}
    ids = args.ids or list(owner)
    gateways = [Gateway(settings, owner.get(gid, catalog), gid) for gid in ids]
    async with contextlib.AsyncExitStack() as stack:
        for gw in gateways:
            await stack.enter_async_context(gw)
        runner = await _serve_metrics(args.metrics, list(gateways))
        if runner is not None:
            stack.push_async_callback(runner.cleanup)
        log.info("gateways running: %s", ", ".join(ids))
        await forever(list(gateways))
    return 0


async def cmd_ingest(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from ingest.service import Ingest, retire

    if args.retire:
        print(f"stored {await retire(settings, args.client_id)} messages; slot retired")
        return 0

    # Every site: one subscription to '+' (ingest.site) as before. A chosen subset
    # (--sites, site_ids): a subscription per site, each under its own client id.
    ingests = [Ingest(settings, client_id=args.client_id)] if not settings.site_ids else [
        Ingest(settings.model_copy(update={"ingest": settings.ingest.model_copy(
            update={"site": site_id})}),
            client_id=f"{args.client_id or settings.ingest.client_id}-{site_id}")
        for site_id in _district(args, catalog)]
    async with contextlib.AsyncExitStack() as stack:
        for ingest in ingests:
            await stack.enter_async_context(ingest)
        runner = await _serve_metrics(args.metrics, list(ingests))
        log.info("ingest running into %s database %s", settings.influx.url,
                 settings.influx.database)
        try:
            await forever(list(ingests))
        finally:
            if runner is not None:
                await runner.cleanup()
    return 0


async def cmd_simulate(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from simulators import campus

    await campus.run(catalog.site, settings.mqtt, seed=args.seed, scale=args.speed,
              start=args.start.timestamp() if args.start else None)
    return 0


async def cmd_up(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from app.up import run_up

    return await run_up(args, settings, catalog)


async def cmd_rules_run(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    """`facility rules run`: the engine, and with --displays the simulated screens and PA."""
    from rules.service import RulesService

    # One engine per site served (rules/service.py: one worker per site); one site is
    # the engine of before, rules.site included.
    # A site's rules: its own folder in a sites folder, else rules_dir (site_rules_dir).
    sites = _district(args, catalog)
    engines = [RulesService(settings, catalog, rules_dir=site_rules_dir(settings, catalog))
               ] if len(sites) == 1 else [
        RulesService(settings.model_copy(update={"rules": settings.rules.model_copy(
            update={"site": site_id})}), site, rules_dir=site_rules_dir(settings, site))
        for site_id, site in sites.items()]
    services: list[Service] = []
    if args.displays:  # the simulated screens listen on one port: the first site's
        services.append(wiring.display_player(settings, engines[0]))
    for engine in engines:
        engine.on_reload = wiring.freeze
        services.append(engine)
    async with contextlib.AsyncExitStack() as stack:
        for svc in services:
            await stack.enter_async_context(svc)
        wiring.freeze()  # the engine is up: its long-lived objects stay out of gc
        stack.callback(wiring.thaw)
        if args.metrics:
            host, _, port = args.metrics.rpartition(":")
            runner = await serve_metrics([e.metrics for e in engines], host or "127.0.0.1",
                                         int(port),
                                         healthy=lambda: all(e.failed is None for e in engines))
            stack.push_async_callback(runner.cleanup)
        for engine in engines:
            print(f"rules engine for {engine.site_id}: {len(engine.rules.rules)} rules, "
                  f"{len(engine.endpoints.endpoints)} endpoints, state in "
                  f"{redact_url(engine.state_url)}", flush=True)
        await forever(services)
    return 0


async def cmd_ocpp_run(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    """`facility ocpp run`: the OCPP 1.6J central system of the site's ocpp gateway."""
    from csms.service import CentralSystem

    async with CentralSystem(settings, catalog.site) as central:
        runner = None
        if args.metrics:
            host, _, port = args.metrics.rpartition(":")
            runner = await serve_metrics([central.metrics], host or "127.0.0.1", int(port),
                                         healthy=lambda: central.failed is None)
        await central.wait_ready(60)
        print(f"OCPP central system {central.gateway_id}: "
              f"{len(central.config.charge_points)} charge points on port {central.port}",
              flush=True)
        try:
            await forever([central])
        finally:
            if runner is not None:
                await runner.cleanup()
    return 0


def _register_deploy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from app import deploy

    deploy.register(sub, run=cmd_deploy)


async def cmd_deploy(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    """`facility deploy systemd --out DIR`: units for the sites this process would serve."""
    from app import deploy

    sites = list(_district(args, catalog))
    written = deploy.generate(
        args.out, sites, python=args.python,
        config=args.settings or f"{args.etc}/facility.yaml", etc=args.etc, user=args.user,
        ingest_workers=args.ingest_workers, rules_workers=args.rules_workers,
        mosquitto=args.mosquitto)
    print(f"{len(written)} files in {args.out} for {len(sites)} site(s): "
          f"{', '.join(sites)}; check them with scripts/verify-units {args.out}")
    return 0
