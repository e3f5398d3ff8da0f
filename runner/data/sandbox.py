"""The bounded Jinja sandbox: a template a user wrote cannot run long, build huge values or
reach outside its variables.

The environment routes a template's loops, calls, operators, filters and printed values
through the checks of runner.data.template_bounds, which hold them to the render's budget.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import LoopContext, Macro, markup_join, str_join
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum, pass_context
from jinja2.visitor import NodeTransformer

from runner.data.template_bounds import (
    BOUNDS,
    COMPILING,
    FILTER_CHECKS,
    binop_bound,
    check_size,
    checked,
    iterate,
    join_bound,
    limit,
    lipsum_bound,
    str_format_bound,
    str_method_bound,
    tick,
)
from runner.data.template_bounds import TemplateProblem as TemplateProblem  # re-exported: callers catch it here
from runner.limits import DEFAULT_LIMITS, Limits

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


def _guard_callable(name: str, func: Callable, kind: str) -> Callable:
    """A filter or test that checks the deadline and the size of its arguments and result."""
    check = FILTER_CHECKS.get(name) if kind == "filter" else None
    signature = inspect.signature(func) if check else None  # of the plain function it wraps
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # the context / environment
    lead = skip if getattr(inspect.unwrap(func), "jinja_pass_arg", None) is None else 0  # added by a wrapper
    what, measure = f"a value for {kind} '{name}'", name not in _UNMEASURED

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if not measure:
            return func(*args, **kwargs)
        for value in (*args[skip:], *kwargs.values()):
            check_size(value, what)
        if signature is not None:
            bound = signature.bind(*args[lead:], **kwargs)
            bound.apply_defaults()
            check(bound.arguments)
            args, kwargs = (*args[:lead], *bound.args), bound.kwargs
        return checked(func(*args, **kwargs), f"the result of {kind} '{name}'")

    return guarded


@pass_context  # a context filter is never folded into a constant at compile time
def _loop_guard(context: Any, iterable: Any) -> Iterator[Any]:
    return iterate(iterable)


@pass_context
def _concat_guard(context: Any, parts: tuple) -> str:
    join_bound(list(parts), "", "'~'")
    return (markup_join if context.eval_ctx.autoescape else str_join)(parts)


def _bounded_concat(parts: Any) -> str:
    parts = parts if isinstance(parts, list) else list(parts)
    limit(sum(map(len, parts)), "output inside a macro, {% set %} block or filter block")
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
        token = BOUNDS.set(COMPILING)
        try:
            return super()._generate(source, *args, **kwargs)
        finally:
            BOUNDS.reset(token)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        binop_bound(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        tick()
        if isinstance(obj, (Macro, LoopContext)):  # their output is joined and counted by the guards
            return super().call(context, obj, *args, **kwargs)
        for key, value in (*enumerate(args), *kwargs.items()):
            if key not in ("_loop_vars", "_block_vars"):
                check_size(value, "an argument")
        owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        if isinstance(owner, str):
            args = str_method_bound(owner, name, args)
        elif isinstance(owner, (list, tuple)) and name in ("count", "index", "sort"):
            check_size(owner, "a list to search or sort")
        elif obj is generate_lorem_ipsum:
            lipsum_bound(inspect.signature(obj).bind(*args, **kwargs).arguments)
        return checked(super().call(context, obj, *args, **kwargs), f"the result of {name or 'a call'}")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)  # the sandbox's own check, at attribute access
        if wrapper is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        def guarded(*args: Any, **kwargs: Any) -> str:
            str_format_bound(fmt, args, kwargs, is_map)
            return wrapper(*args, **kwargs)

        return guarded


def template_environment(limits: Limits = DEFAULT_LIMITS) -> SandboxedEnvironment:
    """The bounded sandbox: no attribute tricks or file access, an undefined name is an error,
    and what a template runs is held to `limits` while `render` (or `bounded`) is active."""
    return _BoundedEnvironment(limits)
