"""`facility users add` and `passwd` without a terminal: the password comes from standard
input, and with none there the command says how to give it, with no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _users(args: list[str], tmp_path: Path, stdin: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FACILITY_STATE_URL": f"sqlite:///{tmp_path / 'state.sqlite'}"}
    return subprocess.run([sys.executable, "-m", "app", "users", *args], cwd=REPO, env=env,
                          input=stdin, stdin=subprocess.DEVNULL if stdin is None else None,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.servers  # six processes of the command: not for the fast tier
def test_users_add_without_a_terminal(tmp_path: Path) -> None:
    empty = _users(["add", "ada", "--role", "admin", "--zones", "*"], tmp_path, None)
    assert empty.returncode == 2
    assert "Traceback" not in empty.stderr
    assert "--password-stdin" in empty.stderr and "printf" in empty.stderr
    # A pipe is read without --password-stdin (no terminal to ask on) ...
    piped = _users(["add", "ada", "--role", "admin", "--zones", "*"], tmp_path,
                   "correct horse battery\n")
    assert piped.returncode == 0, piped.stderr
    assert "added ada (admin" in piped.stdout
    # ... and so is a new password; a weak one is refused with the reason.
    weak = _users(["passwd", "ada"], tmp_path, "123\n")
    assert weak.returncode == 2 and "Traceback" not in weak.stderr
    none = _users(["passwd", "ada"], tmp_path, "")
    assert none.returncode == 2 and "facility users passwd" in none.stderr
    changed = _users(["passwd", "ada", "--password-stdin"], tmp_path, "another long secret\n")
    assert changed.returncode == 0, changed.stderr
    listed = _users(["list"], tmp_path, None)
    assert "ada" in listed.stdout
