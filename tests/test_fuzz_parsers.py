"""A Hypothesis pass over every parser of device payloads and of config files: whatever
comes in, the answer is a value or the parser's own clear error, never a crash."""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facility import messages as m
from facility.configfile import ConfigError
from facility.messages import ContractError
from facility.modbusmaps import RegisterMap
from facility.settings import load_settings
from facility.site import load_site
from facility.vendormaps import VendorMapping, load_vendors
from gateway.vendors import MappingError, VendorDecoder
from ingest.convert import Converter, Rejected
from tests.conftest import REPO, SITE_FILE

MODELS_DIR = REPO / "config" / "models"
VENDORS_DIR = REPO / "config" / "vendors"
SITE = load_site(SITE_FILE)
VENDORS = load_vendors(VENDORS_DIR)
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25)


def realistic(vendor: str) -> tuple[str, dict[str, Any]]:
    """One well-formed payload per vendor, to mutate."""
    now = time.time()
    if vendor == "gst-fire":
        return "gst/FP-EB/1/3/data", {"panel": "FP-EB", "loop": 1, "addr": 3, "devType": "SMOKE",
                                      "smoke": 0.02, "temp": 26.0, "state": "NORMAL",
                                      "time": "2026-11-28 09:15:02"}
    if vendor == "acrel-efm":
        return "acrel/ARCM300-21030005/up", {"sn": "ARCM300-21030005", "ts": int(now), "alarm": 0,
                                             "data": [{"ch": 1, "val": 30}, {"ch": 2, "val": 40}]}
    if vendor == "evcp":
        return "evcp/PYGOV-PB-01/status", {"chargePointId": "PYGOV-PB-01", "connectorId": 1,
                                           "status": "Charging", "errorCode": "NoError",
                                           "power": 7000.0, "energy": 100, "temperature": 40.0,
                                           "timestamp": "2026-11-28T01:15:02Z"}
    return ("application/a/device/a84041000181c102/event/up",
            {"time": "2026-11-28T01:15:02+00:00", "deviceInfo": {"devEui": "a84041000181c102"},
             "object": {"water_level_cm": 12.0}})


def decoders() -> dict[str, VendorDecoder]:
    return {v: VendorDecoder(mp, SITE, "gw-iot", time.time_ns) for v, mp in VENDORS.items()}


@FAST
@given(vendor=st.sampled_from(sorted(VENDORS)), data=st.data())
def test_vendor_decoders_never_crash(vendor: str, data: st.DataObject) -> None:
    decoder = decoders()[vendor]
    topic, body = realistic(vendor)
    mutated = copy.deepcopy(body)
    for _ in range(data.draw(st.integers(0, 4))):
        key = data.draw(st.sampled_from(sorted(mutated) or ["x"]))
        if data.draw(st.booleans()):
            mutated[key] = data.draw(json_values)
        else:
            mutated.pop(key, None)
    raw = data.draw(st.one_of(st.just(msgspec.json.encode(mutated)), st.binary(max_size=200)))
    try:
        out = decoder.decode(topic, raw, lambda: 1)
    except MappingError:  # the decoder's own refusal, nothing else
        return
    if out.reading is not None:
        m.decode(m.encode(out.reading), m.Reading)  # what comes out obeys the contract


@FAST
@given(topic=st.text(max_size=80), payload=st.binary(max_size=300))
def test_contract_and_ingest_never_crash(topic: str, payload: bytes) -> None:
    for kind in (m.Reading, m.DeviceStatus, m.Event, m.Command, m.DeadLetter):
        with contextlib.suppress(ContractError):
            m.decode(payload, kind)
    with contextlib.suppress(Rejected):
        Converter().to_line(topic, payload)


value_names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True).filter(
    lambda n: n not in m.RESERVED_VALUE_NAMES)
scalars = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                    st.integers(-2**53, 2**53),
                    st.text(st.characters(blacklist_categories=["Cs"]), max_size=50))


@FAST
@given(values=st.dictionaries(value_names, scalars, min_size=1, max_size=8),
       quality=st.sampled_from(list(m.Quality)),
       ts=st.integers(m.MIN_TS, m.MAX_TS), seq=st.integers(0, 2**53))
def test_every_valid_reading_is_stored(values: dict[str, m.Scalar], quality: m.Quality, ts: int,
                                       seq: int) -> None:
    """The positive side: a reading with nothing to refuse survives the contract and
    becomes a line with every value (contract and ingest that refused all would fail)."""
    reading = m.Reading(site="site-a", family=m.Family.ENERGY, device="em-1", ts=ts,
                        values=values, quality=quality, gateway="gw-1", seq=seq)
    payload = m.encode(reading)
    assert m.decode(payload, m.Reading) == reading
    line = Converter().to_line("facility/v1/site-a/telemetry/energy/em-1", payload).decode()
    assert line.startswith("energy,device=em-1,gateway=gw-1,site=site-a ")
    assert line.endswith(f" {ts}")
    for name in values:
        assert f",{name}=" in line or f" {name}=" in line


def _mutations(data: st.DataObject, tree: Any, depth: int = 0) -> Any:
    """The same config with a few leaves replaced, dropped or retyped."""
    if isinstance(tree, dict) and tree:
        key = data.draw(st.sampled_from(sorted(tree, key=str)))
        choice = data.draw(st.integers(0, 3))
        if choice == 0:
            tree.pop(key)
        elif choice == 1 or depth > 4:
            tree[key] = data.draw(json_values)
        else:
            tree[key] = _mutations(data, tree[key], depth + 1)
    elif isinstance(tree, list) and tree:
        index = data.draw(st.integers(0, len(tree) - 1))
        tree[index] = _mutations(data, tree[index], depth + 1)
    else:
        return data.draw(json_values)
    return tree


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@functools.cache
def _config_tree(kind: str) -> Any:
    """A shipped config file, parsed once (each example mutates a deep copy)."""
    source = {"site": SITE_FILE, "model": MODELS_DIR / "bollard-plc-v1.yaml",
              "vendor": VENDORS_DIR / "chirpstack.yaml",
              "settings": REPO / "config" / "facility.yaml"}[kind]
    return yaml.safe_load(source.read_text(encoding="utf-8"))


@pytest.mark.parametrize("kind", ["site", "model", "vendor", "settings"])
@FAST
@given(data=st.data())
def test_config_files_give_clear_errors(kind: str, data: st.DataObject, tmp_path: Path) -> None:
    tree = _mutations(data, copy.deepcopy(_config_tree(kind)))
    path = tmp_path / f"{kind}.yaml"
    # libyaml's dumper: the pure-Python one took most of each example's time.
    path.write_text(yaml.dump(tree, Dumper=_DUMPER, allow_unicode=True), encoding="utf-8")
    try:
        if kind == "site":
            load_site(path)
        elif kind == "settings":
            load_settings(path)
        else:
            from facility.configfile import load

            load(RegisterMap if kind == "model" else VendorMapping, path)
    except ConfigError as exc:
        # Any error is fine as long as it is ours and names the file.
        assert str(path) in str(exc), f"the error must name the file: {exc}"  # noqa: PT017


def test_a_wrong_site_file_names_file_device_and_field(tmp_path: Path) -> None:
    tree = yaml.safe_load(SITE_FILE.read_text(encoding="utf-8"))
    tree["devices"][3]["modbus"]["port"] = "fifteen thousand"
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"device '{tree['devices'][3]['id']}'" in message
    assert "field 'modbus.port'" in message
