"""The topic rule as a test: only facility/topics.py builds or takes apart a canonical topic.

Every other module outside tests/ and bench/ uses its builders (telemetry(), status(), ...,
device_topic(), subscription(), shared(), acl_filter()) and its readers (parse(),
is_kind()). The scan looks at the syntax tree of every module for what a hand-built or
hand-parsed topic looks like:

- the literal 'facility/v1' outside a docstring;
- topics.PREFIX, ROOT or VERSION used at all (an alias like `P = topics.PREFIX` is how an
  f-string topic hides);
- an f-string with a '/' and a `Kind` member in it (f"/{Kind.DEADLETTER}/" in topic);
- a `Kind` member compared with an item of a list (parts[3] == Kind.DEADLETTER).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

SKIP_DIRS = {"tests", "bench", "var", "test-artifacts", "build", "dist", "node_modules"}
TOPICS_MODULE = Path("facility/topics.py")
CONSTANTS = {"PREFIX", "ROOT", "VERSION"}

# Files allowed to break the rule, each with the reason. Keep it empty if you can.
ALLOWED: dict[Path, str] = {}


def modules() -> Iterator[Path]:
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in SKIP_DIRS or any(p.startswith(".") for p in rel.parts):
            continue
        if rel != TOPICS_MODULE:
            yield rel


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _mentions_kind(node: ast.AST) -> bool:
    """An expression like Kind.X, topics.Kind.X or Kind.X.value."""
    return any((isinstance(n, ast.Name) and n.id == "Kind")
               or (isinstance(n, ast.Attribute) and n.attr == "Kind") for n in ast.walk(node))


def offences(source: str) -> Iterator[tuple[int, str]]:
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    from_topics = {alias.asname or alias.name
                   for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.module == "facility.topics"
                   for alias in node.names if alias.name in CONSTANTS}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "facility/v1" in node.value and id(node) not in docstrings:
            yield node.lineno, "the literal 'facility/v1'"
        elif isinstance(node, ast.Attribute) and node.attr in CONSTANTS \
                and isinstance(node.value, ast.Name) and node.value.id == "topics":
            yield node.lineno, f"topics.{node.attr}"
        elif isinstance(node, ast.Name) and node.id in from_topics:
            yield node.lineno, f"{node.id} from facility.topics"
        elif isinstance(node, ast.JoinedStr):
            slash = any(isinstance(v, ast.Constant) and "/" in str(v.value) for v in node.values)
            kind = any(isinstance(v, ast.FormattedValue) and _mentions_kind(v.value)
                       for v in node.values)
            if slash and kind:
                yield node.lineno, "an f-string topic with a Kind level"
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Subscript) for s in sides) \
                    and any(_mentions_kind(s) and not isinstance(s, ast.Subscript)
                            for s in sides):
                yield node.lineno, "a topic level compared with a Kind by hand"


def test_the_scan_sees_each_kind_of_hand_built_topic() -> None:
    source = '''
"""Docstrings may say facility/v1/{site}/telemetry/..."""
from facility import topics
from facility.topics import Kind, PREFIX as P
a = "facility/v1/s/telemetry/f/d"
b = f"{topics.PREFIX}/{site}/x"
c = f"{P}/x"
d = f"/{Kind.DEADLETTER}/" in topic
e = parts[3] == Kind.DEADLETTER
f = topics.is_kind(topic, Kind.DEADLETTER)
g = f"{where.kind} of {where.name}"
'''
    found = {line for line, _ in offences(source)}
    assert found == {5, 6, 7, 8, 9}


def test_no_module_builds_a_topic_by_hand() -> None:
    found = []
    for rel in modules():
        for line, what in offences((REPO / rel).read_text(encoding="utf-8")):
            if rel not in ALLOWED:
                found.append(f"{rel}:{line}: {what}")
    assert not found, ("build and read topics with facility/topics.py, not by hand:\n"
                       + "\n".join(found))


def test_the_allowed_files_still_need_it() -> None:
    """An exception that is no longer used is removed, so the list only shrinks."""
    for rel, why in ALLOWED.items():
        path = REPO / rel
        assert path.exists() and any(offences(path.read_text(encoding="utf-8"))), \
            f"{rel} no longer builds a topic by hand ({why}): remove it from ALLOWED"
