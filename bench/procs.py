"""Running the platform's own services as separate processes for benchmarks, and reading
their CPU time and memory from /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from facility.localservers import free_port

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen[Any] | None) -> None:
    """SIGTERM and wait (20 s), then SIGKILL: a benchmark's process, stopped the one way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Service:
    """`python -m app <command>` with FACILITY_* settings and a metrics endpoint."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.metrics_port = free_port()
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", *command, "--metrics",
             f"127.0.0.1:{self.metrics_port}"],
            env={**os.environ, **env}, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

    def metric(self, name: str) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                        timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return 0.0
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                key = line.split(" ")[0].split("{")[0]
                if key == name:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz",
                                            timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: see {self.log.name}")
            time.sleep(0.1)
        raise TimeoutError("service not ready")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def loadgen(url: str, count: int, *, qos: int = 1, rate: float = 0.0, devices: int = 1000,
            site: str = "bench", first_seq: int = 1, start_ns: int = 0,
            window: int = 20000) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", "--url", url, "--count", str(count),
         "--qos", str(qos), "--rate", str(rate), "--devices", str(devices), "--site", site,
         "--first-seq", str(first_seq), "--start-ns", str(start_ns), "--window", str(window)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)


def loadgen_result(proc: subprocess.Popen[str], timeout: float = 600) -> dict[str, float]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    return dict(json.loads(out.strip().splitlines()[-1]))
