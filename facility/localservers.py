"""Start real InfluxDB 1.x and Mosquitto processes on free ports with their own data dirs.

Used by the test fixtures, the benchmarks and the demo. Each server object stops only
the process it started. Waiting is always for a condition, with a bound.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path


class ServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class _Process:
    name = "server"

    def __init__(self, data_dir: Path, host: str, port: int) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Path = self.data_dir / f"{self.name}.log"

    # Subclasses write their config and return the argv.
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _up_or_exited(self, proc: subprocess.Popen[bytes]) -> bool:
        return self._ready() or proc.poll() is not None

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port != 0
        for _attempt in range(5):
            if not fixed_port:
                self.port = free_port(self.host)
            argv = self._command()
            with open(self._log, "ab") as log:
                proc = self.proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            try:
                wait_for(partial(self._up_or_exited, proc),
                         timeout, f"{self.name} on port {self.port}")
            except ServerError:
                self.kill()
                raise ServerError(f"{self.name} did not start; log:\n{self.log_tail()}") from None
            if self.proc.poll() is None:
                return
            if fixed_port:
                break  # the port is taken or the config is bad: a retry will not help
        raise ServerError(f"{self.name} exited at start; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError(f"{self.name} is not running")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume()  # a stopped process cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        wait_for(lambda: not port_open(self.host, self.port), 10, f"{self.name} port to close")
        self.start(timeout)


class InfluxServer(_Process):
    name = "influxd"

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = 0,
                 binary: str | None = None) -> None:
        super().__init__(data_dir, host, port)
        self.binary = binary or shutil.which("influxd") or "/usr/bin/influxd"
        self.rpc_port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        if self.rpc_port == 0 or not port_open(self.host, self.port):
            self.rpc_port = free_port(self.host)
        d = self.data_dir
        config = d / "influxdb.conf"
        config.write_text(
            f"""reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[http]
  bind-address = "{self.host}:{self.port}"
  log-enabled = false
  pprof-enabled = false
[continuous_queries]
  log-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
""",
            encoding="utf-8",
        )
        return [self.binary, "-config", str(config)]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=0.5) as resp:
                return int(resp.status) == 204
        except (urllib.error.URLError, OSError):
            return False


class MosquittoServer(_Process):
    name = "mosquitto"

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = 0,
                 extra_config: str = "", binary: str | None = None) -> None:
        super().__init__(data_dir, host, port)
        self.binary = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.extra_config = extra_config

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        d = self.data_dir
        config = d / "mosquitto.conf"
        has_listener = "listener" in self.extra_config
        config.write_text(
            (f"listener {self.port} {self.host}\nallow_anonymous true\n" if not has_listener
             else self.extra_config.replace("{port}", str(self.port)))
            # Started as root, Mosquitto would switch to user 'mosquitto', which cannot
            # write this folder: no log, and no persistence across a restart.
            + f"""user {getpass.getuser()}
set_tcp_nodelay true
persistence true
persistence_location {d}/
log_dest file {d}/mosquitto.log
log_type error
log_type warning
log_type notice
"""
            + ("" if has_listener else self.extra_config),
            encoding="utf-8",
        )
        self._log = d / "mosquitto.log"
        return [self.binary, "-c", str(config)]

    def _ready(self) -> bool:
        return port_open(self.host, self.port)


@contextmanager
def postgres_database(prefix: str = "facility_test", host: str = "127.0.0.1",
                      port: int = 5432) -> Iterator[str]:
    """A new database on the machine's PostgreSQL (trust auth as the current user), its
    URL yielded and the database dropped afterwards: tests' and benchmarks' own state."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    pg = ["-h", host, "-p", str(port)]
    made = subprocess.run(["createdb", *pg, name], capture_output=True, text=True)
    if made.returncode != 0:
        raise ServerError(f"cannot create a PostgreSQL database on {host}:{port}: "
                          f"{made.stderr.strip()}")
    try:
        yield f"postgresql://{getpass.getuser()}@{host}:{port}/{name}"
    finally:
        subprocess.run(["dropdb", *pg, "--if-exists", "--force", name], capture_output=True)
