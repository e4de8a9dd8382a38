"""`facility api` serves the control-room API and page; `facility users ...` manages the
users in the state store from the command line, which is how the first admin comes to
exist (there is no default user and no default password)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from facility.catalog import Catalog
from facility.configfile import ConfigError
from facility.settings import Settings
from facility.site import SiteConfig

ROLES = ("viewer", "operator", "supervisor", "admin")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "api", help="serve the control-room API, live stream and page",
        description="Serve the control-room API (REST, live Server-Sent Events, OpenAPI at "
                    "/docs) and the Chinese control-room page at / . Settings: the api "
                    "section of the settings file, FACILITY_API_* variables; set "
                    "FACILITY_API_SECRET so logins survive a restart.")
    p.add_argument("--host", help="listen address (default from settings: 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default from settings: 8080)")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser(
        "users", help="manage control-room users (add the first admin here)",
        description="Users of the control-room API, in the state store. Passwords are "
                    "asked for twice on the terminal, or read from one line of standard "
                    "input with --password-stdin or when standard input is not a "
                    "terminal; they are stored as Argon2id hashes.")
    us = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    u = us.add_parser("add", help="add a user")
    u.add_argument("username")
    u.add_argument("--role", required=True, choices=ROLES)
    u.add_argument("--zones", default="",
                   help="comma-separated zone ids the user may act in, or '*' for all")
    u.add_argument("--name", default="", help="display name, e.g. 值班员 张三")
    u.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input")
    u.set_defaults(func=cmd_add)
    u = us.add_parser("list", help="list users")
    u.set_defaults(func=cmd_list)
    u = us.add_parser("passwd", help="set a user's password (ends their logins)")
    u.add_argument("username")
    u.add_argument("--password-stdin", action="store_true")
    u.set_defaults(func=cmd_passwd)
    u = us.add_parser("set", help="change a user's role or zones")
    u.add_argument("username")
    u.add_argument("--role", choices=ROLES)
    u.add_argument("--zones", help="comma-separated zone ids, or '*'")
    u.set_defaults(func=cmd_set)
    for name, disabled in (("disable", True), ("enable", False)):
        u = us.add_parser(name, help=f"{name} a user")
        u.add_argument("username")
        u.set_defaults(func=cmd_enable, disabled=disabled)


async def cmd_api(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from api.service import ApiService
    from facility.service import forever

    # Every site this process serves (--sites, a sites folder): ?site= picks one.
    district = getattr(args, "district", None)
    api = ApiService(settings, catalog, host=args.host, port=args.port, district=district)
    async with api:
        await api.wait_ready(60)
        print(f"control-room API and page at {api.url}/ (OpenAPI: {api.url}/docs)",
              flush=True)
        await forever([api])
    return 0


def _zones(text: str, site: SiteConfig) -> tuple[str, ...]:
    zones = tuple(sorted({z.strip() for z in text.split(",") if z.strip()}))
    known = {z.id for z in site.zones}
    unknown = [z for z in zones if z != "*" and z not in known]
    if unknown:
        raise ConfigError(f"--zones: unknown zones {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    return zones


class NoPassword(Exception):
    """No password could be read; the text says how to give one."""


HOW = ("give it on standard input with --password-stdin, e.g.\n"
       "  printf '%s\\n' \"$PASSWORD\" | facility users {action} NAME ... --password-stdin")


def _password(args: argparse.Namespace, passwords: Any) -> str:
    """One line of standard input with --password-stdin, or when there is no terminal to
    ask on (a pipe, a script); otherwise asked for twice on the terminal."""
    action = getattr(args, "users_command", "add")
    if args.password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline() if not sys.stdin.closed else ""
        if not line.strip("\r\n"):
            raise NoPassword("no password: standard input is not a terminal and held no "
                             "password line; " + HOW.format(action=action))
        password = line.rstrip("\r\n")
    else:
        try:
            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                raise ConfigError("the two passwords differ")
        except EOFError:
            raise NoPassword("no password given; " + HOW.format(action=action)) from None
    try:
        passwords.check_policy(password)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return password


def _read_password(args: argparse.Namespace, passwords: Any) -> str | None:
    try:
        return _password(args, passwords)
    except NoPassword as exc:
        print(exc, file=sys.stderr)
        return None


async def _open(settings: Settings) -> Any:
    from api.store import ApiStore

    return await ApiStore.open(settings.state_url)


async def cmd_add(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    import re

    from api.auth import Passwords, Role, User
    from api.models import USERNAME_PATTERN

    if not re.fullmatch(USERNAME_PATTERN, args.username):
        raise ConfigError(f"username {args.username!r}: 2-32 of a-z 0-9 _ . -, "
                          "starting with a letter")
    zones = _zones(args.zones, catalog.site)
    passwords = Passwords(settings.api.min_password_length)
    password = _read_password(args, passwords)
    if password is None:
        return 2
    hashed = await passwords.hash(password)
    async with await _open(settings) as store:
        user = User(username=args.username, role=Role(args.role), zones=zones,
                    display_name=args.name)
        if not await store.add_user(user, hashed, created_by=f"cli:{getpass.getuser()}"):
            print(f"user {args.username!r} exists; use 'facility users passwd' or 'set'",
                  file=sys.stderr)
            return 1
    print(f"added {args.username} ({args.role}, zones: {','.join(zones) or 'none'})")
    return 0


async def cmd_list(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    async with await _open(settings) as store:
        users = await store.users()
    for user in users:
        print(f"{user.username:<20} {user.role.value:<10} "
              f"{','.join(user.zones) or '-':<30} {'disabled' if user.disabled else ''} "
              f"{user.display_name}")
    print(f"{len(users)} users")
    return 0


async def cmd_passwd(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from api.auth import Passwords

    passwords = Passwords(settings.api.min_password_length)
    password = _read_password(args, passwords)
    if password is None:
        return 2
    hashed = await passwords.hash(password)
    async with await _open(settings) as store:
        changed = await store.update_user(args.username, password_hash=hashed)
    if changed is None:
        print(f"no user {args.username!r}", file=sys.stderr)
        return 1
    print(f"password of {args.username} changed; their logins have ended")
    return 0


async def cmd_set(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    from api.auth import Role

    zones = _zones(args.zones, catalog.site) if args.zones is not None else None
    async with await _open(settings) as store:
        changed = await store.update_user(args.username,
                                          role=Role(args.role) if args.role else None,
                                          zones=zones)
    if changed is None:
        print(f"no user {args.username!r}", file=sys.stderr)
        return 1
    print(f"{changed.username}: {changed.role.value}, zones {','.join(changed.zones) or '-'}")
    return 0


async def cmd_enable(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> int:
    async with await _open(settings) as store:
        changed = await store.update_user(args.username, disabled=args.disabled)
    if changed is None:
        print(f"no user {args.username!r}", file=sys.stderr)
        return 1
    print(f"{args.username} {'disabled' if args.disabled else 'enabled'}")
    return 0
