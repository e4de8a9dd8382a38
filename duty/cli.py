"""`facility duty ...` and `facility workorders ...`.

The roster and the handover are read and written in the store; work orders are acted on
through the running duty service (it alone knows whether a device is still faulty), read
from the store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duty import ical
from duty.config import DutySettings, load_duty
from duty.roster import CHINA, Calendar
from facility import labels
from facility.service import forever
from facility.settings import Settings

if TYPE_CHECKING:
    from duty.store import DutyStore

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "duty", help="the duty roster: who is on duty, iCalendar in and out, handover; run "
                     "the notification service",
        description="The duty roster (值班表) and the service that notifies people of "
                    "incidents and escalates until someone acknowledges (docs/duty.md).")
    ds = p.add_subparsers(dest="duty_command", required=True, metavar="ACTION")
    d = ds.add_parser("run", help="run the duty service (notifications, links, work orders)")
    d.set_defaults(func=cmd_run)
    d = ds.add_parser("load", help="expand config/duty.yaml's rotations into the store")
    d.add_argument("--days", type=int, default=60, help="days from today (default 60)")
    d.set_defaults(func=cmd_load)
    d = ds.add_parser("import", help="import shifts from an iCalendar (RFC 5545) file")
    d.add_argument("file", type=Path)
    d.set_defaults(func=cmd_import)
    d = ds.add_parser("export", help="export the shifts as iCalendar")
    d.add_argument("--out", type=Path, help="file (default: standard output)")
    d.set_defaults(func=cmd_export)
    d = ds.add_parser("now", help="who is on duty now (or --at), per team")
    d.add_argument("--team", help="one team (default: all)")
    d.add_argument("--at", type=datetime.fromisoformat, help="ISO time (local if no zone)")
    d.set_defaults(func=cmd_now)
    d = ds.add_parser("handover", help="hand the shift over: open incidents, work orders, "
                                       "notes; or --ack ID as the incoming person")
    d.add_argument("--team", default="control_room")
    d.add_argument("--from", dest="outgoing", help="the outgoing person (id)")
    d.add_argument("--to", dest="incoming", help="the incoming person (id)")
    d.add_argument("--note", action="append", default=[], help="a note (repeatable)")
    d.add_argument("--ack", type=int, metavar="ID", help="acknowledge handover ID")
    d.add_argument("--by", help="who acknowledges (with --ack)")
    d.set_defaults(func=cmd_handover)
    d = ds.add_parser("report", help="notifications, time to acknowledge per person, work "
                                     "orders, MTTR and SLA kept per system, with formulas")
    d.add_argument("--hours", type=float, default=24.0, help="the last N hours (default 24)")
    d.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "workorders", help="repair work orders (报修): list, open, assign, start, resolve",
        description="Repair work orders, opened by persisting faults, by an operator or for "
                    "a 12345 hotline ticket. Changes go through the running duty service.")
    ws = p.add_subparsers(dest="wo_command", required=True, metavar="ACTION")
    w = ws.add_parser("list", help="open work orders (all with --all)")
    w.add_argument("--all", action="store_true")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_wo_list)
    w = ws.add_parser("open", help="open a work order (an operator's request or a hotline "
                                   "ticket)")
    w.add_argument("--fault", required=True, help="what is wrong")
    w.add_argument("--device", default="")
    w.add_argument("--place", default="")
    w.add_argument("--priority", type=int, default=3, choices=[1, 2, 3, 4])
    w.add_argument("--team", default="repair")
    w.add_argument("--hotline", metavar="NUMBER", help="the 12345 ticket number")
    w.add_argument("--by", required=True, help="who opens it (recorded)")
    w.set_defaults(func=cmd_wo_open)
    for action, text in (("assign", "assign to a person"), ("start", "work has started"),
                         ("resolve", "repaired (refused while the device is still faulty)")):
        w = ws.add_parser(action, help=text)
        w.add_argument("id")
        w.add_argument("--by", required=True, help="who does it (recorded)")
        w.add_argument("--note", default="")
        if action == "assign":
            w.add_argument("--to", dest="assignee", required=True, help="person id")
        w.set_defaults(func=cmd_wo_move, action=action)


def _site_id(settings: Settings, site: Any) -> str:
    config = site.site if hasattr(site, "site_path") else site  # a Catalog or a SiteConfig
    return DutySettings().site or str(config.site.id)


def _places(site: Any) -> dict[str, str]:
    config = site.site if hasattr(site, "site_path") else site
    return {p.id: p.name for p in config.places}


async def _store(settings: Settings, site: Any) -> DutyStore:
    from duty.store import DutyStore  # SQLAlchemy: only for the commands that read the store

    return await DutyStore.open(settings.state_url, _site_id(settings, site))


async def cmd_run(args: argparse.Namespace, settings: Settings, site: Any) -> int:
    from duty.service import DutyService

    options = DutySettings()
    async with DutyService(settings, _site_id(settings, site), options=options,
                           places=_places(site)) as service:
        print(f"duty service for {service.site}: links and work orders on "
              f"{service.web_url}", flush=True)
        await forever([service])
    return 0


async def cmd_load(args: argparse.Namespace, settings: Settings, site: Any) -> int:
    options = DutySettings()
    config = load_duty(settings.config_folder / options.file)
    now = datetime.now(UTC)
    roster = config.roster(Calendar.load(options.holidays_file), now - timedelta(days=1),
                           now + timedelta(days=args.days))
    async with await _store(settings, site) as store:
        await store.save_roster(roster)
    print(f"{len(roster.people)} people in {len(roster.teams)} teams, "
          f"{len(roster.shifts)} shifts")
    return 0


async def cmd_import(args: argparse.Namespace, settings: Settings, site: Any) -> int:
    async with await _store(settings, site) as store:
        roster = await store.roster()
        try:
            shifts = ical.parse(args.file.read_bytes(), roster.people)
        except ical.CalendarError as exc:
            print(f"{args.file}: {exc}", file=sys.stderr)
            return 2
        await store.put_shifts(shifts)
        await store.audit(os.environ.get("USER", "cli"), "roster_import", str(args.file),
                          f"{len(shifts)} shifts", time.time())
    print(f"{len(shifts)} shifts imported")
    return 0


async def cmd_export(args: argparse.Namespace, settings: Settings, site: Any) -> int:
    async with await _store(settings, site) as store:
        roster = await store.roster()
    data = ical.export(roster.shifts, roster.people, roster.teams)
    if args.out:
        args.out.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return 0


async def cmd_now(args: argparse.Namespace, settings: Settings, site: Any) -> int:
    at = args.at or datetime.now(UTC)
    at = at if at.tzinfo else at.replace(tzinfo=CHINA)
    async with await _store(settings, site) as store:
        roster = await store.roster()
    print(f"{at.astimezone(CHINA):%Y-%m-%d %H:%M}")
    for team in roster.teams.values():
        if args.team and team.id != args.team:
            continue
        people = "、".join(f"{p.name}({p.id})" for p in roster.on_duty(team.id, at)) or "-"
        print(f"  {team.name:<8} {people}")
    return 0


async def cmd_handover(args: argparse.Namespace, settings: Settings, site: Any) -> int:
    async with await _store(settings, site) as store:
        if args.ack is not None:
            if not args.by:
                print("--ack needs --by", file=sys.stderr)
                return 2
            ok = await store.ack_handover(args.ack, args.by, time.time())
            print("acknowledged" if ok else f"no open handover {args.ack}")
            return 0 if ok else 1
        if not args.outgoing or not args.incoming:
            print("a handover needs --from and --to", file=sys.stderr)
            return 2
        items = await store.handover_items(args.note)
        number = await store.add_handover(args.team, args.outgoing, args.incoming, items,
                                          time.time())
    print(f"handover {number}: {len(items['incidents'])} incidents not closed, "
          f"{len(items['workorders'])} work orders open, {len(items['notes'])} notes; "
          f"the incoming person confirms with: facility duty handover --ack {number} --by "
          f"{args.incoming}")
    return 0


async def cmd_report(args: argparse.Namespace, settings: Settings, site: Any) -> int:
    from duty.report import figures

    until = time.time()
    async with await _store(settings, site) as store:
        found = await figures(store, until - args.hours * 3600, until)
    print("\n".join(found.lines()))
    return 0


async def cmd_wo_list(args: argparse.Namespace, settings: Settings, site: Any) -> int:
    async with await _store(settings, site) as store:
        orders = await store.orders(() if args.all else
                                    ("open", "assigned", "in_progress", "resolved"))
    if args.json:
        print(json.dumps([asdict(o) for o in orders], ensure_ascii=False, indent=1,
                         default=str))
        return 0
    for o in orders:
        state = labels.label(labels.WORKORDER_STATE, o.state)
        when = datetime.fromtimestamp(o.opened_at, CHINA)
        print(f"{o.id}  {state:<4} P{o.priority} {when:%m-%d %H:%M}  {o.kind:<8} "
              f"{o.number or o.device or '-':<20} {o.assignee or '-':<12} {o.fault}")
    print(f"{len(orders)} work orders")
    return 0


async def _call(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    import aiohttp  # only for the commands that ask the running service

    options = DutySettings()
    if options.secret is None:
        raise SystemExit("FACILITY_DUTY_SECRET is not set: the duty service's key is needed")
    url = f"http://{options.host}:{options.port}{path}"
    headers = {"Authorization": f"Bearer {options.secret.get_secret_value()}"}
    with contextlib.suppress(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session, \
                session.post(url, json=body, headers=headers) as resp:
            return resp.status, await resp.json()
    return 503, {"detail": f"the duty service does not answer at {url}"}


async def cmd_wo_open(args: argparse.Namespace, settings: Settings, site: Any) -> int:
    body = {"kind": "hotline" if args.hotline else "request", "number": args.hotline or "",
            "device": args.device, "place": args.place, "fault": args.fault,
            "priority": args.priority, "team": args.team, "by": args.by}
    status, reply = await _call("/workorders", body)
    print(reply.get("id", reply.get("detail")))
    return 0 if status == 200 else 1


async def cmd_wo_move(args: argparse.Namespace, settings: Settings, site: Any) -> int:
    body = {"by": args.by, "note": args.note, "assignee": getattr(args, "assignee", "")}
    status, reply = await _call(f"/workorders/{args.id}/{args.action}", body)
    if status == 200:
        print(f"{reply['id']}: {labels.label(labels.WORKORDER_STATE, reply['state'])}")
        return 0
    print(reply.get("detail", status), file=sys.stderr)
    return 1
