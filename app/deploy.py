"""`facility deploy systemd --out DIR`: the systemd units of a deployment, from the unit
templates in deploy/systemd/ and the sites the settings name.

One unit per service, templated where there are several: per worker
(`facility-ingest@N`, `facility-rules@N`) and per site (`facility-gateway@SITE`, the site
broker `facility-broker@SITE` with its bridge to the centre, `facility-ocpp@SITE`), and
`facility.target`, which wants every instance of this deployment, so
`systemctl enable --now facility.target` starts it all. Every unit runs in the same
sandbox (deploy/systemd/hardening.conf), as a dynamic user unless --user names one, and
takes its secrets from an environment file (ETC/facility.env, ETC/site-SITE.env), never
from the unit. The generator writes, under DIR:

- units/: the unit files and facility.target;
- etc/: what goes to ETC: the workers' own options (ingest@N.env, rules@N.env: their
  metrics ports; the rules workers share the sites by lease, `facility rules workers`),
  each site broker's configuration (broker/SITE.conf) and facility.env.example, the list
  of secret variables to fill in.

ExecStart names the Python given (default: this one) by its absolute path, so that
`systemd-analyze verify` (scripts/verify-units) checks the units as they will run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
SERVICES = ("facility-ingest@", "facility-rules@", "facility-gateway@", "facility-broker@",
            "facility-ocpp@", "facility-api", "facility-duty")
METRICS_BASE = {"ingest": 9300, "rules": 9400}  # worker N's metrics on BASE + N

# The environment file's variables: secrets and where the servers are (docs/scaling.md).
SECRETS = """\
# facility.env: the secrets and server addresses every facility unit reads
# (EnvironmentFile=). Owned by root, mode 0600: systemd reads it before the service
# drops to its user, so no service can read the file itself.
FACILITY_MQTT_URL=mqtts://ingest:CHANGE-ME@centre.district.local:8883
FACILITY_INFLUX_URL=http://influx.district.local:8086
FACILITY_INFLUX_PASSWORD=CHANGE-ME
FACILITY_STATE_URL=postgresql://facility:CHANGE-ME@pg.district.local:5432/facility
FACILITY_API_SECRET=CHANGE-ME-openssl-rand-base64-48
FACILITY_BRIDGE_REMOTE_PASSWORD=CHANGE-ME
# Per site, in site-SITE.env (0600): FACILITY_MQTT_URL of the site broker with the
# gateways' credentials, FACILITY_BRIDGE_REMOTE_PASSWORD of the site's bridge user.
"""


def render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise ValueError(f"unfilled placeholder in template: {text[text.index('{{'):][:40]}")
    return text


def generate(out: Path, sites: list[str], *, python: str, config: str, etc: str,
             user: str = "", ingest_workers: int = 3, rules_workers: int = 2,
             mosquitto: str = "/usr/sbin/mosquitto") -> list[Path]:
    """Write the units and their files under `out`; the paths written."""
    if not sites:
        raise ValueError("no sites to deploy")
    units, conf = out / "units", out / "etc"
    for folder in (units, conf / "broker"):
        folder.mkdir(parents=True, exist_ok=True)
    python = str(Path(python).absolute())  # not resolved: a venv's python is a link
    hardening = (TEMPLATES / "hardening.conf").read_text(encoding="utf-8")
    hardening = "\n".join(line for line in hardening.splitlines()
                          if line and not line.startswith("#"))
    who = f"User={user}\nGroup={user}" if user else "DynamicUser=yes"
    values = {"python": python, "config": config, "etc": etc, "user": who,
              "hardening": hardening, "mosquitto": mosquitto}
    written = []
    for name in SERVICES:
        text = render((TEMPLATES / f"{name}.service").read_text(encoding="utf-8"), values)
        written.append(_write(units / f"{name}.service", text))
    instances = [f"facility-ingest@{n}.service" for n in range(1, ingest_workers + 1)]
    instances += [f"facility-rules@{n}.service" for n in range(1, rules_workers + 1)]
    for site in sites:
        instances += [f"facility-broker@{site}.service", f"facility-gateway@{site}.service"]
    instances += ["facility-api.service", "facility-duty.service"]
    target = ("[Unit]\nDescription=Facility monitoring platform (every service of this "
              "deployment)\n" + "".join(f"Wants={i}\n" for i in instances) +
              "\n[Install]\nWantedBy=multi-user.target\n")
    written.append(_write(units / "facility.target", target))
    for n in range(1, ingest_workers + 1):
        written.append(_write(conf / f"ingest@{n}.env",
                              f"METRICS=--metrics 127.0.0.1:{METRICS_BASE['ingest'] + n}\n"))
    for n in range(1, rules_workers + 1):
        written.append(_write(conf / f"rules@{n}.env",
                              f"METRICS=--metrics 127.0.0.1:{METRICS_BASE['rules'] + n}\n"))
    broker = (TEMPLATES / "site-broker.conf").read_text(encoding="utf-8")
    for site in sites:
        text = render(broker, {"site": site, "etc": etc, "run": f"/run/facility-broker-{site}",
                               "state": f"/var/lib/facility-broker-{site}"})
        written.append(_write(conf / "broker" / f"{site}.conf", text))
    written.append(_write(conf / "facility.env.example", SECRETS))
    return written


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             run: object) -> None:
    p = sub.add_parser(
        "deploy", help="generate the deployment: systemd units per service, worker and site",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["systemd"], help="what to generate")
    p.add_argument("--out", type=Path, required=True, help="folder to write into")
    p.add_argument("--python", default=sys.executable,
                   help="the Python with the platform installed (default: this one)")
    p.add_argument("--etc", default="/etc/facility",
                   help="where the environment files and broker configurations go")
    p.add_argument("--settings", default=None,
                   help="the settings file the units run with (default: ETC/facility.yaml)")
    p.add_argument("--user", default="",
                   help="run as this user (default: a dynamic user per unit)")
    p.add_argument("--ingest-workers", type=int, default=3)
    p.add_argument("--rules-workers", type=int, default=2)
    p.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    p.set_defaults(func=run)
