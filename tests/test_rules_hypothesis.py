"""Hypothesis over what the rules engine takes from outside:

- rule files: any document (YAML of any shape, or bytes that are not YAML at all) loads,
  or fails with a ConfigError whose every line names the file, and the rule and field
  where there is one; nothing else is ever raised;
- expressions: any string compiles or is refused with ExpressionError; a compiled one,
  evaluated over any values, gives a plain value or Unknown, never another exception,
  never a function, class or module, and never reaches eval/exec/compile;
- the intake: any topic and payload is taken or refused with a known reason, never by an
  exception from the engine."""

from __future__ import annotations

import ast
import builtins
import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facility import topics
from facility.configfile import ConfigError
from facility.endpoints import load_endpoints
from facility.site import load_site
from facility.topology import Topology
from rules.config import load_rules, rule_files
from rules.engine import Engine
from rules.expr import Expression, ExpressionError, MappingEnv, Unknown
from rules.intake import Intake
from tests.conftest import REPO, SITE_FILE, catalog

RULES = REPO / "config" / "rules"
SITE = "panyu-admin-centre"
SLOW = settings(max_examples=150, deadline=5000,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world() -> tuple[Topology, Any]:
    site = load_site(SITE_FILE)
    return Topology(catalog(site)), load_endpoints(REPO / "config" / "endpoints.yaml", site)


# --- rule files ----------------------------------------------------------------------------

EXPRESSIONS = ["smoke > 0.1", "smok > 1", "rate('water_level', 600) >= 1", "rate('x')",
               "().__class__", "__import__('os')", "lambda: 1", "water_level >=", "1/0",
               "state in ('alarm',)", "get('smoke', 0) >= 0.1 or temperature > 57",
               "in_schedule('nights')", "in_schedule('never')", "'a' * 10**9"]
RULE_KEYS = ["id", "name", "type", "severity", "priority", "category", "match", "schedule",
             "params", "incident", "notify", "escalate", "text", "levels", "for", "clear_for",
             "raise_on", "clear_on", "clear_when", "raise_when", "where", "auto_clear",
             "status", "after", "after_periods", "actions", "within", "expect", "signal",
             "signal_events", "group_by", "window", "min_devices", "require_kinds", "bogus"]
scalars = (st.none() | st.booleans() | st.integers(-10**9, 10**9)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from([*EXPRESSIONS, "threshold", "event", "absence", "command",
                             "correlation", "critical", "warning", "fire", "smoke_detector",
                             "30s", "5m", "soon", "-1s", "fire_evacuate", "led", "nights",
                             "{place}", "{device.__class__}", "fd-ebw-01"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(RULE_KEYS) | st.text(max_size=6),
                                        inner, max_size=4), max_leaves=12)
rule = st.fixed_dictionaries(
    {"id": st.sampled_from(["r1", "fire-x", "bad id", "", "x" * 70]) | st.text(max_size=8),
     "name": st.sampled_from(["名字", ""]) | st.text(max_size=5),
     "type": st.sampled_from(["threshold", "event", "absence", "command", "correlation",
                              "nonsense"])},
    optional={key: values for key in RULE_KEYS if key not in ("id", "name", "type")})
document = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 1, 1, 2, "1", None])},
    optional={"rules": st.lists(rule, max_size=3) | values, "schedules": values,
              "templates": values, "teams": values, "inhibit": values, "extra": values})


def check_error(error: ConfigError, path: Path, data: Any) -> None:
    message = str(error)
    assert message.strip(), "an empty error message"
    for line in message.splitlines():
        assert line.startswith((str(path), str(RULES))), line  # names the file
    rules = data.get("rules") if isinstance(data, dict) else None
    if isinstance(rules, list):
        for line in message.splitlines():
            if f"{path}: rules[" in line or f"{path}: rule " in line:
                assert "(rules[" in line or f"{path}: rules[" in line, line  # names the rule


@SLOW
@given(data=document)
def test_any_rule_file_loads_or_names_file_rule_and_field(
        world: tuple[Topology, Any], tmp_path_factory: pytest.TempPathFactory,
        data: dict[str, Any]) -> None:
    path = tmp_path_factory.mktemp("rules") / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    topology, endpoints = world
    try:
        loaded = load_rules([*rule_files(RULES), path], topology, endpoints)
    except ConfigError as error:
        check_error(error, path, data)
    else:
        assert "fire-detector-alarm" in loaded.rules


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_a_rule_file(world: tuple[Topology, Any],
                                  tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("rules") / "raw.yaml"
    path.write_bytes(raw)
    topology, endpoints = world
    message = ""
    try:
        load_rules([path], topology, endpoints)
    except ConfigError as error:
        message = str(error)
    assert all(line.startswith(str(path)) for line in message.splitlines())


# --- expressions ---------------------------------------------------------------------------

ATOMS = ["smoke", "water_level", "state", "x", "value", "tags", "params", "hour", "weekday",
         "True", "None", "true", "__class__", "__builtins__", "__import__", "abs", "eval",
         "getattr", "type", "object", "0", "1", "2.5", "-3", "10**9", "1e308", "'a'", "'alarm'",
         "''", "()", "[]", "{}", "{1: 2}", "{1, 2}", "tags['zone']", "params['k']"]
CALLS = ["rate('water_level', 600)", "rate('x', 0)", "rate(x, 1)", "avg('smoke', 60)",
         "max_of('smoke', 1)", "delta('x', 5)", "age('smoke')", "get('smoke', 0)",
         "get('x')", "in_schedule('nights')", "abs(-1)", "min(1, 2)", "max()",
         "round(1.5, 10**6)", "open('/etc/passwd')", "eval('1')", "__import__('os')",
         "getattr(x, 'y')", "exec('1')", "compile('1', 'f', 'eval')", "type(x)",
         "globals()", "vars()", "dir()", "breakpoint()"]
OPERATORS = [" + ", " - ", " * ", " / ", " // ", " % ", " ** ", " == ", " != ", " < ", " >= ",
             " and ", " or ", " in ", " not in ", " is ", " if ", " else ", "<<", "&", "|",
             "@", ".", ".__class__", "[0]", "[1:2]", "(", ")", ",", "lambda: ", "not ",
             " for x in ", "*", "f'{", "}'", ":=", ";", "\n", "#", "\\"]
fragments = st.lists(st.sampled_from(ATOMS + CALLS + OPERATORS), min_size=1, max_size=9)
sources = fragments.map("".join) | st.text(max_size=40)
env_values = st.dictionaries(
    st.sampled_from(["smoke", "water_level", "state", "x", "value"]),
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8),
    max_size=5)
PLAIN = (bool, int, float, str, type(None), tuple, list, dict, frozenset)


class Forbidden(AssertionError):
    pass


@contextlib.contextmanager
def no_eval() -> Iterator[list[str]]:
    """While inside: eval, exec and compile raise if called (but the compile in ast.parse,
    which only builds a syntax tree). Around the engine's code only: Hypothesis itself
    uses exec."""
    calls: list[str] = []
    real = {name: getattr(builtins, name) for name in ("eval", "exec", "compile")}

    def refuse(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise Forbidden(f"{name} was called")
        return call

    def guarded_compile(source: Any, filename: Any, mode: Any, flags: int = 0,
                        *args: Any, **kwargs: Any) -> Any:
        if flags & ast.PyCF_ONLY_AST:  # ast.parse: a syntax tree, nothing to run
            return real["compile"](source, filename, mode, flags, *args, **kwargs)
        calls.append("compile")
        raise Forbidden("compile was called")

    builtins.eval, builtins.exec = refuse("eval"), refuse("exec")
    builtins.compile = guarded_compile
    try:
        yield calls
    finally:
        for name, function in real.items():
            setattr(builtins, name, function)


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=sources, values=env_values,
       tags=st.dictionaries(st.sampled_from(["zone", "place", "load"]), st.text(max_size=5)),
       params=st.dictionaries(st.sampled_from(["k", "baseline_kw"]),
                              st.integers() | st.dictionaries(st.text(max_size=3),
                                                              st.integers())))
def test_expressions_never_escape(source: str, values: dict[str, Any], tags: dict[str, Any],
                                  params: dict[str, Any]) -> None:
    names = {**values, "tags": tags, "params": params, "hour": 3, "minute": 0}
    functions: dict[str, Callable[..., Any]] = {
        "rate": lambda n, s: 1.5, "avg": lambda n, s: None, "delta": lambda n, s: 0,
        "max_of": lambda n, s: math.inf, "min_of": lambda n, s: -1.0,
        "age": lambda n: 12.0, "in_schedule": lambda n: True}
    refused = ""
    result: Any = None
    with no_eval() as calls:
        try:
            expression = Expression(source)
        except ExpressionError as error:
            refused = str(error)
        if not refused:
            env = MappingEnv(names, functions)
            with contextlib.suppress(Unknown):
                result = expression.value(env)
            with contextlib.suppress(Unknown):
                expression.test(env)
    assert not calls
    if refused:
        assert refused.startswith(repr(source.strip())) or "expression" in refused
    assert isinstance(result, PLAIN), f"{source!r} gave {type(result).__name__}"


def test_known_escapes_are_refused() -> None:
    for source in ("().__class__.__bases__[0].__subclasses__()", "tags.__class__",
                   "[c for c in ()]", "(lambda: 1)()",
                   "getattr(tags, 'x')", "type(tags)", "abs", "x[::-1]", "f'{x}'",
                   "(y := 1)", "{**tags}", "max(*[1, 2])", "round(x, ndigits=1)"):
        with pytest.raises(ExpressionError):
            Expression(source)
    for source in ("'a' * 10**9", "[0] * 10**8", "2 ** 10 ** 9", "'%999999999d' % 1",
                   "params['__builtins__']", "tags['__class__']"):
        with pytest.raises(Unknown):
            Expression(source).value(MappingEnv({"tags": {}, "params": {}}, {}))


# --- the intake ----------------------------------------------------------------------------

REASONS = {"topic", "oversized", "contract", "mismatch", "unknown_device"}
topic_strategy = st.sampled_from([
    topics.telemetry(SITE, "fire", "fd-ebw-01"), topics.telemetry(SITE, "fire", "ghost"),
    topics.event(SITE, "fire", "fd-ebw-01"), topics.status(SITE, "gateway", "gw-iot"),
    topics.display_ack(SITE, "led-west-gate"), topics.command(SITE, "alert", "al-1"),
    topics.command(SITE, "bollard", "bollard-plc-south"),
    topics.command_result(SITE, "bollard", "bollard-plc-south"),
    topics.telemetry("other-site", "fire", "fd-ebw-01"), "facility/v1/x", "a/b/c/d/e/f",
    f"facility/v1/{SITE}/telemetry/fire/bad$id"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["site", "family", "device", "ts", "values", "v", "name", "id",
                         "state", "smoke", "endpoint", "message", "action", "target", "by"])
        | st.text(max_size=5), inner, max_size=6), max_leaves=15)


@pytest.fixture(scope="module")
def engine(world: tuple[Topology, Any]) -> Engine:
    topology, endpoints = world
    return Engine(topology, load_rules(rule_files(RULES), topology, endpoints), endpoints,
                  now=1_795_854_600 * 10**9)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=topic_strategy, body=json_values | st.binary(max_size=100))
def test_intake_takes_or_refuses_anything(engine: Engine, topic: str, body: Any) -> None:
    import json

    intake = Intake(SITE, frozenset(engine.topology.sources))
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    refusal, _ = intake.take(engine, topic, payload, 1_795_854_601 * 10**9)
    if refusal is not None:
        assert refusal.reason in REASONS, refusal
        assert refusal.detail
    assert intake.refused["failed"] == 0
