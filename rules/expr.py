"""Rule conditions: safe expressions, compiled once into plain Python closures.

An expression sees the device's latest values by name (`smoke`, `water_level`, `state`),
`tags` (a dict: place, zone, kind, ...), `params` (the rule's own constants), `hour`,
`minute`, `weekday` (0 Monday, local time of the site), and functions over the device's
recent samples: `rate(name, seconds)` (change per minute, least squares over the window),
`delta(name, seconds)`, `avg(name, seconds)`, `max_of(name, seconds)`, `min_of(name, seconds)`,
`age(name)` (seconds since the value was last seen), `get(name, default)` (the value, or
the default when this device does not report it: a heat detector has no `smoke`) and
`in_schedule(name)`; and `abs`, `min`, `max`, `round`.

A value that a device has not reported yet, or a window with too few samples, makes the
expression *unknown*: the rule keeps its current state rather than guessing. `and`, `or`
and `not` follow three-valued (Kleene) logic: `unknown or True` is True, `unknown and
False` is False, anything else with an unknown part is unknown.

Safety: the source is parsed with `ast` and every node is checked against a short list
(constants, names, arithmetic, comparisons, boolean logic, `x if c else y`, subscripts,
tuple/list/dict/set literals, calls of the functions above by name). Nothing is ever
passed to `eval` or `compile`; each allowed node becomes a small closure. There are no
attributes, imports, lambdas, comprehensions, keyword arguments, f-strings or slices.
Evaluation cannot raise anything but `Unknown`: type errors, missing keys, division by
zero, overflow, huge powers and huge repetitions (`'a' * 10**9`) are all unknown.
Evaluating was also why the engine was slow: simpleeval walks the tree on every call;
a closure tree costs about a tenth of that. For the hottest shapes it goes further:
`name OP constant` is one closure with the comparison inline, `first_true` asks several
conditions in one frame, and `Expression.quiet` gives the numbers outside which a
`x >= 70`-like condition is surely false, so a caller can skip the closures altogether
(rules/kinds/threshold.py; tests/test_rules_fast_paths.py checks each against the plain
evaluation).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

FUNCTION_NAMES = frozenset({"rate", "delta", "avg", "max_of", "min_of", "age", "in_schedule",
                            "get", "abs", "min", "max", "round"})
WINDOWED = frozenset({"rate", "delta", "avg", "max_of", "min_of"})  # need a sample window
SAMPLED = WINDOWED | {"age", "get"}  # take a value name in quotes first
TIME_NAMES = frozenset({"hour", "minute", "weekday"})
BUILTIN_NAMES = frozenset({"tags", "params", "True", "False", "None", "true", "false",
                           "value"}) | TIME_NAMES
MAX_SOURCE = 2000  # characters of one expression
MAX_NODES = 400  # syntax nodes of one expression
MAX_SEQUENCE = 10_000  # longest string or list an expression may build
MAX_EXPONENT = 128  # largest integer power

_CONSTANTS = {"True": True, "False": False, "None": None, "true": True, "false": False}


class Unknown(Exception):
    """The expression cannot be decided with the data at hand."""


class ExpressionError(ValueError):
    """An expression that does not parse or uses something not allowed."""


class Env(Protocol):
    """What an expression reads while it is evaluated for one source at one time."""

    values: Mapping[str, Any]
    tags: Mapping[str, Any]
    params: Mapping[str, Any]

    def local(self) -> datetime: ...

    def window(self, function: str, name: str, seconds: float) -> float | None: ...

    def age(self, name: str) -> float | None: ...

    def in_schedule(self, name: str) -> bool: ...


# Errors that mean "cannot be decided with these values", never a fault of the engine.
UNDECIDED = (Unknown, TypeError, ValueError, KeyError, IndexError, ArithmeticError)

Node = Callable[[Env], Any]
# Where a threshold is surely false: (function, name, seconds, a, b, c, d), see
# Expression._quiet.
Quiet = tuple[str, str, float, float, float, float, float]


def _power(base: Any, exponent: Any) -> Any:
    if isinstance(exponent, int) and isinstance(base, int) and abs(exponent) > MAX_EXPONENT \
            and abs(base) > 1:
        raise Unknown()
    result = operator.pow(base, exponent)
    if isinstance(result, complex):  # (-1) ** 0.5 is no measurement
        raise Unknown()
    return result


def _times(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(count, int) \
                and len(seq) * max(count, 0) > MAX_SEQUENCE:
            raise Unknown()
    return operator.mul(left, right)


def _plus(left: Any, right: Any) -> Any:
    result = operator.add(left, right)
    if isinstance(result, str | list | tuple) and len(result) > MAX_SEQUENCE:
        raise Unknown()
    return result


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str | bytes):  # '%999999999d' % 1 would build a huge string
        raise Unknown()
    return operator.mod(left, right)


def _contains(container: Any, item: Any) -> bool:
    return operator.contains(container, item)


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: _plus, ast.Sub: operator.sub, ast.Mult: _times, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: _modulo, ast.Pow: _power}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: _contains(b, a), ast.NotIn: lambda a, b: not _contains(b, a)}
_BUILTINS: dict[str, Callable[..., Any]] = {"abs": abs, "min": min, "max": max, "round": round}

# `name OP constant` as one closure each: the most common condition, evaluated on almost
# every reading, so it skips the generic `op(left, right)` call (same result as operator's).
_NAME_VS_CONSTANT: dict[type[ast.cmpop], Callable[[str, Any], Node]] = {
    ast.GtE: lambda name, c: lambda env: env.values[name] >= c,
    ast.Gt: lambda name, c: lambda env: env.values[name] > c,
    ast.LtE: lambda name, c: lambda env: env.values[name] <= c,
    ast.Lt: lambda name, c: lambda env: env.values[name] < c,
    ast.Eq: lambda name, c: lambda env: env.values[name] == c,
    ast.NotEq: lambda name, c: lambda env: env.values[name] != c}


class Expression:
    """A checked, compiled expression. `names`: the value names it reads directly;
    `sampled`: names read through functions; `windows`: (function, name, seconds) of the
    window functions; `uses_time`: whether its value can change with the clock alone."""

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ExpressionError("an expression must be a non-empty string")
        self.source = source.strip()
        if len(self.source) > MAX_SOURCE:
            raise ExpressionError(f"an expression may have at most {MAX_SOURCE} characters "
                                  f"(this one has {len(self.source)})")
        try:
            tree = ast.parse(self.source, mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"{self.source!r} is not a valid expression: {exc.msg}") \
                from None
        except (RecursionError, MemoryError, ValueError):
            raise ExpressionError(f"{self.source!r} is nested too deeply") from None
        if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
            raise ExpressionError(f"{self.source!r} is too long (more than {MAX_NODES} parts)")
        self.names: set[str] = set()
        self.sampled: set[str] = set()
        self.windows: set[tuple[str, str, float]] = set()
        self.schedule_names: set[str] = set()
        self.aged: set[str] = set()  # names read through age()
        self.uses_time = False
        try:
            self._root = self._compile(tree.body)
            self.root = self._root  # for first_true(): the closure, without test()'s frame
        except RecursionError:
            raise ExpressionError(f"{self.source!r} is nested too deeply") from None
        self.quiet = self._quiet(tree.body)

    # --- checking and compiling ------------------------------------------------------

    def _fail(self, what: str) -> ExpressionError:
        return ExpressionError(f"{self.source!r}: {what}")

    def _compile(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Constant):
            value = node.value
            if value is not None and not isinstance(value, bool | int | float | str):
                raise self._fail(f"constant {value!r} is not allowed")
            return lambda env: value
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(v) for v in node.values]
            return _any_of(parts) if isinstance(node.op, ast.Or) else _all_of(parts)
        if isinstance(node, ast.UnaryOp):
            operand = self._compile(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda env: not operand(env)
            if isinstance(node.op, ast.USub):
                return lambda env: -operand(env)
            if isinstance(node.op, ast.UAdd):
                return lambda env: +operand(env)
            raise self._fail(f"{type(node.op).__name__} is not allowed")
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                raise self._fail(f"operator {type(node.op).__name__} is not allowed")
            left, right = self._compile(node.left), self._compile(node.right)
            return lambda env: op(left(env), right(env))
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.IfExp):
            test, body, other = (self._compile(node.test), self._compile(node.body),
                                 self._compile(node.orelse))
            return lambda env: body(env) if test(env) else other(env)
        if isinstance(node, ast.Subscript):
            if isinstance(node.slice, ast.Slice):
                raise self._fail("slices are not allowed")
            container, index = self._compile(node.value), self._compile(node.slice)
            return lambda env: container(env)[index(env)]
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            items = [self._compile(e) for e in node.elts]
            make: Callable[[Iterable[Any]], Any] = \
                tuple if isinstance(node, ast.Tuple) else list if isinstance(node, ast.List) \
                else frozenset
            constants = [e for e in node.elts if isinstance(e, ast.Constant)]
            if len(constants) == len(node.elts):
                try:
                    fixed = make(c.value for c in constants)
                except TypeError:
                    raise self._fail("a set of unhashable items") from None
                return lambda env: fixed  # the evaluation never changes it
            return lambda env: make(item(env) for item in items)
        if isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]
            if len(keys) != len(node.keys):
                raise self._fail("'**' in a dict is not allowed")
            pairs = [(self._compile(k), self._compile(v))
                     for k, v in zip(keys, node.values, strict=True)]
            return lambda env: {k(env): v(env) for k, v in pairs}
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Attribute):
            raise self._fail(f"attribute access ('.{node.attr}') is not allowed")
        raise self._fail(f"{type(node).__name__} is not allowed")

    def _name(self, name: str) -> Node:
        if name in _CONSTANTS:
            constant = _CONSTANTS[name]
            return lambda env: constant
        if name in FUNCTION_NAMES:
            raise self._fail(f"{name} is a function: call it, e.g. {name}(...)")
        if name == "tags":
            return lambda env: env.tags
        if name == "params":
            return lambda env: env.params
        if name in TIME_NAMES:
            self.uses_time = True
            return lambda env: getattr(env.local(), name)() if name == "weekday" \
                else getattr(env.local(), name)
        if name.startswith("__"):
            raise self._fail(f"name {name!r} is not allowed")
        if name != "value":  # `value`: the device's value of that name, if any
            self.names.add(name)
        # A name the device has not reported raises KeyError: undecided, like Unknown.
        return lambda env: env.values[name]

    def _compare(self, node: ast.Compare) -> Node:
        first = self._compile(node.left)
        steps = []
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            op = _COMPARE.get(type(op_node))
            if op is None:
                raise self._fail(f"comparison {type(op_node).__name__} is not allowed")
            steps.append((op, self._compile(right_node)))
        if len(steps) == 1:
            op, second = steps[0]
            right = node.comparators[0]
            if isinstance(right, ast.Constant):  # the common `level >= 25`
                constant = right.value
                left = node.left
                if isinstance(left, ast.Name) and left.id in self.names:
                    name = left.id
                    direct = _NAME_VS_CONSTANT.get(type(op_node))
                    if direct is not None:  # one frame, no operator call (the hot path)
                        return direct(name, constant)
                    return lambda env: op(env.values[name], constant)
                return lambda env: op(first(env), constant)
            return lambda env: op(first(env), second(env))

        def chain(env: Env) -> Any:
            left = first(env)
            for compare, right in steps:
                value = right(env)
                if not compare(left, value):
                    return False
                left = value
            return True
        return chain

    def _call(self, node: ast.Call) -> Node:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTION_NAMES:
            name = node.func.id if isinstance(node.func, ast.Name) else "?"
            raise self._fail(f"unknown function {name!r} "
                             f"(known: {', '.join(sorted(FUNCTION_NAMES))})")
        function = node.func.id
        if node.keywords:
            raise self._fail(f"{function}(): keyword arguments are not allowed")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self._fail(f"{function}(): '*' arguments are not allowed")
        if function in SAMPLED:
            first = node.args[0] if node.args else None
            if not isinstance(first, ast.Constant) or not isinstance(first.value, str):
                raise self._fail(f"{function}() takes a value name in quotes first, "
                                 "e.g. rate('water_level', 600)")
            name = first.value
            self.sampled.add(name)
            if function in WINDOWED:
                second = node.args[1] if len(node.args) == 2 else None
                if not isinstance(second, ast.Constant) \
                        or not isinstance(second.value, int | float) \
                        or isinstance(second.value, bool) or not 0 < second.value <= 7 * 86400:
                    raise self._fail(f"{function}() needs a window in seconds > 0 (at most a "
                                     "week) as its second argument")
                seconds = float(second.value)
                self.windows.add((function, name, seconds))
                return lambda env: env.window(function, name, seconds)
            if function == "age":
                if len(node.args) != 1:
                    raise self._fail("age() takes one value name")
                self.uses_time = True
                self.aged.add(name)
                return lambda env: env.age(name)
            if len(node.args) > 2:  # get
                raise self._fail("get() takes a value name and a default")
            if len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
                self._compile(node.args[1])  # refuses a constant of a type not allowed
                fixed = node.args[1].value
                return lambda env: env.values.get(name, fixed)
            default = self._compile(node.args[1]) if len(node.args) == 2 else (lambda env: None)

            def get(env: Env) -> Any:
                value = env.values.get(name)
                return default(env) if value is None else value
            return get
        args = [self._compile(a) for a in node.args]
        if function == "in_schedule":
            first = node.args[0] if len(node.args) == 1 else None
            if not isinstance(first, ast.Constant) or not isinstance(first.value, str):
                raise self._fail("in_schedule() takes a schedule name in quotes")
            schedule = first.value
            self.schedule_names.add(schedule)
            self.uses_time = True
            return lambda env: env.in_schedule(schedule)
        builtin = _BUILTINS[function]
        if function == "round":
            def rounded(env: Env) -> Any:
                values = [a(env) for a in args]
                if len(values) == 2 and isinstance(values[1], int) and abs(values[1]) > 100:
                    raise Unknown()
                return builtin(*values)
            return rounded
        return lambda env: builtin(*(a(env) for a in args))

    def _quiet(self, node: ast.expr) -> Quiet | None:
        """For `x >= 25`, `x < 198 or x > 242`, `rate('x', 300) >= 20` and the like (one
        value, or one window of a value, against numbers): (function, name, seconds, a, b,
        c, d) such that a number v of it makes the expression false exactly when
        `v < a and v <= b and v >= c and v > d` (function '' for the value itself).
        None for any other expression."""
        parts = node.values if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) \
            else [node]
        subject = None
        a = b = math.inf
        c = d = -math.inf
        for part in parts:
            if not isinstance(part, ast.Compare) or len(part.ops) != 1:
                return None
            found = self._subject(part.left)
            if found is None or subject not in (None, found):
                return None
            right = part.comparators[0]
            if not isinstance(right, ast.Constant) or isinstance(right.value, bool) \
                    or not isinstance(right.value, int | float):
                return None
            subject, op, k = found, part.ops[0], right.value
            if isinstance(op, ast.GtE):
                a = min(a, k)
            elif isinstance(op, ast.Gt):
                b = min(b, k)
            elif isinstance(op, ast.Lt):
                c = max(c, k)
            elif isinstance(op, ast.LtE):
                d = max(d, k)
            else:
                return None
        return None if subject is None else (*subject, a, b, c, d)

    def _subject(self, node: ast.expr) -> tuple[str, str, float] | None:
        """What `node` reads, if it is a value name or a window function of one."""
        if isinstance(node, ast.Name) and node.id in self.names:
            return "", node.id, 0.0
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in WINDOWED:  # its arguments were checked by _call
            name, seconds = node.args[0], node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) \
                    and isinstance(seconds, ast.Constant) \
                    and isinstance(seconds.value, int | float):
                return node.func.id, name.value, float(seconds.value)
        return None

    # --- the old checks, kept for the rule loader ------------------------------------

    def schedules(self) -> set[str]:
        return set(self.schedule_names)

    def check_names(self, known: Iterable[str]) -> None:
        known_set = set(known)
        unknown = sorted((self.names | self.sampled) - known_set)
        if unknown:
            raise ExpressionError(
                f"{self.source!r}: unknown value name(s) {', '.join(map(repr, unknown))} "
                f"for the devices this rule matches (they report: "
                f"{', '.join(sorted(known_set)) or 'nothing'})")

    # --- evaluation ------------------------------------------------------------------

    def value(self, env: Env) -> Any:
        """The value of the expression, or raise Unknown (and nothing else)."""
        try:
            return self._root(env)
        except UNDECIDED:
            raise Unknown() from None
        except RecursionError:
            raise Unknown() from None

    def test(self, env: Env) -> bool:
        """True or False, or raise Unknown."""
        try:
            result = self._root(env)
            if result is None:
                raise Unknown()
            return bool(result)
        except UNDECIDED:
            raise Unknown() from None
        except RecursionError:
            raise Unknown() from None

    def evaluate(self, names: Mapping[str, Any],
                 functions: Mapping[str, Callable[..., Any]]) -> Any:
        """Evaluate with plain dicts (tests, tools): names and functions by name."""
        return self.value(MappingEnv(names, functions))

    def truth(self, names: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]) -> bool:
        return self.test(MappingEnv(names, functions))

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def first_true(roots: tuple[Node, ...], env: Env) -> bool:
    """Whether any of the expressions (their `root`s) is true, unknown counting as not:
    `any(test(e) for e in ...)` with Unknown as False, in one frame. The threshold kind
    asks it of an idle rule's levels on every reading that touches them."""
    for root in roots:
        try:
            result = root(env)
        except UNDECIDED:
            continue
        except RecursionError:
            continue
        if result is not None and result:
            return True
    return False


def quiet_of(expressions: list[Expression]) -> Quiet | None:
    """One Quiet for all of them (a ladder's raise conditions): a number outside it makes
    every one false. None unless each has one, over the same value name."""
    quiets: list[Quiet] = []
    for expression in expressions:
        quiet = expression.quiet
        if quiet is None or (quiets and quiet[:3] != quiets[0][:3]):
            return None
        quiets.append(quiet)
    if not quiets:
        return None
    return (*quiets[0][:3], min(q[3] for q in quiets), min(q[4] for q in quiets),
            max(q[5] for q in quiets), max(q[6] for q in quiets))


def _any_of(parts: list[Node]) -> Node:
    def any_of(env: Env) -> Any:
        undecided = False
        result: Any = False
        for part in parts:
            try:
                result = part(env)
                if result is None:
                    undecided = True
                elif result:
                    return result
            except UNDECIDED:
                undecided = True
        if undecided:
            raise Unknown()
        return result
    return any_of


def _all_of(parts: list[Node]) -> Node:
    def all_of(env: Env) -> Any:
        undecided = False
        result: Any = True
        for part in parts:
            try:
                result = part(env)
                if result is None:
                    undecided = True
                elif not result:
                    return result
            except UNDECIDED:
                undecided = True
        if undecided:
            raise Unknown()
        return result
    return all_of


class MappingEnv:
    """An Env over plain dicts: values and the names `tags`, `params`, `hour`, ...; the
    functions rate, age, in_schedule, get ... by name."""

    def __init__(self, names: Mapping[str, Any],
                 functions: Mapping[str, Callable[..., Any]]) -> None:
        self.values: Mapping[str, Any] = {k: v for k, v in names.items()
                                           if k not in ("tags", "params")}
        self.tags: Mapping[str, Any] = names.get("tags", {})
        self.params: Mapping[str, Any] = names.get("params", {})
        self.functions = functions
        self.names = names

    def local(self) -> datetime:
        now = datetime.now()
        parts = {k: self.names[k] for k in ("hour", "minute") if k in self.names}
        return now.replace(**parts)

    def window(self, function: str, name: str, seconds: float) -> float | None:
        found = self.functions.get(function)
        if found is None:
            raise Unknown()
        result: float | None = found(name, seconds)
        return result

    def age(self, name: str) -> float | None:
        found = self.functions.get("age")
        if found is None:
            raise Unknown()
        result: float | None = found(name)
        return result

    def in_schedule(self, name: str) -> bool:
        found = self.functions.get("in_schedule")
        if found is None:
            raise Unknown()
        return bool(found(name))
