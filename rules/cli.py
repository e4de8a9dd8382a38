"""`facility rules ...`: run the engine, check the rule files, read and act on alerts.

`rules run` itself is the composition root's (app/cli.py): it wires the simulated screens
and PA zones next to the engine; `register` takes it as `run`."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from facility.catalog import Catalog
from facility.configfile import ConfigError
from facility.settings import Settings

ACTIONS = {"ack": "acknowledge", "comment": "comment", "shelve": "shelve",
           "unshelve": "unshelve", "oos": "out_of_service", "rts": "return_to_service",
           "maintenance": "maintenance", "end-maintenance": "end_maintenance",
           "content": "set_content", "reload": "reload"}


def register(sub: Any, run: Callable[..., Awaitable[int]]) -> None:
    p = sub.add_parser(
        "rules", help="the rules engine: run it, check rule files, list and handle alerts",
        description="Run the rules engine (alerts, incidents, LED screens and PA), validate "
                    "the rule files, list alerts and incidents, acknowledge/shelve/... "
                    "alerts through the running engine, print alarm-system health (ISA-18.2) "
                    "and CAP 1.2 documents.")
    rs = p.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    r = rs.add_parser("run", help="run the rules engine for the site")
    r.add_argument("--displays", action="store_true",
                   help="also run the simulated screens and PA zones (pages on display_port)")
    r.add_argument("--metrics", metavar="HOST:PORT", default="",
                   help="serve Prometheus metrics (/metrics, /healthz) here, e.g. 127.0.0.1:9108")
    r.set_defaults(func=run)
    r = rs.add_parser(
        "workers", help="a worker serving many sites under leases (PostgreSQL state store)",
        description="Serve sites under leases held in the PostgreSQL state store: start one "
                    "on each machine (or several on one); they share the sites (ceil(sites / "
                    "live workers) each) and take over a stopped or dead worker's sites within "
                    "ttl + ttl/3 plus a start. The sites are those this process serves "
                    "(facility --sites a,b rules workers; default: every site). Prints a line "
                    "for each site acquired, served, lost and released.")
    r.add_argument("--ttl", type=float, default=6.0,
                   help="s a lease lasts unless renewed (renewed every ttl/3; default 6)")
    r.add_argument("--owner", default="", help="this worker's id (default: host-pid-random)")
    r.add_argument("--metrics", metavar="HOST:PORT", default="",
                   help="serve the held sites' Prometheus metrics (/metrics, /healthz) here")
    r.set_defaults(func=cmd_workers)
    r = rs.add_parser("check", help="validate rule files and endpoints; list the rules")
    r.set_defaults(func=cmd_check)
    r = rs.add_parser("alerts", help="list alerts from the state store (open ones by default)")
    r.add_argument("--all", action="store_true", help="closed ones too")
    r.add_argument("--hours", type=float, default=24.0, help="raised in the last N hours")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_alerts)
    r = rs.add_parser("history", help="an alert's transitions: who did what and when")
    r.add_argument("alert")
    r.set_defaults(func=cmd_history)
    r = rs.add_parser("incidents", help="list incidents")
    r.add_argument("--all", action="store_true")
    r.set_defaults(func=cmd_incidents)
    r = rs.add_parser("cap", help="print the CAP 1.2 documents of an incident")
    r.add_argument("incident")
    r.set_defaults(func=cmd_cap)
    r = rs.add_parser("health", help="alarm-system health figures (ISA-18.2)")
    r.add_argument("--hours", type=float, default=24.0)
    r.set_defaults(func=cmd_health)
    r = rs.add_parser("displays", help="what each screen was last told to show")
    r.set_defaults(func=cmd_displays)
    for name, action in ACTIONS.items():
        r = rs.add_parser(name, help=f"{action.replace('_', ' ')} (through the running engine)")
        if name != "reload":
            r.add_argument("target", help="alert id (device id for maintenance, screen id for "
                                          "content)")
        r.add_argument("--by", required=name != "reload", default="cli",
                       help="who does it (recorded)")
        r.add_argument("--comment", default="")
        if name in ("shelve", "maintenance"):
            r.add_argument("--for", dest="duration", required=name == "shelve",
                           help="e.g. 30m, 2h, 1d")
        if name == "content":
            r.add_argument("--text", required=True)
        r.set_defaults(func=cmd_op, action=action)


def _site_id(settings: Settings, catalog: Catalog) -> str:
    return settings.rules.site or catalog.site.site.id


async def cmd_workers(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    """`facility rules workers`: until SIGTERM or Ctrl-C, then a clean stop (each site's
    last state stored and its lease released, so another worker takes it at once)."""
    import asyncio
    import signal

    from rules.workers import RulesWorkers

    # The sites this process serves (app.cli put them in args: the sites folder, or the
    # one site file), each with its own catalog.
    district: dict[str, Catalog] = getattr(args, "district", None) or \
        {catalog.site.site.id: catalog}
    if args.ttl <= 0:
        raise ConfigError("--ttl: must be > 0")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    workers = RulesWorkers(settings, catalog, list(district), owner=args.owner or None,
                           ttl=args.ttl, catalog_for=district.__getitem__,
                           on_event=lambda text: print(text, flush=True))
    async with workers:
        runner = None
        if args.metrics:
            from facility.metrics import serve_metrics

            host, _, port = args.metrics.rpartition(":")
            runner = await serve_metrics(workers.metrics, host or "127.0.0.1", int(port),
                                         healthy=lambda: workers.failed is None)
        print(f"rules worker {workers.owner}: {len(workers.sites)} sites, lease ttl "
              f"{workers.ttl:g}s", flush=True)
        done = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([done, workers.task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            if runner is not None:
                await runner.cleanup()
        if workers.failed is not None:
            raise workers.failed
    print(f"rules worker {workers.owner}: stopped", flush=True)
    return 0


async def cmd_check(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from rules.service import load_all

    _, endpoints, rules = load_all(settings, catalog)
    for compiled in rules.rules.values():
        rule = compiled.rule
        where = compiled.file.name if compiled.file else "(built in)"
        print(f"{rule.id:<30} {rule.type:<12} {rule.severity.value:<9} "
              f"{len(compiled.sources):>3} sources  {where}")
    print(f"{len(rules.rules)} rules in {len(rules.files)} files, "
          f"{len(endpoints.endpoints)} endpoints: OK")
    return 0


async def _store(settings: Settings) -> Any:
    from rules.store import AlertStore

    return await AlertStore.open(settings.state_url)


def _t(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"


async def cmd_alerts(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    store = await _store(settings)
    try:
        since = time.time_ns() - int(args.hours * 3600e9)
        alerts = await store.alerts(_site_id(settings, catalog), open_only=not args.all,
                                    since=None if not args.all else since)
    finally:
        await store.close()
    if args.json:
        print(json.dumps([a.to_json() for a in alerts], ensure_ascii=False, indent=1))
        return 0
    for a in alerts:
        print(f"{a.id}  {a.state.value:<14} {a.severity.value:<8} P{a.priority} "
              f"{_t(a.raised_at)}  {a.rule:<28} {a.source:<18} {a.text}")
    print(f"{len(alerts)} alerts")
    return 0


async def cmd_history(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    store = await _store(settings)
    try:
        rows = await store.history(args.alert)
    finally:
        await store.close()
    for h in rows:
        print(f"{_t(h['ts'])}  {h['action']:<20} {h['from_state']:>14} -> {h['to_state']:<14} "
              f"{h['by']} {h['comment']}")
    return 0 if rows else 1


async def cmd_incidents(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    store = await _store(settings)
    try:
        incidents = await store.incidents(_site_id(settings, catalog), open_only=not args.all)
    finally:
        await store.close()
    for i in incidents:
        print(f"{i.id}  {'active' if i.active else 'cleared':<8} {i.severity.value:<8} "
              f"{_t(i.opened_at)}  {i.category:<10} {i.place:<18} {len(i.members):>3} alerts "
              f" {i.title}")
    return 0


async def cmd_cap(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    store = await _store(settings)
    try:
        docs = await store.cap_documents(args.incident)
    finally:
        await store.close()
    for doc in docs:
        print('<?xml version="1.0" encoding="UTF-8"?>\n' + doc)
    return 0 if docs else 1


async def cmd_health(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from rules.health import alarm_health

    store = await _store(settings)
    try:
        end = time.time_ns()
        report = await alarm_health(store, _site_id(settings, catalog),
                                    end - int(args.hours * 3600e9), end)
    finally:
        await store.close()
    print(json.dumps(report.as_dict(), ensure_ascii=False, indent=1))
    return 0


async def cmd_displays(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    store = await _store(settings)
    try:
        shown = await store.displays(_site_id(settings, catalog))
    finally:
        await store.close()
    for endpoint, message in sorted(shown.items()):
        if message:
            print(f"{endpoint:<22} P{message.get('priority')} {message.get('kind'):<9} "
                  f"{message.get('text')}")
    return 0


def _duration_ns(text: str | None) -> int:
    if not text:
        return 0
    from rules.config import parse_duration

    try:
        return round(parse_duration(text) * 1e9)
    except ValueError as exc:
        raise ConfigError(f"--for: {exc}") from None


async def cmd_op(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from facility.messages import AlertAction
    from rules.ops import AlertOpsClient

    duration = _duration_ns(getattr(args, "duration", None))
    target = getattr(args, "target", "rules")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", target):
        raise ConfigError(f"{target!r} is not an id")
    async with AlertOpsClient(settings.mqtt, _site_id(settings, catalog)) as ops:
        try:
            result = await ops.request(AlertAction(args.action), target, args.by,
                                       comment=args.comment,
                                       until=time.time_ns() + duration if duration else 0,
                                       text=getattr(args, "text", ""))
        except TimeoutError:
            print("no answer from the rules engine (is `facility rules run` or `facility up` "
                  "running for this site?)")
            return 1
    print(("ok" if result.ok else "refused") + (f": {result.state}" if result.state else "")
          + (f" ({result.detail})" if result.detail else ""))
    return 0 if result.ok else 1


