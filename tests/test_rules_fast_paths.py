"""The rules engine's hand-written fast paths (issue 14), each held to the straightforward
version it replaces:

- decode_reading() (msgspec checks the values in C) against decode(payload, Reading):
  the same reading or the same refusal, for any payload near the contract;
- first_true() against testing each expression; the `name OP constant` closures against
  Python's operators, unknown where those raise;
- the threshold gate and the skipped no-data/command watches (rules/kinds/threshold.py,
  rules/evaluate.py) against an engine that evaluates every rule a reading touches: the
  benchmark's campus, its faults and 6 simulated minutes give the same alerts, transitions
  and rule states."""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bench_rules import build, faults, stream
from facility import messages as m
from rules.engine import Engine
from rules.expr import Expression, MappingEnv, Unknown, first_true, quiet_of

NAMES = st.sampled_from(["a", "b", "voltage_a", "time", "A", "x" * 65, "ok_1"])
SCALARS = st.one_of(
    st.booleans(), st.none(), st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**60, -(2**64), 10**30]),
    st.text(max_size=5), st.just("é" * 4096), st.just("x" * 4097),
    st.lists(st.integers(), max_size=2))


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {
        "site": draw(st.sampled_from(["panyu-admin-centre", "Bad Site", ""])),
        "family": draw(st.sampled_from(["energy", "fire", "nope"])),
        "device": draw(st.sampled_from(["em-main-total", "d/1"])),
        "ts": draw(st.sampled_from([1_795_854_600 * 10**9, 0, m.MAX_TS, m.MAX_TS + 1,
                                    m.MIN_TS, m.MIN_TS - 1, 1.5])),
        "values": draw(st.dictionaries(NAMES, SCALARS, max_size=4)),
    }
    if draw(st.booleans()):
        doc["units"] = draw(st.dictionaries(NAMES, st.sampled_from(["V", ""]), max_size=2))
    if draw(st.booleans()):
        doc["quality"] = draw(st.sampled_from(["good", "comm_failure", "bad"]))
    if draw(st.booleans()):
        doc["tags"] = draw(st.dictionaries(st.sampled_from(["load", "site", "Z"]),
                                           st.sampled_from(["total", "", "y" * 300]),
                                           max_size=2))
    if draw(st.booleans()):
        doc["gateway"] = draw(st.sampled_from(["gw-bench", "", "bad gw"]))
    if draw(st.booleans()):
        doc["v"] = draw(st.sampled_from([1, 2, "1"]))
    if draw(st.booleans()):
        doc.pop(draw(st.sampled_from(sorted(doc))))
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    return text.encode() if draw(st.booleans()) else text.encode()[: draw(st.integers(0, 400))]


def _outcome(decode: Any, payload: bytes) -> tuple[str, Any]:
    try:
        reading = decode(payload)
    except m.ContractError as exc:
        return "refused", str(exc)
    assert isinstance(reading, m.Reading)
    return "taken", m.to_builtins(reading)


@settings(max_examples=1500, deadline=None)
@given(payloads())
def test_decode_reading_answers_as_the_contract(payload: bytes) -> None:
    straight = _outcome(lambda p: m.decode(p, m.Reading), payload)
    assert _outcome(m.decode_reading, payload) == straight


def test_decode_reading_keeps_exact_large_integers() -> None:
    """2**60 is exact as a float: the contract takes it (the fast type sends it back)."""
    payload = (b'{"site":"s","family":"energy","device":"d","ts":1795854600000000000,'
               b'"values":{"a":1152921504606846976}}')
    assert m.decode_reading(payload).values == {"a": 2**60}


EXPRESSIONS = ["a >= 3", "a > 3", "a <= 3", "a < 3", "a == 3", "a != 3", "a == 'on'",
               "a < 198 or a > 242", "a >= 1 and b < 2", "rate('a', 60) > 1", "not a",
               "a >= 2.5 or b", "b"]
VALUES = st.one_of(st.integers(-5, 5), st.floats(-5, 5), st.booleans(), st.none(),
                   st.sampled_from(["on", "3", ""]))


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(EXPRESSIONS), min_size=1, max_size=3),
       st.dictionaries(st.sampled_from(["a", "b"]), VALUES))
def test_first_true_is_any_test(sources: list[str], values: dict[str, Any]) -> None:
    expressions = [Expression(s) for s in sources]
    env = MappingEnv(values, {"rate": lambda name, seconds: None})

    def holds(e: Expression) -> bool:
        try:
            return e.test(env)
        except Unknown:
            return False
    assert first_true(tuple(e.root for e in expressions), env) == any(map(holds, expressions))


COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
           "==": operator.eq, "!=": operator.ne}


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(COMPARE)), VALUES, st.sampled_from(["3", "2.5", "'on'", "True"]))
def test_name_against_constant_is_the_operator(op: str, value: Any, constant: str) -> None:
    expression = Expression(f"a {op} {constant}")
    env = MappingEnv({"a": value}, {})
    try:
        want: Any = COMPARE[op](value, json.loads(constant.replace("'", '"').replace(
            "True", "true")))
    except TypeError:
        want = Unknown
    try:
        got: Any = expression.value(env)
    except Unknown:
        got = Unknown
    assert got == want and type(got) is type(want)


def _straightforward(engine: Engine) -> None:
    """Undo the fast paths: every threshold rule a reading touches is evaluated, every
    watch a reading can reach is asked."""
    for plan in engine.evaluator.plans.values():
        plan.thresholds = [(compiled, names, None, None, None, 0.0, 0.0, 0.0, 0.0, 0.0)
                           for compiled, names, *_ in plan.thresholds]
        plan.stateless = list(plan.on_reading)


def _run(engine: Engine, items: list[tuple[int, str, bytes]]) -> list[Any]:
    out: list[Any] = []
    second = 0
    for now, _, payload in items:
        engine.reading(m.decode(payload, m.Reading), now)
        if now // 10**9 != second:  # a tick each simulated second, as the service
            second = now // 10**9
            engine.tick(now)
        effects = engine.take()
        out += [(a.rule, a.source, action, a.severity, a.value) for a, action, _, _
                in effects.alerts]
        out += [(t.alert, t.action, t.from_state, t.to_state) for t in effects.transitions]
        out += sorted((i.rule, i.source, i.level, tuple(i.pending), tuple(i.clearing))
                      for i in effects.instances)
    return out


@pytest.mark.parametrize("seconds", [360.0])
def test_threshold_gate_changes_nothing(tmp_path: Path, seconds: float) -> None:
    (tmp_path / "fast").mkdir()
    (tmp_path / "plain").mkdir()
    fast, readings, _ = build(tmp_path / "fast", quick=True)
    plain, _, _ = build(tmp_path / "plain", quick=True)
    _straightforward(plain)
    injected = faults(readings)
    for fault in injected:
        fault.start -= 100  # within the 6 minutes
    items = list(stream(readings, injected, seconds))
    got, want = _run(fast, items), _run(plain, items)
    assert any(step[2] == "raised" for step in want if len(step) == 5)
    assert got == want


LADDERS = [  # raise conditions of a ladder, and whether the gate knows the shape
    (["a >= 3"], True), (["a >= 3", "a >= 4.5"], True),
    (["a < 198 or a > 242", "a < 187 or a > 253"], True),
    (["a > 2 or a <= 1"], True), (["a <= -2"], False),
    (["a <= 0", "a >= 1"], True), (["a >= 3", "b >= 3"], False), (["a >= 3 and a < 9"], False),
    (["hour >= 3"], False), (["a == 3"], False), (["3 <= a"], False), (["a >= True"], False),
    (["rate('a', 300) >= 20"], True), (["max_of('a', 60) >= 2", "max_of('a', 60) > 9"], True),
    (["rate('a', 300) >= 20", "rate('a', 600) >= 30"], False),
    (["rate('a', 300) >= 20 or a > 3"], False)]


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(LADDERS), st.one_of(st.integers(-300, 300), st.floats(-300, 300),
                                           st.booleans(), st.sampled_from([2**60, 10**30])))
def test_quiet_means_false(ladder: tuple[list[str], bool], number: Any) -> None:
    """For the shapes the gate knows, it skips a rule without a call exactly when every
    level's raise condition is false; other shapes are always asked through first_true."""
    sources, known = ladder
    expressions = [Expression(s) for s in sources]
    quiet = quiet_of(expressions)
    assert (quiet is not None) == known
    if quiet is None:
        return
    _, name, _, a, b, c, d = quiet
    env = MappingEnv({"a": number, "b": 0}, {"rate": lambda name, seconds: number,
                                              "max_of": lambda name, seconds: number})
    anything = first_true(tuple(e.root for e in expressions), env)
    assert name == "a"
    assert (number < a and number <= b and number >= c and number > d) == (not anything)
