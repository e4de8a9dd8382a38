"""The systemd units of a deployment (app/deploy.py, deploy/systemd/): what the generator
writes, that no secret is in a unit, and that `systemd-analyze verify` passes them
(scripts/verify-units) and fails a broken one. No server is started."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import cli, deploy

REPO = Path(__file__).resolve().parent.parent
VERIFY = REPO / "scripts" / "verify-units"
SITES = ["site-01", "site-02", "school-shiqiao"]
SERVICES = ["facility-ingest@", "facility-rules@", "facility-gateway@", "facility-broker@",
            "facility-ocpp@", "facility-api", "facility-duty"]
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def generate(out: Path, *, ingest_workers: int = 3, rules_workers: int = 2, user: str = "",
             mosquitto: str = "/usr/sbin/mosquitto") -> list[Path]:
    return deploy.generate(out, SITES, python=sys.executable, config="/etc/facility/x.yaml",
                           etc="/etc/facility", user=user, ingest_workers=ingest_workers,
                           rules_workers=rules_workers, mosquitto=mosquitto)


def section(text: str) -> dict[str, list[str]]:
    """key -> values of a unit file (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_one_unit_per_service_templated_per_worker_and_site(tmp_path: Path) -> None:
    generate(tmp_path, ingest_workers=3, rules_workers=2)
    units = tmp_path / "units"
    assert sorted(p.name for p in units.iterdir()) == sorted(
        [f"{s}.service" for s in SERVICES] + ["facility.target"])
    wants = section((units / "facility.target").read_text())["Wants"]
    assert wants == (
        [f"facility-ingest@{n}.service" for n in (1, 2, 3)]
        + [f"facility-rules@{n}.service" for n in (1, 2)]
        + [u for s in SITES for u in (f"facility-broker@{s}.service",
                                      f"facility-gateway@{s}.service")]
        + ["facility-api.service", "facility-duty.service"])
    ingest = section((units / "facility-ingest@.service").read_text())
    assert ingest["ExecStart"] == [f"{sys.executable} -m app ingest --client-id ingest-%i "
                                   "$METRICS"]
    assert "FACILITY_INGEST_SHARED_GROUP=ingest" in ingest["Environment"][0]
    rules = section((units / "facility-rules@.service").read_text())
    assert rules["ExecStart"][0].startswith(f"{sys.executable} -m app rules workers")
    assert (tmp_path / "etc" / "ingest@2.env").read_text() == \
        "METRICS=--metrics 127.0.0.1:9302\n"
    assert (tmp_path / "etc" / "rules@1.env").read_text() == \
        "METRICS=--metrics 127.0.0.1:9401\n"
    # The site broker: bridge and ACL generated at its start, its configuration per site.
    broker = section((units / "facility-broker@.service").read_text())
    assert any("broker bridge --site %i" in line for line in broker["ExecStartPre"])
    conf = (tmp_path / "etc" / "broker" / "school-shiqiao.conf").read_text()
    assert "include_dir /run/facility-broker-school-shiqiao" in conf
    assert "persistence_location /var/lib/facility-broker-school-shiqiao/" in conf
    gateway = section((units / "facility-gateway@.service").read_text())
    assert gateway["ExecStart"][0].endswith("-m app --sites %i gateway $METRICS")
    assert gateway["After"] == ["network-online.target facility-broker@%i.service"]


def test_every_unit_is_hardened_restarts_and_keeps_secrets_out(tmp_path: Path) -> None:
    generate(tmp_path)
    for unit in sorted((tmp_path / "units").glob("*.service")):
        keys = section(unit.read_text())
        assert keys["DynamicUser"] == ["yes"], unit.name
        assert keys["ProtectSystem"] == ["strict"], unit.name
        assert keys["NoNewPrivileges"] == ["yes"], unit.name
        assert keys["CapabilityBoundingSet"] == [""], unit.name
        assert keys["Restart"] == ["always"], unit.name
        assert "/etc/facility/facility.env" in keys["EnvironmentFile"], unit.name
        # Secrets come from the environment file only: no URL, password or token in a unit.
        for value in keys.get("Environment", []):
            assert not any(word in value for word in ("_URL", "PASSWORD", "SECRET", "TOKEN",
                                                      "://")), (unit.name, value)
    generate(tmp_path, user="facility")
    keys = section((tmp_path / "units" / "facility-api.service").read_text())
    assert keys["User"] == ["facility"]
    assert "DynamicUser" not in keys


def test_the_command_writes_the_shipped_sites_units(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["deploy", "systemd", "--out", str(tmp_path), "--ingest-workers", "2"]) == 0
    assert "panyu-admin-centre" in capsys.readouterr().out
    target = (tmp_path / "units" / "facility.target").read_text()
    assert "Wants=facility-gateway@panyu-admin-centre.service" in target
    assert "Wants=facility-ingest@3.service" not in target


def test_a_template_placeholder_left_unfilled_is_an_error() -> None:
    with pytest.raises(ValueError, match="unfilled placeholder"):
        deploy.render("ExecStart={{python}} {{nope}}", {"python": "/usr/bin/python3"})


@needs_systemd
def test_systemd_analyze_verify_passes_the_units(tmp_path: Path) -> None:
    generate(tmp_path)
    done = subprocess.run([str(VERIFY), str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "8 units verified" in done.stdout


@needs_systemd
def test_verify_fails_a_bad_value_and_a_missing_program(tmp_path: Path) -> None:
    generate(tmp_path)
    unit = tmp_path / "units" / "facility-ingest@.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=bogus"))
    done = subprocess.run([str(VERIFY), str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "bogus" in done.stderr  # systemd-analyze exits 0 on this: the script does not
    generate(tmp_path, mosquitto="/nonexistent/mosquitto")
    done = subprocess.run([str(VERIFY), str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "/nonexistent/mosquitto" in done.stderr


def test_every_command_a_unit_starts_is_one_the_cli_takes(tmp_path: Path) -> None:
    """ExecStart and ExecStartPre of each unit, with an instance and the workers' option
    files filled in, parse as `facility` commands (argparse exits on an unknown option)."""
    generate(tmp_path)
    parser = cli._parser()
    checked = 0
    for unit in sorted((tmp_path / "units").glob("*.service")):
        keys = section(unit.read_text())
        kind = unit.name.split("@")[0].removeprefix("facility-")
        env = tmp_path / "etc" / f"{kind}@1.env"
        options = section(env.read_text()).get("METRICS", [""])[0] if env.exists() else ""
        for line in keys.get("ExecStartPre", []) + keys["ExecStart"]:
            if " -m app " not in line:
                continue
            argv = line.split(" -m app ", 1)[1].replace("$METRICS", options)
            argv = argv.replace("%i", "1" if "@" in unit.name and kind in (
                "ingest", "rules") else "site-01").replace("%H", "host").replace("%t", "/run")
            parser.parse_args(argv.split())
            checked += 1
    assert checked == 8  # 6 services' ExecStart, the site broker's bridge and ACL
