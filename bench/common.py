"""What every benchmark shares: the machine description, figures, and private servers."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from facility.localservers import InfluxServer, MosquittoServer


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    target: str = ""  # e.g. ">= 30000"; empty when the figure is only reported
    met: bool | None = None  # None when there is no target
    note: str = ""

    def line(self) -> str:
        verdict = "" if self.met is None else ("  OK " if self.met else "  MISSED")
        target = f"  (target {self.target})" if self.target else ""
        note = f"  [{self.note}]" if self.note else ""
        return f"  {self.name:<58} {self.value:>12,.1f} {self.unit:<8}{target}{verdict}{note}"


def figure(name: str, value: float, unit: str, *, at_least: float | None = None,
           at_most: float | None = None, note: str = "") -> Figure:
    if at_least is not None:
        return Figure(name, value, unit, f">= {at_least:,g}", value >= at_least, note)
    if at_most is not None:
        return Figure(name, value, unit, f"<= {at_most:,g}", value <= at_most, note)
    return Figure(name, value, unit, note=note)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = []
    for tool, flag in (("mosquitto", "-h"), ("influxd", "version")):
        path = shutil.which(tool) or f"/usr/sbin/{tool}"
        try:
            out = subprocess.run([path, flag], capture_output=True, text=True, timeout=5)
            first = (out.stdout or out.stderr).strip().splitlines()[0]
            versions.append(first)
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; "
            + "; ".join(versions))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def servers(mosquitto_config: str = "max_queued_messages 10000000\nmax_inflight_messages 0\n"
            ) -> Iterator[tuple[MosquittoServer, InfluxServer, Path]]:
    """A private Mosquitto and InfluxDB for one benchmark; both stopped afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="facility-bench-"))
    broker = MosquittoServer(folder / "mosquitto", extra_config=mosquitto_config)
    influx = InfluxServer(folder / "influxdb")
    broker.start()
    try:
        influx.start()
        try:
            yield broker, influx, folder
        finally:
            influx.stop()
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
