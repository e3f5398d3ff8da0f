"""Bounded template rendering: a row's template runs in Jinja's sandbox held to a deadline and a
size cap (`Limits.template_seconds`, `template_chars`); every failure is a one-line TemplateProblem.

The sandbox stops escapes but not cost, and Python cannot interrupt a C call once it runs. So the
parsed template is rewritten before it is compiled (every `{% for %}` iterates through a deadline
guard; `~`, literals and comparisons go through size guards), and the environment's call,
operator, filter, test, finalize and buffer-join hooks check the deadline and refuse a value
larger than the cap *before* building it.
"""

from __future__ import annotations

import contextvars
import difflib
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
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import LoopContext, Macro, markup_join, missing, str_join
from jinja2.sandbox import MAX_RANGE, SandboxedEnvironment, SecurityError
from jinja2.utils import generate_lorem_ipsum, pass_context
from jinja2.visitor import NodeTransformer

from runner.errors import TemplateFileError
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
_REFUSED = {
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
_STATE = contextvars.ContextVar("runner_template_bounds", default=_OUTSIDE)


def _start(limits: Limits) -> contextvars.Token:
    return _STATE.set(
        _State(time.monotonic() + limits.template_seconds, limits.template_chars, limits.template_seconds)
    )


@contextmanager
def bounded(limits: Limits = DEFAULT_LIMITS) -> Iterator[None]:
    """Hold the template code run inside the block to `limits`: a deadline from now, and the size cap."""
    token = _start(limits)
    try:
        yield
    finally:
        _STATE.reset(token)


# fmt: off
_TIME = "rendering took longer than {:g} s (limits.template_seconds); the template loops too much for one row: bound its loops and recursion, or raise limits.template_seconds."
_BUILDS = "the template builds {} longer than {:,} characters for one row (limits.template_chars); build less text per row, or raise limits.template_chars if rows really are this long."
_OUTPUT = "the template rendered more than {:,} characters for one row (limits.template_chars); it repeats its output too often: bound its loops, or raise limits.template_chars."
_DIGITS = "{} would build a number of more than {:,} digits; templates cannot print numbers that long (Python stops at 4,300): compute with smaller numbers."
# fmt: on


def _tick() -> None:
    state = _STATE.get()
    if time.monotonic() > state.deadline:
        raise TemplateProblem(_TIME.format(state.seconds), fatal=True)


def _limit(size: int, what: str) -> None:
    if size > _STATE.get().cap:
        raise TemplateProblem(_BUILDS.format(what, _STATE.get().cap), fatal=True)


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


def _check(value: Any, what: str = "a value") -> Any:
    if type(value) is str:
        _limit(len(value), what)
    elif isinstance(value, _SIZED):
        cap = _STATE.get().cap
        _limit(_weight(value, cap), what)
    return value


def _iterate(iterable: Any) -> Iterator[Any]:
    deadline = _STATE.get().deadline
    for item in iterable:
        if time.monotonic() > deadline:
            _tick()
        yield item


def _checked(result: Any, what: str) -> Any:
    return _iterate(result) if isinstance(result, types.GeneratorType) else _check(result, what)


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
    cap = _STATE.get().cap
    _limit(len(fmt) + len(specs) * max([_weight(a, cap) for a in args] + widths, default=0), what)


def _replace_size(s: Any, old: Any, new: Any, count: Any) -> int:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    hits = s.count(old) if old else len(s) + 1
    return len(s) + (min(hits, count) if isinstance(count, int) and count >= 0 else hits) * (len(new) - len(old))


def _join_bound(items: list[Any], sep: Any, what: str) -> None:
    cap = _STATE.get().cap
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
    "tojson": lambda a: _limit(_weight(a["value"], _STATE.get().cap) * (1 + _int(a["indent"])), "tojson(indent)"),
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
            _check(value, what)
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
    return value if type(value) is str else _check(value, "a value to print")


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
        self.filters.update(runner_loop=_loop_guard, runner_concat=_concat_guard, runner_value=_check)
        self.concat = _bounded_concat  # joins the buffers of macros, {% set %} blocks and filter blocks

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        source = _Rewrite().visit(source)  # every compile passes here: templates and expressions alike
        source.set_environment(self)
        token = _STATE.set(_COMPILING)
        try:
            return super()._generate(source, *args, **kwargs)
        finally:
            _STATE.reset(token)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        sequences = (str, list, tuple)
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, sequences) and isinstance(n, int) and n > 0:
                _limit(_weight(seq, _STATE.get().cap) * n, f"'*' repeating a {type(seq).__name__}")
            elif isinstance(left, int) and isinstance(right, int):
                _digits(left.bit_length() + right.bit_length(), "'*'")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _digits(right * left.bit_length(), "'**'")
        elif operator == "+" and isinstance(left, sequences) and isinstance(right, sequences):
            _limit(_weight(left, _STATE.get().cap) + _weight(right, _STATE.get().cap), "'+'")
        elif operator == "%" and isinstance(left, str):
            _format_bound(left, _values(right), True, "'%' formatting")
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        if isinstance(obj, (Macro, LoopContext)):  # their output is joined and counted by the guards
            return super().call(context, obj, *args, **kwargs)
        for key, value in (*enumerate(args), *kwargs.items()):
            if key not in ("_loop_vars", "_block_vars"):
                _check(value, "an argument")
        owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        if isinstance(owner, str):
            args = _check_str_method(owner, name, args)
        elif isinstance(owner, (list, tuple)) and name in ("count", "index", "sort"):
            _check(owner, "a list to search or sort")
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


def load_template(path: Path, limits: Limits = DEFAULT_LIMITS) -> jinja2.Template:
    """Read and compile a template file.

    Raises:
        TemplateFileError: the file cannot be read, is not UTF-8, is not valid Jinja, or includes,
            imports or extends another template; each problem is located by line.
    """
    try:
        raw = path.read_bytes()
        source = raw.decode("utf-8")
    except OSError as exc:
        raise TemplateFileError(
            str(path), [f"cannot read the template: {exc.strerror or exc}; check the path."]
        ) from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem = f"line {line}: the template is not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8."
        raise TemplateFileError(str(path), [problem]) from None
    env = template_environment(limits)
    try:
        tree = env.parse(source)
        problems = [
            f"line {node.lineno}: {{% {_REFUSED[type(node)]} %}} is not available: a template is one file; paste "
            "the text it refers to into it."
            for node in tree.find_all(tuple(_REFUSED))
        ]
        if problems:
            raise TemplateFileError(str(path), problems)
        return env.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateFileError(
            str(path), [f"line {exc.lineno}: Jinja syntax error: {_clip(exc.message or '')}."]
        ) from None


def render(template: jinja2.Template, row: dict, limits: Limits = DEFAULT_LIMITS) -> str:
    """Render one row to its full text; null fields are left out, so `default` applies to them.

    Raises:
        TemplateProblem: the row cannot be rendered (the message names the cause and the fix).
    """
    present = {k: v for k, v in row.items() if v is not None}
    cap, token = limits.template_chars, _start(limits)
    try:
        parts, size = [], 0
        for chunk in template.root_render_func(template.new_context(present)):
            size += len(chunk)
            if size > cap:
                raise TemplateProblem(_OUTPUT.format(cap), fatal=True)
            parts.append(chunk)
        return "".join(parts)
    except TemplateProblem:
        raise
    except Exception as exc:  # MemoryError and RecursionError too: the last resort
        raise _explain(exc, row) from None
    finally:
        _STATE.reset(token)


def compile_expression(source: str, limits: Limits = DEFAULT_LIMITS) -> Callable[..., Any]:
    """Compile a Jinja expression (a probe's `choices`) in the bounded sandbox.

    Returns:
        A function of the row's fields (as keywords) that evaluates the expression under
        `limits` as `render` does: null fields left out, a lazy result made a list, an undefined
        one None, and any failure a TemplateProblem.

    Raises:
        TemplateProblem: the expression is not valid Jinja.
    """
    try:
        expression = template_environment(limits).compile_expression(source)
    except jinja2.TemplateSyntaxError as exc:
        message = f"Jinja syntax error in the expression {source!r}: {_clip(exc.message or '')}; fix it."
        raise TemplateProblem(message) from None

    def evaluate(**row: Any) -> Any:
        try:
            with bounded(limits):
                result = expression(**{k: v for k, v in row.items() if v is not None})
                return _check(list(result) if isinstance(result, Iterator) else result, "the expression's value")
        except TemplateProblem:
            raise
        except Exception as exc:  # MemoryError and RecursionError too: the last resort
            raise _explain(exc, row) from None

    return evaluate


def _clip(text: str, width: int = 200) -> str:
    text = " ".join(str(text).split()).rstrip(".")
    return text if len(text) <= width else text[: width - 1] + "…"


def _names(keys: Any) -> str:
    names = sorted(str(k) for k in keys)
    return (", ".join(names[:20]) + (f", … ({len(names) - 20} more)" if len(names) > 20 else "")) or "none"


def _mean(name: Any, keys: Any) -> str:
    close = difflib.get_close_matches(str(name), [str(k) for k in keys], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _undefined_message(exc: jinja2.UndefinedError, row: dict) -> str:
    found, tb = None, exc.__traceback__  # the Undefined that raised is `self` in the innermost frame
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        found = candidate if isinstance(candidate, jinja2.Undefined) else found
        tb = tb.tb_next
    if found is None or found._undefined_hint is not None or not isinstance(found._undefined_name, (str, int)):
        return f"{_clip(exc.message or str(exc))}; check the template's variables and the row's fields."
    name, obj = found._undefined_name, found._undefined_obj
    if obj is missing and name in row and row[name] is None:
        return f"field '{name}' is null in this row; render it as empty with {{{{ {name} | default('') }}}} or fill the row."
    if obj is missing:
        return f"'{name}' is undefined: the row has no field '{name}'{_mean(name, row)}; its fields are: {_names(row)}."
    if isinstance(obj, dict):
        return f"'{name}' is undefined: the object has no key '{name}'{_mean(name, obj)}; its keys are: {_names(obj)}."
    if isinstance(obj, (list, tuple)):
        return f"item {name} is undefined: the list has {len(obj)} items; check the index, or the list's length first."
    return f"'{name}' is undefined: the value is a {type(obj).__name__}, which has no field '{name}'; check the field path."


# fmt: off
# (exception type, text its message contains, the reason ({m}: that message), fatal); first match wins
_REASONS: list[tuple[type, str, str, bool]] = [
    (RecursionError, "", "the template recursed too deeply (a macro or loop() calling itself without end, or a value nested too deeply); give the recursion a stopping condition.", True),
    (MemoryError, "", "rendering ran out of memory: the template builds too much for one row; build less.", True),
    (SecurityError, "", "the sandbox refused it ({m}): templates cannot reach Python internals; use the row's fields and filters.", False),
    (jinja2.TemplateError, "", "template error: {m}; fix the template.", False),
    (OverflowError, "range", f"range() is capped at {MAX_RANGE:,} items in the sandbox; loop over fewer items.", False),
    (ValueError, "integer string conversion", "a number has more than 4,300 digits and cannot be printed; compute with smaller numbers.", False),
    (ZeroDivisionError, "", "a division by zero; check the divisor first, e.g. {% if n %}…{% endif %}.", False),
    (TypeError, "no loader", "{% include %}, {% import %} and {% extends %} are not available: a template is one file; paste the text it refers to into it.", False),
    (TypeError, "", "type error: {m}; convert the value first, e.g. {{ x | int }} or {{ x | string }}.", False),
    (OverflowError, "", "a number is too large: {m}; compute with smaller numbers.", False),
    (Exception, "", "the template failed with {t}: {m}; fix the template or the row.", False),
]
# fmt: on


def _explain(exc: BaseException, row: dict) -> TemplateProblem:
    """The user-facing reason (and fix) for an exception raised while rendering a row."""
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateProblem(_undefined_message(exc, row))
    kind, contains, reason, fatal = next(r for r in _REASONS if isinstance(exc, r[0]) and r[1] in str(exc))
    return TemplateProblem(reason.replace("{m}", _clip(str(exc))).replace("{t}", type(exc).__name__), fatal=fatal)
