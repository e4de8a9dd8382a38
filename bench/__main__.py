"""Run the benchmarks: `python -m bench` for all, `python -m bench NAME ...` for some."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import pkgutil
import sys
import time
from pathlib import Path

from bench.common import Figure, machine


def available() -> list[str]:
    folder = Path(__file__).parent
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(folder)])
                  if m.name.startswith("bench_"))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"some of: {', '.join(available())}")
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs (smoke test of the benchmarks, figures not final)")
    parser.add_argument("--cut-minutes", type=float, default=None,
                        help="how long a link is cut, for benchmarks that take it (bridge)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="how long to run, for benchmarks that take it (soak)")
    parser.add_argument("--state", default=None,
                        help="the rules engine's state store, for benchmarks that take it "
                             "(alert_latency: sqlite, postgresql, postgresql-leased)")
    args = parser.parse_args()
    names = args.names or available()
    unknown = set(names) - set(available())
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    print(f"machine: {machine()}")
    missed = 0
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"\n== {name}: {(module.__doc__ or name).strip().splitlines()[0]}", flush=True)
        started = time.monotonic()
        options: dict[str, object] = {"quick": args.quick}
        takes = inspect.signature(module.run).parameters
        if args.cut_minutes is not None and "cut_minutes" in takes:
            options["cut_minutes"] = args.cut_minutes
        if args.minutes is not None:
            if "minutes" in inspect.signature(module.run).parameters:
                options["minutes"] = args.minutes
            else:
                print(f"  (--minutes does not apply to {name})")
        if args.state is not None:
            if "state" in inspect.signature(module.run).parameters:
                options["state"] = args.state
            else:
                print(f"  (--state does not apply to {name})")
        figures: list[Figure] = asyncio.run(module.run(**options))
        for fig in figures:
            print(fig.line(), flush=True)
            missed += fig.met is False
        print(f"  ({time.monotonic() - started:.0f} s)")
    print(f"\n{missed} target(s) missed" if missed else "\nall targets met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
