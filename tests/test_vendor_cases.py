"""Golden vendor MQTT cases (tests/vendor_cases/<vendor>/<case>/), in Telegraf's style: the
topic and the payload go through the vendor's decoder (no broker) with a fixed clock and
sequence, and the canonical output must be exactly the case's expected.json.

VENDOR_CASES_REGEN=1 rewrites every expected.json from what the decoder gives now: review
the diff before committing it, the files are the specification."""

from __future__ import annotations

import difflib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from paho.mqtt.client import topic_matches_sub

from facility import messages as m
from facility.site import load_site
from facility.vendormaps import load_vendors
from gateway.vendors import MappingError, VendorDecoder
from tests.conftest import REPO, SITE_FILE

CASES = Path(__file__).parent / "vendor_cases"
# 2026-11-28 01:15:12 UTC (09:15:12 on the campus): ten seconds after the payloads' time.
NOW = 1_795_828_512 * 10**9
VENDORS = load_vendors(REPO / "config" / "vendors")
SITE = load_site(SITE_FILE)
REGEN = os.environ.get("VENDOR_CASES_REGEN") == "1"


def case_dirs() -> list[Path]:
    return sorted(p.parent for p in CASES.glob("*/*/topic.txt"))


def payload_of(folder: Path) -> bytes:
    binary = folder / "payload.bin"
    return (binary if binary.exists() else folder / "payload.json").read_bytes()


def run_case(folder: Path) -> Any:
    """The case's output as JSON builtins: a list of messages, or {"dead_letter": reason}."""
    decoder = VendorDecoder(VENDORS[folder.parent.name], SITE, "gw-iot", lambda: NOW)
    counter = itertools.count(1)
    before = folder / "before.json"  # earlier messages, for change events
    if before.exists():
        for earlier in json.loads(before.read_text(encoding="utf-8")):
            decoder.decode(earlier["topic"], msgspec.json.encode(earlier["payload"]),
                           lambda: next(counter))
    topic = (folder / "topic.txt").read_text(encoding="utf-8").strip()
    try:
        out = decoder.decode(topic, payload_of(folder), lambda: next(counter))
    except MappingError as exc:
        return {"dead_letter": str(exc)}
    messages: list[msgspec.Struct] = [*([out.reading] if out.reading else []), *out.events]
    return [{"kind": type(msg).__name__, **m.to_builtins(msg)} for msg in messages]


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def test_every_vendor_and_message_shape_has_cases() -> None:
    folders = case_dirs()
    assert {f.parent.name for f in folders} == set(VENDORS)
    for vendor, mapping in VENDORS.items():
        covered = set()
        for folder in (f for f in folders if f.parent.name == vendor):
            topic = (folder / "topic.txt").read_text(encoding="utf-8").strip()
            # The decoder takes the first shape whose filter matches, so does this.
            covered.add(next((s.name for s in mapping.messages
                              if topic_matches_sub(s.topic, topic)), None))
        missing = {s.name for s in mapping.messages} - covered
        assert not missing, f"{vendor}: no golden case for {sorted(missing)}"


@pytest.mark.parametrize("folder", case_dirs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_vendor_case(folder: Path) -> None:
    got = run_case(folder)
    path = folder / "expected.json"
    if REGEN:
        path.write_text(dump(got), encoding="utf-8")
    expected = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(expected, dict) and "dead_letter" in expected:
        assert isinstance(got, dict), (
            f"{folder.name}: expected a dead letter ({expected['dead_letter']!r}), got\n"
            + dump(got))
        assert expected["dead_letter"] in got["dead_letter"], (
            f"{folder.name}: dead-letter reason {got['dead_letter']!r} does not contain "
            f"{expected['dead_letter']!r}")
        return
    # Through JSON, as the file was: floats compare by their shortest repr.
    got = json.loads(dump(got))
    if got != expected:
        diff = "".join(difflib.unified_diff(
            dump(expected).splitlines(keepends=True), dump(got).splitlines(keepends=True),
            fromfile=f"{path.relative_to(CASES)}", tofile="decoded now"))
        pytest.fail(f"{folder.parent.name}/{folder.name} differs:\n{diff}", pytrace=False)
