"""One label table (facility/labels.py): every id an operator can meet has a word, the API
serves the table to the page, the page keeps no copy, and the shift report's words are the
table's."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.deps import current_user
from api.models import Labels
from api.routes import system
from facility import labels
from facility.messages import (
    SEVERITY_RANK,
    AckStatus,
    AlertState,
    Availability,
    CommandStatus,
    Family,
    Quality,
    Severity,
)

APP_JS = Path(__file__).resolve().parent.parent / "api" / "static" / "app.js"


def test_every_enum_member_has_a_word() -> None:
    for enum, table in ((Severity, labels.SEVERITY), (AlertState, labels.ALERT_STATE),
                        (CommandStatus, labels.COMMAND_STATUS), (Family, labels.FAMILY),
                        (Quality, labels.QUALITY), (Availability, labels.AVAILABILITY),
                        (AckStatus, labels.DELIVERY)):
        missing = [m.value for m in enum if m not in table]
        assert not missing, f"{enum.__name__}: no word for {missing}"
    assert tuple(sorted(Severity, key=SEVERITY_RANK.__getitem__,
                                                 reverse=True)) == labels.SEVERITY_ORDER
    # one word for approval, used by the command statuses too
    assert labels.COMMAND_STATUS["awaiting_approval"] == labels.APPROVAL["pending"] == "待审批"
    assert labels.COMMAND_STATUS["approval_expired"] == labels.APPROVAL["expired"] == "审批超时"


def test_the_api_serves_the_table() -> None:
    app = FastAPI()
    app.include_router(system.router)
    app.dependency_overrides[current_user] = lambda: None
    with TestClient(app) as client:
        served = client.get("/api/labels").json()
        spec = client.get("/openapi.json").json()
    assert served == labels.as_json()
    assert set(Labels.model_fields) == set(served)
    assert "/api/labels" in spec["paths"]


def test_the_page_keeps_no_copy_of_the_words() -> None:
    source = APP_JS.read_text(encoding="utf-8")
    assert '"/api/labels"' in source
    for name in ("severity", "alert_state", "command_status"):
        for word in labels.TABLES[name].values():
            assert not re.search(rf'["`]{re.escape(word)}["`]', source), (name, word)
    # the old constant tables are gone
    assert not re.search(r"const (SEVERITY|ALERT_STATE|COMMAND_STATUS|BOLLARD|EV_STATUS) =",
                         source)


def _value_mappings(node: object) -> list[dict[str, dict[str, str]]]:
    """Every value mapping's options in a dashboard's JSON, wherever the panel keeps it."""
    found: list[dict[str, dict[str, str]]] = []
    if isinstance(node, dict):
        if node.get("type") == "value" and isinstance(node.get("options"), dict):
            found.append(node["options"])
        for child in node.values():
            found += _value_mappings(child)
    elif isinstance(node, list):
        for child in node:
            found += _value_mappings(child)
    return found


def test_boards_and_reports_take_their_words_from_the_table() -> None:
    """Each Grafana value mapping reads as one label table says for every state it maps
    (the boards add only colours), and the energy report keeps no load names of its own."""
    from dashboards.export import dashboards
    from reports import energy, energy_report

    tables = [t for t in vars(labels).values()
              if isinstance(t, Mapping) and t and all(isinstance(k, str) for k in t)]
    mappings = [m for board in dashboards() for m in _value_mappings(board)]
    assert len(mappings) >= 7  # bollards, fire, EV, pumps, the PLC's mode, rise and power
    for options in mappings:
        words = {raw: option["text"] for raw, option in options.items()}
        assert any(all(t.get(raw) == word for raw, word in words.items()) for t in tables), \
            f"no label table says {words}"
    for module in (energy, energy_report):
        source = Path(module.__file__ or "").read_text(encoding="utf-8")
        for word in labels.LOAD.values():
            assert not re.search(rf'["`]{re.escape(word)}["`]', source), (module.__name__, word)
