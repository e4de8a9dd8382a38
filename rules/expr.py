"""Rule conditions: safe expressions (simpleeval; no eval, no attributes, no imports).

An expression sees the device's latest values by name (`smoke`, `water_level`, `state`),
`tags` (a dict: place, zone, kind, ...), `params` (the rule's own constants), `hour`,
`minute`, `weekday` (0 Monday, local time of the site), and functions over the device's
recent samples: `rate(name, seconds)` (change per minute, least squares over the window),
`delta(name, seconds)`, `avg(name, seconds)`, `max_of(name, seconds)`, `min_of(name, seconds)`,
`age(name)` (seconds since the value was last seen), `get(name, default)` (the value, or
the default when this device does not report it: a heat detector has no `smoke`) and
`in_schedule(name)`.

A value that a device has not reported yet, or a window with too few samples, makes the
expression *unknown*: the rule keeps its current state rather than guessing.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import simpleeval

FUNCTION_NAMES = frozenset({"rate", "delta", "avg", "max_of", "min_of", "age", "in_schedule",
                            "get", "abs", "min", "max", "round"})
SAMPLED = frozenset({"rate", "delta", "avg", "max_of", "min_of", "age", "get"})
BUILTIN_NAMES = frozenset({"tags", "params", "hour", "minute", "weekday", "True", "False",
                           "None", "true", "false", "value"})


class Unknown(Exception):
    """The expression cannot be decided with the data at hand."""


class ExpressionError(ValueError):
    """An expression that does not parse or uses something not allowed."""


class Expression:
    """A parsed expression; `names` are the value names it reads."""

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ExpressionError("an expression must be a non-empty string")
        self.source = source.strip()
        try:
            tree = ast.parse(self.source, mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"{self.source!r} is not a valid expression: {exc.msg}") \
                from None
        self.names: set[str] = set()
        self.sampled: set[str] = set()  # names read through window functions
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                raise ExpressionError(f"{self.source!r}: attribute access "
                                      f"('.{node.attr}') is not allowed")
            if isinstance(node, ast.Lambda | ast.NamedExpr | ast.ListComp | ast.DictComp
                          | ast.SetComp | ast.GeneratorExp):
                raise ExpressionError(f"{self.source!r}: {type(node).__name__} is not allowed")
            if isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTION_NAMES:
                    name = node.func.id if isinstance(node.func, ast.Name) else "?"
                    raise ExpressionError(
                        f"{self.source!r}: unknown function {name!r} "
                        f"(known: {', '.join(sorted(FUNCTION_NAMES))})")
                if node.func.id in SAMPLED:
                    if not node.args or not isinstance(node.args[0], ast.Constant) \
                            or not isinstance(node.args[0].value, str):
                        raise ExpressionError(f"{self.source!r}: {node.func.id}() takes a value "
                                              "name in quotes first, e.g. rate('water_level', 600)")
                    self.sampled.add(node.args[0].value)
                    if node.func.id not in ("age", "get") and (
                            len(node.args) != 2 or not isinstance(node.args[1], ast.Constant)
                            or not isinstance(node.args[1].value, int | float)
                            or node.args[1].value <= 0):
                        raise ExpressionError(f"{self.source!r}: {node.func.id}() needs a window "
                                              "in seconds > 0 as its second argument")
            elif isinstance(node, ast.Name) and node.id not in FUNCTION_NAMES \
                    and node.id not in BUILTIN_NAMES:
                self.names.add(node.id)
        self._evaluator = simpleeval.EvalWithCompoundTypes()
        self._parsed = self._evaluator.parse(self.source)

    def schedules(self) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(self.source, mode="eval")):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "in_schedule" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value))
        return found

    def check_names(self, known: Iterable[str]) -> None:
        known_set = set(known)
        unknown = sorted((self.names | self.sampled) - known_set)
        if unknown:
            raise ExpressionError(
                f"{self.source!r}: unknown value name(s) {', '.join(map(repr, unknown))} "
                f"for the devices this rule matches (they report: "
                f"{', '.join(sorted(known_set)) or 'nothing'})")

    def evaluate(self, names: Mapping[str, Any],
                 functions: Mapping[str, Callable[..., Any]]) -> Any:
        """The value of the expression, or raise Unknown."""
        ev = self._evaluator
        ev.names = dict(names)
        ev.functions = {"abs": abs, "min": min, "max": max, "round": round, **functions}
        try:
            return ev.eval(self.source, previously_parsed=self._parsed)
        except Unknown:
            raise
        except simpleeval.NameNotDefined:
            raise Unknown() from None
        except (TypeError, ZeroDivisionError, KeyError, IndexError, ValueError):
            # Comparing a missing (None) value, a tag the device lacks: not decidable.
            raise Unknown() from None
        except simpleeval.InvalidExpression as exc:
            raise ExpressionError(f"{self.source!r}: {exc}") from None

    def truth(self, names: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]) -> bool:
        result = self.evaluate(names, functions)
        if result is None:
            raise Unknown()
        return bool(result)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"
