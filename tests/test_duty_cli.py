"""`facility duty` and `facility workorders`: help, the roster in the store, iCalendar out
and in unchanged, who is on duty, the handover and its acknowledgement."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACILITY_STATE_URL", f"sqlite:///{tmp_path / 'state.sqlite'}")
    return tmp_path


@pytest.mark.parametrize("command", [["duty"], ["workorders"], ["duty", "handover"],
                                     ["workorders", "resolve"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage: facility" in capsys.readouterr().out


def test_roster_calendar_round_trip_and_handover(store_env: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["duty", "load", "--days", "2"]) == 0
    assert main(["duty", "now", "--team", "control_room", "--at", "2026-12-06T03:00"]) == 0
    out = capsys.readouterr().out
    assert "安防监控中心" in out and "(guard-" in out
    ics = store_env / "roster.ics"
    assert main(["duty", "export", "--out", str(ics)]) == 0
    first = ics.read_bytes()
    assert first.startswith(b"BEGIN:VCALENDAR")
    assert main(["duty", "import", str(ics)]) == 0
    assert main(["duty", "export", "--out", str(ics)]) == 0
    assert ics.read_bytes() == first
    capsys.readouterr()
    assert main(["duty", "handover", "--from", "guard-li", "--to", "guard-wang",
                 "--note", "西门积水点已巡查"]) == 0
    assert "handover 1:" in capsys.readouterr().out
    assert main(["duty", "handover", "--ack", "1", "--by", "guard-wang"]) == 0
    assert main(["duty", "handover", "--ack", "1", "--by", "guard-wang"]) == 1  # once
    capsys.readouterr()
    assert main(["duty", "report"]) == 0
    assert "交接班 control_room：guard-li → guard-wang" in capsys.readouterr().out
    bad = store_env / "bad.ics"
    bad.write_bytes(b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nEND:VEVENT\r\n"
                    b"END:VCALENDAR\r\n")
    assert main(["duty", "import", str(bad)]) == 2
    assert "no person" in capsys.readouterr().err
