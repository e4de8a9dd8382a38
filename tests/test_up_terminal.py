"""`facility up` in the terminal: rates over a window per family, aligned columns with
Chinese text, new alerts as they happen, and SIGTERM stopping everything it started (the
InfluxDB and Mosquitto of --start-servers included)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.up import RateMonitor, print_alert, table, text_width
from facility import messages as m
from facility import topics
from facility.settings import Settings
from tests.conftest import SITE_FILE, catalog

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_each_family_counts_over_its_own_window(settings: Settings) -> None:
    clock = FakeClock()
    monitor = RateMonitor(settings, clock=clock)
    clock.t += 1000
    topic = topics.telemetry("s", "drainage", "wl-1")
    for _ in range(3):  # a LoRa sensor about every 5 minutes
        monitor.seen(topic)
        clock.t += 250
    monitor.seen(topics.telemetry("s", "bollard", "plc"))
    clock.t += 5
    rates = monitor.rates()
    # Drainage: 15 minutes, so its last three uplinks still count (not 0.0 msg/s).
    assert rates["drainage"] == (900.0, 3, 3 / 900)
    assert rates["bollard"] == (10.0, 1, 1 / 10)
    clock.t += 10
    assert monitor.rates()["bollard"] == (10.0, 0, 0.0)
    assert monitor.totals == {"drainage": 3, "bollard": 1}


def test_columns_line_up_with_chinese_text() -> None:
    rows = [["系统", "窗口", "条数"], ["升降柱", "10 秒", "5"], ["energy", "1 分钟", "123"]]
    lines = table(rows, right=frozenset({2}))
    assert text_width("升降柱") == 6 and text_width("ab") == 2
    # The left-aligned columns start, and the right-aligned one ends, at the same terminal
    # column on every line.
    assert {tuple(_starts(line)[:2]) for line in lines} == {(2, 10)}, lines
    assert {text_width(line) for line in lines} == {22}, lines
    assert lines[1].endswith("  5") and lines[2].endswith("123")


def _starts(line: str) -> list[int]:
    out, col, gap = [], 0, 2
    for c in line:
        if c == " ":
            gap += 1
        else:
            if gap >= 2:
                out.append(col)
            gap = 0
        col += text_width(c)
    return out


def test_a_new_alert_is_printed_at_once(settings: Settings,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    site = catalog().site
    seen: list[m.AlertMessage] = []
    monitor = RateMonitor(settings, on_alert=seen.append)
    alert = m.AlertMessage(id="a1", site=site.site.id, rule="fire-alarm", source="sd-1",
                           ts=1_790_000_000_000_000_000, state=m.AlertState.ACTIVE_UNACK,
                           active=True, acknowledged=False, severity=m.Severity.CRITICAL,
                           priority=1, transition="raised", family="fire",
                           place="ebike-shed-west", title="西门电动自行车停车棚火警")
    monitor.seen(topics.alert(site.site.id, "a1"), m.encode(alert))
    assert seen == [alert]
    print_alert(alert, site)
    print_alert(m.AlertMessage(**{**{f: getattr(alert, f) for f in alert.__struct_fields__},
                                  "transition": "acknowledged"}), site)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "新报警 22:13:20  紧急  消防  西门电动自行车停车棚  西门电动自行车停车棚火警" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found |= {int(c) for c in text.split()}
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ,
           "FACILITY_SITE_FILE": str(SITE_FILE),
           "FACILITY_STATE_URL": f"sqlite:///{tmp_path / 'state.sqlite'}",
           "FACILITY_MQTT_URL": f"mqtt://127.0.0.1:{_free_port()}",
           "FACILITY_INFLUX_URL": f"http://127.0.0.1:{_free_port()}",
           "FACILITY_SPOOL_DIR": str(tmp_path / "var" / "spool"),
           "FACILITY_API_PORT": str(_free_port()),
           "FACILITY_RULES_DISPLAY_PORT": str(_free_port()),
           "FACILITY_OCPP_PORT": str(_free_port()),
           "FACILITY_DUTY_PORT": str(_free_port())}


@pytest.mark.servers
def test_sigterm_stops_everything_it_started(tmp_path: Path) -> None:
    env = _env(tmp_path)
    log = tmp_path / "up.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "up", "--start-servers", "--no-simulators",
             "--history-days", "0", "--every", "0.5"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "--- facility up" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        servers = _children(process.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in servers}
        assert {"influxd", "mosquitto"} <= names, names
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in servers):
            assert time.monotonic() < deadline, "servers outlived facility up"
            time.sleep(0.05)
        assert "SIGTERM" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.servers
def test_sigterm_while_the_history_is_written(tmp_path: Path) -> None:
    """Stopped while it writes the simulated history: its worker processes, InfluxDB and
    Mosquitto end with it."""
    log = tmp_path / "up.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "up", "--start-servers", "--history-days", "35"],
            cwd=REPO, env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:  # the servers and the two history workers (and spawn's tracker)
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            children = _children(process.pid)
            names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in children
                     if _alive(pid)]
            if {"influxd", "mosquitto"} <= set(names) and names.count("python") >= 3:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children):
            assert time.monotonic() < deadline, "children outlived facility up"
            time.sleep(0.05)
        assert "never awaited" not in log.read_text()
        assert "已写入" not in log.read_text()  # stopped before the history was done
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
