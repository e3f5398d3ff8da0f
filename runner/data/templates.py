"""Loading, rendering and compiling user templates in the bounded sandbox, with problems in
words (which field, which row, and the fix)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
from jinja2.runtime import missing
from jinja2.sandbox import MAX_RANGE, SecurityError

from runner.data.sandbox import REFUSED_NODES, template_environment
from runner.data.template_bounds import BOUNDS, OUTPUT_MESSAGE, TemplateProblem, bounded, check_size, start_bounds
from runner.errors import TemplateFileError
from runner.limits import DEFAULT_LIMITS, Limits


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
            f"line {node.lineno}: {{% {REFUSED_NODES[type(node)]} %}} is not available: a template is one file; paste "
            "the text it refers to into it."
            for node in tree.find_all(tuple(REFUSED_NODES))
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
    cap, token = limits.template_chars, start_bounds(limits)
    try:
        parts, size = [], 0
        for chunk in template.root_render_func(template.new_context(present)):
            size += len(chunk)
            if size > cap:
                raise TemplateProblem(OUTPUT_MESSAGE.format(cap), fatal=True)
            parts.append(chunk)
        return "".join(parts)
    except TemplateProblem:
        raise
    except Exception as exc:  # MemoryError and RecursionError too: the last resort
        raise _explain(exc, row) from None
    finally:
        BOUNDS.reset(token)


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
                return check_size(list(result) if isinstance(result, Iterator) else result, "the expression's value")
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


def _explain(exc: BaseException, row: dict) -> TemplateProblem:
    """The user-facing reason (and fix) for an exception raised while rendering a row."""
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateProblem(_undefined_message(exc, row))
    kind, contains, reason, fatal = next(r for r in _REASONS if isinstance(exc, r[0]) and r[1] in str(exc))
    return TemplateProblem(reason.replace("{m}", _clip(str(exc))).replace("{t}", type(exc).__name__), fatal=fatal)
