"""The bounded template renderer: hostile or buggy templates end in a one-line TemplateProblem
(fatal for time, size and recursion) within about the deadline and with little memory, escapes
stay refused, and the shipped templates render exactly as in the plain sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import jinja2
import pytest
from conftest import PROJECT
from jinja2.sandbox import SandboxedEnvironment

from runner.data.sandbox import TemplateProblem, template_environment
from runner.data.templates import compile_expression, load_template, render
from runner.errors import TemplateFileError
from runner.limits import Limits

LIMITS = Limits(template_seconds=0.4)
ROW = {"id": 7, "title": "Héllo wörld", "body": "Some text.", "subtitle": None, "q": {"stem": "Why?", "choices": []}}


def problem(source: str, row: dict | None = None, limits: Limits = LIMITS) -> TemplateProblem:
    template = template_environment(limits).from_string(source)
    with pytest.raises(TemplateProblem) as info:
        render(template, ROW if row is None else row, limits)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    return info.value


def timed_problem(source: str, row: dict | None = None) -> TemplateProblem:
    start = time.monotonic()
    exc = problem(source, row)
    assert time.monotonic() - start < 3 * LIMITS.template_seconds
    return exc


# --- load_template --------------------------------------------------------------------------


def test_include_import_from_and_extends_are_refused_by_line(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{% extends 'base' %}\n{% include 'a' %}\n{% import 'b' as b %}\n{% from 'c' import d %}\n")
    with pytest.raises(TemplateFileError) as info:
        load_template(path)
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 1", "line 2", "line 3", "line 4"]
    for problem_text, tag in zip(problems, ["{% extends %}", "{% include %}", "{% import %}", "{% from ... import %}"]):
        assert f"{tag} is not available: a template is one file" in problem_text


def test_syntax_error_is_located(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("Q: {{ q }}\n|||\n{% if x %}{{ a }\n")
    with pytest.raises(TemplateFileError) as info:
        load_template(path)
    assert info.value.problems[0].startswith("line 3: Jinja syntax error:")


def test_unknown_filter_is_a_located_syntax_error(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{{ q }}\n|||\n{{ a | nosuch }}\n")
    with pytest.raises(TemplateFileError, match="line 3: Jinja syntax error: No filter named 'nosuch'"):
        load_template(path)


def test_non_utf8_and_missing_files_are_data_errors(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_bytes(b"Q: {{ q }}\n\xff\xfe|||\n")
    with pytest.raises(TemplateFileError) as info:
        load_template(path)
    assert info.value.problems == ["line 2: the template is not UTF-8 text (byte 0xff); save it as UTF-8."]
    with pytest.raises(TemplateFileError, match="cannot read the template"):
        load_template(tmp_path / "absent.jinja")


def shipped_rows() -> dict[str, dict]:
    ticket = {"product": "Router X", "ticket": "It reboots every hour.", "subject": "Reboots", "body": "Long text."}
    choices = [{"label": "A", "text": "shark"}, {"label": "B", "text": "whale"}]
    return {
        "arc_easy.jinja": {"question": {"stem": "Which is a mammal?", "choices": choices}, "answerKey": "B"},
        "boolq.jinja": {"passage": "Water boils at 100 C.", "question": "does water boil at 100 c", "answer": True},
        "extractive_qa.jinja": {
            "context": "Paris is in France.",
            "question": "Where?",
            "answers": {"text": ["France"]},
        },
        "instruction.jinja": {"instruction": "Summarise.", "input": "Cats sleep.", "output": "Cats nap."},
        "long_ticket.jinja": {**ticket, "urgency": "High"},
        "multiple_choice_letter.jinja": {"question": {"stem": "Mammal?", "choices": choices}, "answerKey": "B"},
        "sentence_classification.jinja": {"sentence": "a gripping film .", "label": 1},
        "ticket_impact.jinja": {**ticket, "impact": "severe"},
        "ticket_reach.jinja": {**ticket, "reach": "many"},
        "ticket_urgency.jinja": {**ticket, "urgency": "Low"},
        "instructions.jinja": {"instruction": "Name a colour.", "answer": "Blue."},
        "multiple_choice.jinja": {"question": "2 + 2?", "choices": ["3", "4", "5", "6"], "answer": "B"},
        "general.jinja": {"instruction": "Say hi.", "answer": "Hi!"},
        "rows.jinja": {"prompt": "Hello", "completion": "World"},
    }


def test_every_shipped_template_renders_as_in_the_plain_sandbox():
    paths = sorted((PROJECT / "templates").glob("*.jinja")) + sorted((PROJECT / "runner" / "suites").rglob("*.jinja"))
    rows = shipped_rows()
    plain = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    assert len(paths) >= 14
    for path in paths:
        row = rows[path.name]
        text = render(load_template(path), row)
        assert text == plain.from_string(path.read_text()).render(**row) and "|||" in text, path


# --- ordinary failures: one line, not fatal --------------------------------------------------


@pytest.mark.parametrize(
    "source, expected",
    [
        ("{{ title + 1 }}", "type error: can only concatenate str"),
        ("{{ 1/0 }}", "division by zero"),
        ("{{ title.y.z }}", "'y' is undefined: the value is a str, which has no field 'y'"),
        ("{{ range(10**9) }}", "range() is capped at 100,000 items"),
        ("{{ 10 ** 5000 }}", "a number has more than 4,300 digits"),
        ("{{ q.stme }}", "the object has no key 'stme' (did you mean 'stem'?); its keys are: choices, stem."),
        ("{{ q.choices[3] }}", "item 3 is undefined: the list has 0 items"),
        ("{% include 'other' %}", "{% include %}, {% import %} and {% extends %} are not available"),
        ("{{ 'a'.index('b') }}", "the template failed with ValueError: substring not found"),
        ("{% if title %}{{ title | nosuch }}{% endif %}", "template error: No filter named 'nosuch'"),
    ],
)
def test_errors_become_one_line_problems(source, expected):
    exc = problem(source)
    assert expected in str(exc) and not exc.fatal


def test_a_null_field_suggests_default():
    exc = problem("{{ subtitle }}")
    assert (
        str(exc)
        == "field 'subtitle' is null in this row; render it as empty with {{ subtitle | default('') }} or fill the row."
    )
    template = template_environment(LIMITS).from_string("[{{ subtitle | default('') }}]")
    assert render(template, ROW, LIMITS) == "[]"


def test_a_missing_field_lists_the_fields_and_the_closest():
    exc = problem("{{ titel }}")
    assert str(exc) == (
        "'titel' is undefined: the row has no field 'titel' (did you mean 'title'?); "
        "its fields are: body, id, q, subtitle, title."
    )
    many = {f"field{i:02d}": i for i in range(30)}
    assert "field19, … (10 more)." in str(problem("{{ nothing }}", many))


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ lipsum.__globals__ }}",
        "{{ title.__class__.__subclasses__() }}",
        "{{ '{0.__class__}'.format(title) }}",
    ],
)
def test_sandbox_escapes_stay_refused(source):
    exc = problem(source)
    assert "sandbox refused" in str(exc) and "Python internals" in str(exc) and not exc.fatal


# --- resource limits: fatal ------------------------------------------------------------------


def test_recursive_macro_is_a_fatal_recursion_problem():
    exc = problem("{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}")
    assert "recursed too deeply" in str(exc) and exc.fatal
    assert problem("{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}").fatal


@pytest.mark.parametrize(
    "source",
    [
        "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for c in long %}{% for d in long %}{% endfor %}{% endfor %}",
        "{% for i in [0] * 100000 %}{% for j in [0] * 100000 %}{% endfor %}{% endfor %}",
        "{% for x in range(100000) if x >= 0 %}{% for y in range(100000) %}{% endfor %}{% endfor %}",
        "{% for x in range(100000) recursive %}{% if loop.depth < 3 %}{{ loop(range(100000)) }}{% endif %}{% endfor %}",
        "{{ ([[1]] * 100000) | sum(start=[]) | length }}",
    ],
    ids=["fan-out-macro", "nested-loops", "string-loops", "list-literal-loops", "filtered-loop", "recursive", "sum"],
)
def test_long_renders_stop_at_the_deadline(source):
    exc = timed_problem(source, {"long": "ab" * 50_000})
    assert str(exc).startswith("rendering took longer than 0.4 s (limits.template_seconds)") and exc.fatal


def test_an_output_loop_stops_at_the_size_cap_or_the_deadline():
    source = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    assert "took longer than" in str(timed_problem(source))
    small = Limits(template_seconds=5.0, template_chars=10_000)
    exc = problem(source, limits=small)
    assert str(exc).startswith("the template rendered more than 10,000 characters for one row") and exc.fatal


@pytest.mark.parametrize(
    "source, expected",
    [
        ("{{ 'x' * 10**10 }}", "'*' repeating a str"),
        ("{{ [1] * 10**9 }}", "'*' repeating a list"),
        ("{{ title * 1000000 }}", "'*' repeating a str"),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
            "'~'",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
            "'+'",
        ),
        ("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}", "a value"),
        ("{{ 'x' | center(10**10) }}", "center(width)"),
        ("{{ title | replace('', 'y' * 2000000) }}", "replace"),
        ("{{ title.replace('', 'y' * 2000000) }}", "str.replace"),
        ("{{ title.ljust(10**10) }}", "str.ljust(width)"),
        ("{{ '{:>10000000000}'.format(title) }}", "str.format"),
        ("{{ '{:>{}}'.format(title, 10**10) }}", "str.format"),
        ("{{ '%10000000000s' % title }}", "'%' formatting"),
        ("{{ '%*s' % (10**10, title) }}", "'%' formatting"),
        ("{{ '%10000000000s' | format(title) }}", "format"),
        ("{{ title | indent(10**10) }}", "indent"),
        ("{{ title | wordwrap(1, wrapstring='y' * 10**7) }}", "wordwrap"),
        ("{{ (['y' * 10**6] * 9) | join('z' * 10**6) }}", "join"),
        ("{{ [1] | tojson(indent=10**9) }}", "tojson(indent)"),
        ("{{ [1] | batch(10**9, 0) | list }}", "batch(linecount)"),
        ("{{ lipsum(n=100000) }}", "lipsum"),
        (
            "{% macro m(s) %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endmacro %}{{ m('x' * 10**6) }}",
            "output inside a macro",
        ),
    ],
)
def test_oversized_values_are_refused_before_they_are_built(source, expected):
    exc = problem(source)
    assert f"the template builds {expected}" in str(exc) and "(limits.template_chars)" in str(exc) and exc.fatal


def test_huge_numbers_are_refused_before_they_are_computed():
    # Jinja's ** is left-associative: 10 ** 10 ** 10 is (10 ** 10) ** 10, a 101-digit number.
    assert render(template_environment().from_string("{{ 10 ** 10 ** 10 }}"), {}) == "1" + "0" * 100
    for source in ("{{ 10 ** (10 ** 10) }}", "{{ (2 ** 60000) * (2 ** 60000) }}"):
        exc = problem(source)
        assert "would build a number of more than" in str(exc) and exc.fatal


def test_hostile_renders_stay_small_in_memory():
    code = r"""
import json, resource, sys
from runner.limits import Limits
from runner.data.sandbox import TemplateProblem, template_environment
from runner.data.templates import render
limits = Limits(template_seconds=0.3)
sources = [
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ big }}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**10 }}", "{{ [1] * 10**9 }}", "{{ 10 ** (10 ** 10) }}", "{{ 'x' | center(10**10) }}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
    "{{ '{:>10000000000}'.format(big) }}", "{{ '%10000000000s' % big }}", "{{ big | replace('', big) }}",
    "{% set x %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endset %}{{ x }}",
    "{% macro m() %}{% for i in range(100000) %}{{ big }}{% endfor %}{% endmacro %}{{ m() }}",
    "{{ ([big] * 100) | join }}", "{% set l = [] %}{% for i in range(100000) %}{% set _ = l.append(big) %}{% endfor %}{{ l }}",
]
outcomes = []
for source in sources:
    try:
        render(template_environment(limits).from_string(source), {"big": "b" * 1_000_000}, limits)
        outcomes.append("rendered")
    except TemplateProblem as exc:
        outcomes.append("fatal" if exc.fatal else str(exc))
print(json.dumps({"outcomes": outcomes, "kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=PROJECT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outcomes"] == ["fatal"] * 15
    assert report["kb"] < 2 * 1024 * 1024


# --- what must keep working ------------------------------------------------------------------


def test_a_large_unicode_row_renders_below_the_cap():
    body = "ünïcødé ✓ " * 500_000  # 5 M characters
    template = template_environment().from_string("Title: {{ title }}\n{{ body }}\n|||\n{{ id }} ✓")
    text = render(template, {**ROW, "body": body})
    assert text == f"Title: Héllo wörld\n{body}\n|||\n7 ✓"


def test_a_large_structured_field_can_still_be_counted_and_indexed():
    docs = [{"text": "d" * 1_000_000}] * 20  # prints as 20 M characters: over the cap, never printed whole
    source = "{{ docs | length }} {{ docs | first | length }} {{ docs[3].text | length }}{% if docs is defined %}!{% endif %}"
    assert render(template_environment(LIMITS).from_string(source), {"docs": docs}, LIMITS) == "20 1 1000000!"
    assert "the template builds a value for filter 'join'" in str(problem("{{ docs | join }}", {"docs": docs}))


def test_ordinary_jinja_still_works():
    source = (
        "{% set ns = namespace(n=0) %}{% for c in q.choices + ['a', 'b'] if c %}{{ loop.index }}.{{ c | upper }} "
        "{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }} {{ '%s-%03d' % (title[:2], id) }} {{ '{:>4}'.format(id) }} "
        "{{ [3, 1, 2] | sort | join(',') }} {{ title ~ '!' }} {{ (1, 2) == (1, 2) }} {{ {'k': 1}.k }} "
        "{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(id) }}{% filter upper %}ok{% endfilter %} "
        "{{ range(3) | map('string') | join('+') }} {{ 2 ** 10 }} {{ title | wordwrap(5) | length }}"
    )
    assert render(template_environment().from_string(source), ROW) == (
        "1.A 2.B 2 Hé-007    7 1,2,3 Héllo wörld! True 1 <7>OK 0+1+2 1024 11"
    )


def test_compile_expression_is_bounded_the_same_way():
    choices = compile_expression("choices | map('upper')", LIMITS)
    assert choices(choices=["a", "b"], other=None) == ["A", "B"]
    assert compile_expression("nothing")() is None
    start = time.monotonic()
    with pytest.raises(TemplateProblem, match="took longer than") as info:
        compile_expression("range(100000) | map('string') | map('center', 100000) | list", LIMITS)()
    assert info.value.fatal and time.monotonic() - start < 3 * LIMITS.template_seconds
    with pytest.raises(TemplateProblem, match="the template builds '\\*' repeating a str"):
        compile_expression("'x' * 10**10")()
    with pytest.raises(TemplateProblem, match="field 'c' is null in this row"):
        compile_expression("c | list")(c=None)
    with pytest.raises(TemplateProblem, match=r"Jinja syntax error in the expression 'a \+'"):
        compile_expression("a +")
