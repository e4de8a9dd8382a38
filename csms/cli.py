"""`facility ocpp ...`: run the central system; make a charge point's password hash.

`ocpp run` itself is the composition root's (app/cli.py); `register` takes it as `run`."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from csms.config import hash_password
from facility.settings import Settings


def register(sub: Any, run: Callable[..., Awaitable[int]]) -> None:
    p = sub.add_parser(
        "ocpp", help="the OCPP 1.6J central system: EV charge points connect to it",
        description="Run the OCPP 1.6J central system (charge points of the site file's ocpp "
                    "gateway connect on ws(s)://HOST:PORT/ocpp/{id}), or make the Argon2id "
                    "hash of a charge point's password for config/ocpp.yaml.")
    os_ = p.add_subparsers(dest="ocpp_command", required=True, metavar="ACTION")
    r = os_.add_parser("run", help="run the central system")
    r.add_argument("--metrics", metavar="HOST:PORT", default="",
                   help="serve Prometheus metrics (/metrics, /healthz) here")
    r.set_defaults(func=run)
    r = os_.add_parser("hash-password",
                       help="read a password (standard input or prompt), print its hash")
    r.set_defaults(func=cmd_hash_password)


async def cmd_hash_password(args: argparse.Namespace, settings: Settings, _: object) -> int:
    password = getpass.getpass("password: ") if sys.stdin.isatty() \
        else sys.stdin.readline().rstrip("\n")
    if len(password) < 16:
        print("a charge point password needs at least 16 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0
