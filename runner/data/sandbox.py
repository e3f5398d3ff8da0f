"""The bounded Jinja sandbox: a template a user wrote cannot run long, build huge values or
reach outside its variables."""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import re
import string
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import LoopContext, Macro, markup_join, str_join
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum, pass_context
from jinja2.visitor import NodeTransformer

from runner.limits import DEFAULT_LIMITS, Limits

MAX_INT_BITS = 1 << 16  # ~19,700 digits: Python prints at most 4,300, and bigger ints cost time


_CONTAINERS = (list, tuple, dict, set, frozenset)


_SIZED = (str, *_CONTAINERS)


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[a-zA-Z%]")


# Filters and tests that build nothing (O(1) on their input): a large argument is not refused.
_UNMEASURED = frozenset(
    "length count first last random default d attr defined undefined none boolean false true integer float "
    "string mapping iterable sequence number callable sameas filter test escaped lower upper odd even".split()
)


REFUSED_NODES = {
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Extends: "extends",
}


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


_COMPILING = _State(math.inf, 1024, math.inf)


BOUNDS = contextvars.ContextVar("runner_template_bounds", default=_OUTSIDE)


def start_bounds(limits: Limits) -> contextvars.Token:
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


def _tick() -> None:
    state = BOUNDS.get()
    if time.monotonic() > state.deadline:
        raise TemplateProblem(_TIME.format(state.seconds), fatal=True)


def _limit(size: int, what: str) -> None:
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
    if type(value) is str:
        _limit(len(value), what)
    elif isinstance(value, _SIZED):
        cap = BOUNDS.get().cap
        _limit(_weight(value, cap), what)
    return value


def _iterate(iterable: Any) -> Iterator[Any]:
    deadline = BOUNDS.get().deadline
    for item in iterable:
        if time.monotonic() > deadline:
            _tick()
        yield item


def _checked(result: Any, what: str) -> Any:
    return _iterate(result) if isinstance(result, types.GeneratorType) else check_size(result, what)


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
    _limit(len(fmt) + len(specs) * max([_weight(a, cap) for a in args] + widths, default=0), what)


def _replace_size(s: Any, old: Any, new: Any, count: Any) -> int:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    hits = s.count(old) if old else len(s) + 1
    return len(s) + (min(hits, count) if isinstance(count, int) and count >= 0 else hits) * (len(new) - len(old))


def _join_bound(items: list[Any], sep: Any, what: str) -> None:
    cap = BOUNDS.get().cap
    size = sum(len(x) if type(x) is str else _weight(x, cap) for x in items)
    _limit(size + len(str(sep)) * max(len(items) - 1, 0), what)


def _join_filter(a: dict) -> None:
    if isinstance(a["value"], str):
        _limit(len(a["value"]) * (1 + len(str(a["d"]))), "join")
    elif a["attribute"] is None:  # made a list once, so a lazy input is not consumed twice
        a["value"] = list(a["value"])
        _join_bound(a["value"], a["d"], "join")


def _lines_size(s: Any, width: Any, insert: Any) -> int:
    """What wordwrap (insert: its wrapstring) or indent (insert None) can build."""
    s = str(s)
    made = 0 if insert is None else 2 * len(s) // max(_int(width), 1)  # a line per half width, at worst
    return len(s) + (s.count("\n") + 1 + made) * (_int(width) if insert is None else len(insert))


# What a width-taking filter would build, bounded before it builds it (arguments bound by name).
_FILTER_CHECKS: dict[str, Callable[[dict], None]] = {
    "center": lambda a: _limit(_int(a["width"]), "center(width)"),
    "indent": lambda a: _limit(_lines_size(a["s"], a["width"], None), "indent"),
    "wordwrap": lambda a: _limit(_lines_size(a["s"], a["width"], a["wrapstring"] or "\n"), "wordwrap"),
    "replace": lambda a: _limit(_replace_size(a["s"], a["old"], a["new"], a["count"]), "replace"),
    "format": lambda a: _format_bound(a["value"], [*a["args"], *a["kwargs"].values()], True, "format"),
    "batch": lambda a: _limit(_int(a["linecount"]), "batch(linecount)"),
    "slice": lambda a: _limit(_int(a["slices"]), "slice(slices)"),
    "join": _join_filter,
    "tojson": lambda a: _limit(_weight(a["value"], BOUNDS.get().cap) * (1 + _int(a["indent"])), "tojson(indent)"),
    "sum": lambda a: a.update(iterable=_iterate(a["iterable"])),  # sum(start=[]) copies lists in C, each step
}


def _guard_callable(name: str, func: Callable, kind: str) -> Callable:
    """A filter or test that checks the deadline and the size of its arguments and result."""
    check = _FILTER_CHECKS.get(name) if kind == "filter" else None
    signature = inspect.signature(func) if check else None  # of the plain function it wraps
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # the context / environment
    lead = skip if getattr(inspect.unwrap(func), "jinja_pass_arg", None) is None else 0  # added by a wrapper
    what, measure = f"a value for {kind} '{name}'", name not in _UNMEASURED

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if not measure:
            return func(*args, **kwargs)
        for value in (*args[skip:], *kwargs.values()):
            check_size(value, what)
        if signature is not None:
            bound = signature.bind(*args[lead:], **kwargs)
            bound.apply_defaults()
            check(bound.arguments)
            args, kwargs = (*args[:lead], *bound.args), bound.kwargs
        return _checked(func(*args, **kwargs), f"the result of {kind} '{name}'")

    return guarded


@pass_context  # a context filter is never folded into a constant at compile time
def _loop_guard(context: Any, iterable: Any) -> Iterator[Any]:
    return _iterate(iterable)


@pass_context
def _concat_guard(context: Any, parts: tuple) -> str:
    _join_bound(list(parts), "", "'~'")
    return (markup_join if context.eval_ctx.autoescape else str_join)(parts)


def _bounded_concat(parts: Any) -> str:
    parts = parts if isinstance(parts, list) else list(parts)
    _limit(sum(map(len, parts)), "output inside a macro, {% set %} block or filter block")
    return "".join(parts)


def _finalize(value: Any) -> Any:
    return value if type(value) is str else check_size(value, "a value to print")


def _guard(name: str, node: nodes.Expr) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _Rewrite(NodeTransformer):
    """Route loops, `~`, literals and comparisons through the guard filters."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = _guard("runner_loop", node.iter)
        if node.recursive:  # loop(children) iterates again without a For node of its own
            for call in node.find_all(nodes.Call):
                if isinstance(call.node, nodes.Name) and call.node.name == "loop" and call.args:
                    call.args[0] = _guard("runner_loop", call.args[0])
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        self.generic_visit(node)
        return _guard("runner_concat", nodes.Tuple(node.nodes, "load", lineno=node.lineno))

    def visit_Compare(self, node: nodes.Compare) -> nodes.Compare:
        self.generic_visit(node)  # comparing (or hashing) two shared-part structures walks every repeat
        node.expr = _guard("runner_value", node.expr)
        for op in node.ops:
            op.expr = _guard("runner_value", op.expr)
        return node

    def _literal(self, node: nodes.Expr) -> nodes.Expr:
        self.generic_visit(node)  # [x, x] doubles a structure's printed size without copying it
        return _guard("runner_value", node) if getattr(node, "ctx", "load") == "load" else node

    visit_List = visit_Tuple = visit_Dict = _literal


class _BoundedEnvironment(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: Limits) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
        self.limits, self.finalize = limits, _finalize
        self.filters = {n: _guard_callable(n, f, "filter") for n, f in self.filters.items()}
        self.tests = {n: _guard_callable(n, f, "test") for n, f in self.tests.items()}
        self.filters.update(runner_loop=_loop_guard, runner_concat=_concat_guard, runner_value=check_size)
        self.concat = _bounded_concat  # joins the buffers of macros, {% set %} blocks and filter blocks

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        source = _Rewrite().visit(source)  # every compile passes here: templates and expressions alike
        source.set_environment(self)
        token = BOUNDS.set(_COMPILING)
        try:
            return super()._generate(source, *args, **kwargs)
        finally:
            BOUNDS.reset(token)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        sequences = (str, list, tuple)
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, sequences) and isinstance(n, int) and n > 0:
                _limit(_weight(seq, BOUNDS.get().cap) * n, f"'*' repeating a {type(seq).__name__}")
            elif isinstance(left, int) and isinstance(right, int):
                _digits(left.bit_length() + right.bit_length(), "'*'")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _digits(right * left.bit_length(), "'**'")
        elif operator == "+" and isinstance(left, sequences) and isinstance(right, sequences):
            _limit(_weight(left, BOUNDS.get().cap) + _weight(right, BOUNDS.get().cap), "'+'")
        elif operator == "%" and isinstance(left, str):
            _format_bound(left, _values(right), True, "'%' formatting")
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        if isinstance(obj, (Macro, LoopContext)):  # their output is joined and counted by the guards
            return super().call(context, obj, *args, **kwargs)
        for key, value in (*enumerate(args), *kwargs.items()):
            if key not in ("_loop_vars", "_block_vars"):
                check_size(value, "an argument")
        owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        if isinstance(owner, str):
            args = _check_str_method(owner, name, args)
        elif isinstance(owner, (list, tuple)) and name in ("count", "index", "sort"):
            check_size(owner, "a list to search or sort")
        elif obj is generate_lorem_ipsum:
            a = inspect.signature(obj).bind(*args, **kwargs).arguments
            _limit(_int(a.get("n", 5)) * max(_int(a.get("min", 20)), _int(a.get("max", 100))) * 10, "lipsum")
        return _checked(super().call(context, obj, *args, **kwargs), f"the result of {name or 'a call'}")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)  # the sandbox's own check, at attribute access
        if wrapper is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        def guarded(*args: Any, **kwargs: Any) -> str:
            _format_bound(fmt, _values(args[0]) if is_map and args else [*args, *kwargs.values()], False, "str.format")
            return wrapper(*args, **kwargs)

        return guarded


def _check_str_method(s: str, name: str, args: tuple) -> tuple:
    what = f"str.{name}"
    if name in ("ljust", "rjust", "center", "zfill") and args:
        _limit(_int(args[0]), f"{what}(width)")
    elif name == "expandtabs":
        _limit(len(s) + s.count("\t") * _int(args[0] if args else 8), what)
    elif name == "replace" and len(args) >= 2:
        _limit(_replace_size(s, args[0], args[1], args[2] if len(args) > 2 else -1), what)
    elif name == "translate" and args and isinstance(args[0], dict):
        _limit(len(s) * max([len(v) for v in args[0].values() if isinstance(v, str)] or [1]), what)
    elif name == "join" and args:
        items = list(args[0])
        _join_bound(items, s, what)
        return (items, *args[1:])
    return args


def template_environment(limits: Limits = DEFAULT_LIMITS) -> SandboxedEnvironment:
    """The bounded sandbox: no attribute tricks or file access, an undefined name is an error,
    and what a template runs is held to `limits` while `render` (or `bounded`) is active."""
    return _BoundedEnvironment(limits)
