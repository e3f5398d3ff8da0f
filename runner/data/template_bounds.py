"""What template code may build and how long it may run: the bounds the sandbox checks.

A render's budget (a deadline and a size cap) lives in the `BOUNDS` context variable, set by
`bounded` or `start_bounds`. The checks here estimate, before anything is built, what a filter,
an operator, a string method or a %- / {}-format would produce, and raise `TemplateProblem` when
it would pass the cap. runner.data.sandbox routes a template's code through them.
"""

from __future__ import annotations

import contextvars
import math
import re
import string
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from runner.limits import DEFAULT_LIMITS, Limits

MAX_INT_BITS = 1 << 16  # ~19,700 digits: Python prints at most 4,300, and bigger ints cost time


_CONTAINERS = (list, tuple, dict, set, frozenset)


_SIZED = (str, *_CONTAINERS)


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[a-zA-Z%]")


class TemplateProblem(ValueError):
    """A row could not be rendered; str(exc) is a user-facing reason ending with the fix.

    `fatal` is True for resource limits (time, size, recursion): the caller stops rendering
    further rows at once instead of paying the cost again for every row.
    """

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True)
class _State:
    deadline: float
    cap: int
    seconds: float


# Outside `render` / `bounded` only the size cap holds. While compiling (constant folding)
# nothing big may be built: a folded value stays in the compiled template, and thousands of
# them would fill memory.
_OUTSIDE = _State(math.inf, DEFAULT_LIMITS.template_chars, math.inf)


COMPILING = _State(math.inf, 1024, math.inf)


BOUNDS = contextvars.ContextVar("runner_template_bounds", default=_OUTSIDE)


def start_bounds(limits: Limits) -> contextvars.Token:
    """Start a render's budget now; the caller must `BOUNDS.reset` the token (`bounded` does)."""
    return BOUNDS.set(
        _State(time.monotonic() + limits.template_seconds, limits.template_chars, limits.template_seconds)
    )


@contextmanager
def bounded(limits: Limits = DEFAULT_LIMITS) -> Iterator[None]:
    """Hold the template code run inside the block to `limits`: a deadline from now, and the size cap."""
    token = start_bounds(limits)
    try:
        yield
    finally:
        BOUNDS.reset(token)


# fmt: off
_TIME = "rendering took longer than {:g} s (limits.template_seconds); the template loops too much for one row: bound its loops and recursion, or raise limits.template_seconds."


_BUILDS = "the template builds {} longer than {:,} characters for one row (limits.template_chars); build less text per row, or raise limits.template_chars if rows really are this long."


OUTPUT_MESSAGE = "the template rendered more than {:,} characters for one row (limits.template_chars); it repeats its output too often: bound its loops, or raise limits.template_chars."


_DIGITS = "{} would build a number of more than {:,} digits; templates cannot print numbers that long (Python stops at 4,300): compute with smaller numbers."
# fmt: on


def tick() -> None:
    """Raise a fatal TemplateProblem once the render's deadline has passed; cheap enough for every call."""
    state = BOUNDS.get()
    if time.monotonic() > state.deadline:
        raise TemplateProblem(_TIME.format(state.seconds), fatal=True)


def limit(size: int, what: str) -> None:
    """Raise a fatal TemplateProblem if `size` characters pass the cap; `what` names the culprit."""
    if size > BOUNDS.get().cap:
        raise TemplateProblem(_BUILDS.format(what, BOUNDS.get().cap), fatal=True)


def _weight(value: Any, cap: int) -> int:
    """About how many characters str(value) has (stopping once past cap); the memo makes a
    structure that shares parts (a list holding one list twice, doubled 60 times) cost only
    its distinct parts to measure, while their repeats still count."""
    memo: dict[int, int] = {}

    def walk(v: Any) -> int:
        if isinstance(v, str):
            return len(v)
        if type(v) is int:
            return v.bit_length() * 3 // 10 + 1
        if not isinstance(v, _CONTAINERS):
            return 8
        if id(v) in memo:
            return memo[id(v)]
        memo[id(v)] = 5  # a cycle prints as [...]
        total = 2
        pairs = v.items() if isinstance(v, dict) else ((x, "") for x in v)  # items are fresh tuples: no memo
        for a, b in pairs:
            total += (len(a) if type(a) is str else walk(a)) + (len(b) if type(b) is str else walk(b)) + 1
            if total > cap:
                return total
        memo[id(v)] = total
        return total

    return walk(value)


def check_size(value: Any, what: str = "a value") -> Any:
    """Return `value` unchanged if its printed size fits the cap; only strings and containers are measured."""
    if type(value) is str:
        limit(len(value), what)
    elif isinstance(value, _SIZED):
        cap = BOUNDS.get().cap
        limit(_weight(value, cap), what)
    return value


def iterate(iterable: Any) -> Iterator[Any]:
    """Yield the items, checking the deadline between them, so a long loop stops in time."""
    deadline = BOUNDS.get().deadline
    for item in iterable:
        if time.monotonic() > deadline:
            tick()
        yield item


def checked(result: Any, what: str) -> Any:
    """A call's result held to the bounds: a generator is consumed under the deadline, anything else measured."""
    return iterate(result) if isinstance(result, types.GeneratorType) else check_size(result, what)


def _int(v: Any) -> int:
    return v if type(v) is int else len(v) if isinstance(v, str) else 0


def _values(x: Any) -> list[Any]:
    return list(x.values()) if isinstance(x, dict) else list(x) if isinstance(x, tuple) else [x]


def _digits(bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateProblem(_DIGITS.format(what, MAX_INT_BITS * 3 // 10), fatal=True)


def _format_bound(fmt: Any, args: list[Any], percent: bool, what: str) -> None:
    """Refuse a %- or {}-format whose widths or repeated arguments would build past the cap."""
    if not isinstance(fmt, str):
        return
    if percent:
        specs = [s for s in _PERCENT.findall(fmt) if s != "%%"]
    else:
        specs = [s or "" for _, f, s, _ in string.Formatter().parse(fmt) if f is not None]
    widths = [int(d) for s in specs for d in re.findall(r"\d+", s)]
    if any("*" in s or "{" in s for s in specs):  # a width taken from an argument
        widths += [a for a in args if type(a) is int]
    cap = BOUNDS.get().cap
    limit(len(fmt) + len(specs) * max([_weight(a, cap) for a in args] + widths, default=0), what)


def str_format_bound(fmt: str, args: tuple, kwargs: dict, is_map: bool) -> None:
    """Bound a template's `fmt.format(...)` or `fmt.format_map(mapping)` call before it runs."""
    _format_bound(fmt, _values(args[0]) if is_map and args else [*args, *kwargs.values()], False, "str.format")


def _replace_size(s: Any, old: Any, new: Any, count: Any) -> int:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    hits = s.count(old) if old else len(s) + 1
    return len(s) + (min(hits, count) if isinstance(count, int) and count >= 0 else hits) * (len(new) - len(old))


def join_bound(items: list[Any], sep: Any, what: str) -> None:
    """Refuse joining `items` with `sep` if the joined text would pass the cap; items must be a list (measured once)."""
    cap = BOUNDS.get().cap
    size = sum(len(x) if type(x) is str else _weight(x, cap) for x in items)
    limit(size + len(str(sep)) * max(len(items) - 1, 0), what)


def _join_filter(a: dict) -> None:
    if isinstance(a["value"], str):
        limit(len(a["value"]) * (1 + len(str(a["d"]))), "join")
    elif a["attribute"] is None:  # made a list once, so a lazy input is not consumed twice
        a["value"] = list(a["value"])
        join_bound(a["value"], a["d"], "join")


def _lines_size(s: Any, width: Any, insert: Any) -> int:
    """What wordwrap (insert: its wrapstring) or indent (insert None) can build."""
    s = str(s)
    made = 0 if insert is None else 2 * len(s) // max(_int(width), 1)  # a line per half width, at worst
    return len(s) + (s.count("\n") + 1 + made) * (_int(width) if insert is None else len(insert))


# What a width-taking filter would build, bounded before it builds it (arguments bound by name).
FILTER_CHECKS: dict[str, Callable[[dict], None]] = {
    "center": lambda a: limit(_int(a["width"]), "center(width)"),
    "indent": lambda a: limit(_lines_size(a["s"], a["width"], None), "indent"),
    "wordwrap": lambda a: limit(_lines_size(a["s"], a["width"], a["wrapstring"] or "\n"), "wordwrap"),
    "replace": lambda a: limit(_replace_size(a["s"], a["old"], a["new"], a["count"]), "replace"),
    "format": lambda a: _format_bound(a["value"], [*a["args"], *a["kwargs"].values()], True, "format"),
    "batch": lambda a: limit(_int(a["linecount"]), "batch(linecount)"),
    "slice": lambda a: limit(_int(a["slices"]), "slice(slices)"),
    "join": _join_filter,
    "tojson": lambda a: limit(_weight(a["value"], BOUNDS.get().cap) * (1 + _int(a["indent"])), "tojson(indent)"),
    "sum": lambda a: a.update(iterable=iterate(a["iterable"])),  # sum(start=[]) copies lists in C, each step
}


def binop_bound(operator: str, left: Any, right: Any) -> None:
    """Refuse `*`, `**`, `+` or `%` whose result would pass the cap or MAX_INT_BITS, before Python computes it."""
    sequences = (str, list, tuple)
    if operator == "*":
        seq, n = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(seq, sequences) and isinstance(n, int) and n > 0:
            limit(_weight(seq, BOUNDS.get().cap) * n, f"'*' repeating a {type(seq).__name__}")
        elif isinstance(left, int) and isinstance(right, int):
            _digits(left.bit_length() + right.bit_length(), "'*'")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        _digits(right * left.bit_length(), "'**'")
    elif operator == "+" and isinstance(left, sequences) and isinstance(right, sequences):
        limit(_weight(left, BOUNDS.get().cap) + _weight(right, BOUNDS.get().cap), "'+'")
    elif operator == "%" and isinstance(left, str):
        _format_bound(left, _values(right), True, "'%' formatting")


def lipsum_bound(arguments: dict) -> None:
    """Bound `lipsum(n, min, max)` by its worst case (n paragraphs of max words, ~10 characters a word)."""
    a = arguments
    limit(_int(a.get("n", 5)) * max(_int(a.get("min", 20)), _int(a.get("max", 100))) * 10, "lipsum")


def str_method_bound(s: str, name: str, args: tuple) -> tuple:
    """Bound a template's call of the string method `s.name(*args)`; returns the args to call it with.

    `join`'s iterable comes back as a list, measured once, so a lazy one is not consumed twice.
    """
    what = f"str.{name}"
    if name in ("ljust", "rjust", "center", "zfill") and args:
        limit(_int(args[0]), f"{what}(width)")
    elif name == "expandtabs":
        limit(len(s) + s.count("\t") * _int(args[0] if args else 8), what)
    elif name == "replace" and len(args) >= 2:
        limit(_replace_size(s, args[0], args[1], args[2] if len(args) > 2 else -1), what)
    elif name == "translate" and args and isinstance(args[0], dict):
        limit(len(s) * max([len(v) for v in args[0].values() if isinstance(v, str)] or [1]), what)
    elif name == "join" and args:
        items = list(args[0])
        join_bound(items, s, what)
        return (items, *args[1:])
    return args
