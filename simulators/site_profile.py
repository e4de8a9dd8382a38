"""A synthetic site for district simulations: a small public body (a school, a clinic, a
district office) with a few dozen devices of each family, not a copy of the campus.

The site stands on the campus's places, zones and gateways and uses its register maps and
vendor mappings, so the campus's endpoints (screens, PA zones) and rule files apply to it
unchanged: a smoke detector in a building raises the same evacuation. The campus's own
devices are kept only where a campus rule names them (its energy meters); the 42 rising
bollards, which are the campus's and dominate its message rate, are left out.

A district is this site under N ids (site-01 ... site-20, `site_ids(20)`): `write_sites`
writes a sites folder (facility/catalog.py's `sites_dir`: <site id>.yaml with its
gateways named after the site, since a gateway id is unique in a district, and
<site id>.endpoints.yaml, the campus's screens and PA zones). Each device reports at its own
period: a Modbus meter every 10 s (the campus's poll period), the vendors' devices at their
mapping's `report_period` (fire, chargers 60 s; LoRa drainage and gas 300 s).

    python -m simulators.site_profile --out site.yaml   # the site file, and its rates
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import yaml

from facility.configfile import read_yaml

SITE_FILE = Path(__file__).resolve().parent.parent / "config" / "site.yaml"

# Devices of each kind at one small site: about 120 devices, 1,000 measured values.
PROFILE: dict[str, int] = {
    "meter": 24,                    # energy (with the campus's 16 named ones: 40)
    "fire_panel": 2, "smoke_detector": 30, "heat_detector": 6,  # fire
    "electrical_fire_monitor": 12,
    "ac_charger": 16,               # ev_charger
    "water_level": 8, "sump_pump": 4, "rain_gauge": 2,  # drainage
    "gas_sensor": 12,               # gas
}
BUILDINGS = ["main-building", "east-annex", "west-annex", "conference-centre",
             "parking-building", "canteen"]
FIRE_PLACES = [*BUILDINGS, "main-elec-b1", "main-elec-f6", "main-ac-plant",
               "east-elec-room", "west-elec-room", "car-park"]
LOADS = ["total", "lighting", "hvac", "lifts", "canteen", "ev_charging"]
OUTDOOR = ["west-gate-drain", "south-gate-drain", "ne-rain-outlet", "west-septic-tanks"]


def site_ids(count: int) -> list[str]:
    """site-01, site-02, ...: the district's synthetic sites."""
    return [f"site-{n:02d}" for n in range(1, count + 1)]


def site_data(site_id: str = "site-profile", profile: dict[str, int] | None = None,
              seed: int = 1) -> dict[str, Any]:
    """A site file's data: the campus's places, zones and gateways (named after the site
    unless it is the profile itself), its named meters (the energy rules name them) and the
    profile's devices."""
    data: dict[str, Any] = read_yaml(SITE_FILE)
    rng = random.Random(seed)
    number = site_id.rsplit("-", 1)[-1]
    data["site"] = {**data["site"], "id": site_id, "name": f"区内公共机构{number}（模拟）"}
    data["devices"] = [d for d in data["devices"] if d.get("family") == "energy"]
    for kind, count in (profile or PROFILE).items():
        for n in range(1, count + 1):
            data["devices"].append(_device(kind, n, rng))
    if site_id != "site-profile":
        rename = {g["id"]: f"{site_id}-{g['id']}" for g in data["gateways"]}
        data["gateways"] = [{**g, "id": rename[g["id"]]} for g in data["gateways"]]
        for device in data["devices"]:
            device["gateway"] = rename[device["gateway"]]
    return data


def _device(kind: str, n: int, rng: random.Random) -> dict[str, Any]:
    if kind == "fire_panel":
        return {"id": f"fp-{n:02d}", "family": "fire", "kind": kind,
                "name": f"火灾报警控制器{n}号", "gateway": "gw-iot",
                "place": BUILDINGS[n % len(BUILDINGS)],
                "mqtt": {"vendor": "gst-fire", "key": f"FP-S{n}"}}
    if kind in ("smoke_detector", "heat_detector"):
        return {"id": f"{kind[:5]}-{n:03d}", "family": "fire", "kind": kind,
                "name": f"{'烟感' if kind == 'smoke_detector' else '温感'}{n}号",
                "gateway": "gw-iot", "place": BUILDINGS[n % len(BUILDINGS)],
                "mqtt": {"vendor": "gst-fire", "key": f"S/{kind}/{n}"}}
    if kind == "electrical_fire_monitor":
        return {"id": f"efm-{n:03d}", "family": "fire", "kind": kind,
                "name": f"电气火灾监控{n}号", "gateway": "gw-iot",
                "place": FIRE_PLACES[n % len(FIRE_PLACES)],
                "mqtt": {"vendor": "acrel-efm", "key": f"SEFM{n:05d}"}}
    if kind == "meter":
        return {"id": f"em-{n:03d}", "family": "energy", "kind": "meter",
                "name": f"分项电表{n}号", "gateway": "gw-energy",
                "place": BUILDINGS[n % len(BUILDINGS)], "tags": {"load": LOADS[n % len(LOADS)]},
                "modbus": {"host": f"10.30.0.{n}", "port": 502, "unit": 1,
                           "model": rng.choice(["chint-dtsu666", "eastron-sdm630"]),
                           "period": 10}}
    if kind == "ac_charger":
        return {"id": f"evc-{n:03d}", "family": "ev_charger", "kind": kind,
                "name": f"交流充电桩{n}号", "gateway": "gw-iot",
                "place": "parking-building" if n % 2 else "car-park",
                "tags": {"rated_kw": "7"}, "mqtt": {"vendor": "evcp", "key": f"SEVC{n:05d}"}}
    family = "gas" if kind == "gas_sensor" else "drainage"
    return {"id": f"{kind[:5]}-{n:03d}", "family": family, "kind": kind,
            "name": f"{'气体' if family == 'gas' else '排水'}传感器{n}号", "gateway": "gw-iot",
            "place": OUTDOOR[n % len(OUTDOOR)],
            "mqtt": {"vendor": "chirpstack", "key": f"b1{n:010x}{kind[:4]}"}}


def write_site(path: Path, site_id: str = "site-profile",
               profile: dict[str, int] | None = None) -> Path:
    path.write_text(yaml.safe_dump(site_data(site_id, profile), allow_unicode=True,
                                   sort_keys=False), encoding="utf-8")
    return path


def write_sites(folder: Path, count: int, profile: dict[str, int] | None = None) -> list[str]:
    """A sites folder of `count` synthetic sites with the campus's endpoints; their ids."""
    folder.mkdir(parents=True, exist_ok=True)
    endpoints = (SITE_FILE.parent / "endpoints.yaml").read_text(encoding="utf-8")
    ids = site_ids(count)
    for site_id in ids:
        write_site(folder / f"{site_id}.yaml", site_id, profile)
        (folder / f"{site_id}.endpoints.yaml").write_text(endpoints, encoding="utf-8")
    return ids


def main() -> None:
    from facility.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m simulators.site_profile",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the site file to write")
    args = parser.parse_args()
    write_site(args.out)
    # The rates, as the topology sees them (each source's report period).
    from facility.catalog import load_catalog
    from facility.topology import Topology

    settings = load_settings(SITE_FILE.parent / "facility.yaml", site_file=args.out.resolve())
    topology = Topology(load_catalog(settings))
    rates: dict[str, float] = {}
    for source in topology.sources.values():
        if source.family != "gateway":
            rates[source.family] = rates.get(source.family, 0.0) + 1 / source.report_period
    print(f"{args.out}: {sum(1 for s in topology.sources.values() if s.family != 'gateway')} "
          f"devices, {sum(rates.values()):.2f} messages/s: "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(rates.items())))


if __name__ == "__main__":
    main()
