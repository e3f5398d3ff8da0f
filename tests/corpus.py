"""Users' real file shapes and hostile inputs, as a table: each case is a spec (conftest's
`base_spec` with changes, or raw spec text), the files it brings, and what runner must say.

Kinds:
- "bad": `runner run` (and `runner validate`) must exit 2, name the problem (every `expect`
  substring on stderr), print no traceback and leave no run folder.
- "good": a real-world shape that must simply work (`runner preview` exits 0, and stdout
  holds every `expect` substring).

`hostile` cases could cost time or memory if a bound broke (alias bombs, deep nesting, template
loops): they run in a child process (tests/corpus_driver.py) with a timeout and a peak-memory
bound. `instance` says which real input each case stands for.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from conftest import base_spec, make_workdir, sentiment_rows

Files = dict[str, str | bytes | Callable[[], str | bytes]]


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "bad" or "good"
    instance: str  # the real-world input it stands for
    expect: tuple[str, ...] = ()
    spec: dict = field(default_factory=dict)  # top-level keys replacing base_spec()'s
    task: dict = field(default_factory=dict)  # keys replacing the one task's
    files: Files = field(default_factory=dict)  # path in the case folder -> content
    spec_text: str | None = None  # the whole spec file instead (bombs, broken syntax)
    spec_name: str = "spec.yaml"
    args: tuple[str, ...] = ()  # after `runner run SPEC` / `runner validate SPEC`
    hostile: bool = False
    command: tuple[str, ...] | None = None  # another command instead of run/validate ({root}: the case folder)


def stage(case: Case, root: Path) -> Path:
    """The case's folder: conftest's valid data and template, the case's files and its spec."""
    make_workdir(root)
    (root / "spec.yaml").unlink()
    for name, content in case.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = content() if callable(content) else content
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    spec_path = root / case.spec_name
    if case.spec_text is not None:
        spec_path.write_text(case.spec_text, encoding="utf-8")
    else:
        spec = base_spec(**case.spec)
        spec["training"] = {**spec["training"], "epochs": 1, "max_steps": 1}
        spec["evaluation"] = {**spec["evaluation"], "bootstrap_samples": 10, "baselines": ["majority", "fine_tuned"]}
        task = {k: v for k, v in {**spec["tasks"][0], **case.task}.items() if v is not None}  # None: key removed
        spec["tasks"] = [task, *spec["tasks"][1:]]
        text = json.dumps(spec) if spec_path.suffix == ".json" else yaml.safe_dump(spec, sort_keys=False)
        spec_path.write_text(text, encoding="utf-8")
    return spec_path


# --- file makers ------------------------------------------------------------------------------


def github_issues_csv(long_chars: int, n: int = 40, empty_titles: int = 0) -> Callable[[], str]:
    """A GitHub-issues export: title, body, label; two bodies hold a stack trace of `long_chars`
    (real exports carry 100 KB+ logs pasted into an issue); `empty_titles` rows have no title."""

    def make() -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["number", "title", "body", "sentiment"])
        trace = 'Traceback (most recent call last):\n  File "app.py", line 12, in main\n'
        for i, row in enumerate(sentiment_rows(n)):
            body = row["text"]
            if i in (3, 17):
                body += "\n" + (trace * (long_chars // len(trace) + 1))[:long_chars]
            title = "" if i < empty_titles else f"Issue {i}: {row['text'][:20]}"
            writer.writerow([i + 1, title, body, row["sentiment"]])
        return out.getvalue()

    return make


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def with_rows(changes: dict[int, dict]) -> str:
    """The sentiment rows as JSONL, with some rows' fields changed (0-based)."""
    return jsonl([{**row, **changes.get(i, {})} for i, row in enumerate(sentiment_rows())])


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": each level a list of nine aliases of the one before."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def empty_checkpoint() -> bytes:
    """A checkpoint that loads with weights_only (what --resume checks first) and holds nothing."""
    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": {}}, buffer)
    return buffer.getvalue()


def valid_spec_text(extra: str = "") -> str:
    spec = base_spec()
    spec["training"] = {**spec["training"], "epochs": 1, "max_steps": 1}
    return yaml.safe_dump(spec, sort_keys=False) + extra


TEMPLATE_TASK = {"template": "t.jinja"}
ISSUES_TASK = {"data": "data/issues.csv", "template": "issue.jinja"}


def issue_files(long_chars: int, empty_titles: int = 0) -> Files:
    """The GitHub-issues export and a template showing its title and body."""
    return {
        "data/issues.csv": github_issues_csv(long_chars, empty_titles=empty_titles),
        "templates/issue.jinja": "Title: {{ title }}\nBody: {{ body }}\nSentiment:\n|||\n{{ sentiment }}\n",
    }


def template_case(id: str, instance: str, text: str, expect: tuple[str, ...], hostile: bool = True) -> Case:
    """A hostile or broken template on the valid sentiment data."""
    return Case(id, "bad", instance, expect, task=TEMPLATE_TASK, files={"templates/t.jinja": text}, hostile=hostile)


# --- the corpus ---------------------------------------------------------------------------------

GOOD = [
    Case(
        "csv_field_150kb",
        "good",
        "a GitHub-issues CSV export where two issues carry a 150 KB pasted log",
        ("Title: Issue",),
        spec={"model": {"source": "random-tiny", "max_length": 1024}},
        task=ISSUES_TASK,
        files=issue_files(150_000),
    ),
    Case(
        "csv_field_2mb",
        "good",
        "a JIRA export with a 2 MB description field",
        ("Title: Issue",),
        spec={"model": {"source": "random-tiny", "max_length": 1024}},
        task=ISSUES_TASK,
        files=issue_files(2_000_000),
    ),
    Case(
        "csv_empty_cells",
        "good",
        "support tickets where 107 of 5,431 have no title: empty cells render empty and are counted",
        ("Body:", "field 'title' is empty in 5 of 40 rows"),
        task=ISSUES_TASK,
        files=issue_files(100, empty_titles=5),
        args=("--split", "train"),
    ),
    Case(
        "path_with_brackets",
        "good",
        "a data folder named run[1] next to run1 (a glob would read the wrong file)",
        ("from the run[1] folder",),
        task={"data": "data/run[1]/t.jsonl"},
        files={
            "data/run[1]/t.jsonl": jsonl(
                [{**r, "text": r["text"] + " (from the run[1] folder)"} for r in sentiment_rows()]
            ),
            "data/run1/t.jsonl": jsonl([{**r, "text": r["text"] + " (from the decoy)"} for r in sentiment_rows()]),
        },
    ),
    Case(
        "path_with_star",
        "good",
        "a file named tickets*.jsonl, as a spreadsheet export named it",
        ("The product",),
        task={"data": "data/tickets*.jsonl"},
        files={"data/tickets*.jsonl": jsonl(sentiment_rows())},
    ),
    Case(
        "glob_source",
        "good",
        "a day of logs per file: {glob: data/logs/*.jsonl}",
        ("The product",),
        task={"data": {"glob": "data/logs/*.jsonl"}},
        files={
            "data/logs/day1.jsonl": jsonl(sentiment_rows(40)[:20]),
            "data/logs/day2.jsonl": jsonl(sentiment_rows(40)[20:]),
        },
    ),
    Case(
        "jsonl_null_with_default",
        "good",
        "an API export with null titles, rendered with {{ title | default('') }}",
        ("The product",),
        task={"template": "t.jinja"},
        files={
            "data/sentiment.jsonl": with_rows({i: {"title": None} for i in range(0, 40, 3)}),
            "templates/t.jinja": "{{ title | default('') }} Review: {{ text }}\n|||\n{{ sentiment }}\n",
        },
    ),
    Case(
        "csv_zero_one_labels",
        "good",
        "a 0/1 label column with a label_map (integers stay integers, not 1.0)",
        ("The product",),
        task={"data": "data/coded.csv", "label_map": {0: "negative", 1: "positive"}, "labels": None},
        files={
            "data/coded.csv": "text,sentiment\n"
            + "".join(f"{r['text']},{int(r['sentiment'] == 'positive')}\n" for r in sentiment_rows())
        },
    ),
]

BAD_DATA = [
    Case(
        "jsonl_null_field",
        "bad",
        "an API export where some titles are null",
        ("row 4", "null", "default('')"),
        task={"template": "t.jinja"},
        files={
            "data/sentiment.jsonl": with_rows({i: {"title": None if i == 3 else f"Review {i}"} for i in range(40)}),
            "templates/t.jinja": "{{ title }} Review: {{ text }}\n|||\n{{ sentiment }}\n",
        },
    ),
    Case(
        "csv_int_label_empty_cell",
        "bad",
        "a 0/1 label column where one row was never labelled",
        ("row 6",),
        task={"data": "data/coded.csv", "label_map": {0: "negative", 1: "positive"}, "labels": None},
        files={
            "data/coded.csv": "text,sentiment\n"
            + "".join(
                f"{r['text']},{'' if i == 5 else int(r['sentiment'] == 'positive')}\n"
                for i, r in enumerate(sentiment_rows())
            )
        },
    ),
    Case(
        "jsonl_nested_100k",
        "bad",
        "a JSONL line that is 100,000 nested lists (a fuzzer's or a broken exporter's output)",
        ("line 3", "nest"),
        files={
            "data/sentiment.jsonl": lambda: (
                jsonl(sentiment_rows()[:2]) + "[" * 100_000 + "]" * 100_000 + "\n" + jsonl(sentiment_rows()[2:])
            )
        },
        hostile=True,
    ),
    Case(
        "jsonl_nested_200_objects",
        "bad",
        "a row with metadata nested 200 objects deep",
        ("nest", "limits.nesting"),
        files={"data/sentiment.jsonl": lambda: with_rows({2: {"meta": json.loads('{"a":' * 200 + "1" + "}" * 200)}})},
        hostile=True,
    ),
    Case(
        "json_nested_deep",
        "bad",
        "a .json export whose rows are nested 5,000 levels deep",
        ("nest",),
        task={"data": "data/rows.json"},
        files={"data/rows.json": lambda: "[" + '{"text": ' * 5000 + '"x"' + "}" * 5000 + "]"},
        hostile=True,
    ),
    Case(
        "field_over_limit",
        "bad",
        "a CSV cell of 5,000 characters with limits.field_chars lowered to 1,000",
        ("limits.field_chars", "body"),
        spec={"limits": {"field_chars": 1000}},
        task=ISSUES_TASK,
        files=issue_files(5000),
    ),
    Case(
        "file_over_limit",
        "bad",
        "a data file larger than limits.file_mb",
        ("limits.file_mb",),
        spec={"limits": {"file_mb": 0.001}},
        task=ISSUES_TASK,
        files=issue_files(5000),
    ),
    Case(
        "glob_matches_nothing",
        "bad",
        "a glob whose folder was renamed",
        ("$.tasks[0].data.glob", "matches no file"),
        task={"data": {"glob": "data/logs/*.jsonl"}},
    ),
    Case(
        "path_and_glob",
        "bad",
        "a data source naming both a file and a pattern",
        ("$.tasks[0].data", "exactly one of path, glob, hub"),
        task={"data": {"path": "data/sentiment.jsonl", "glob": "data/*.jsonl"}},
    ),
    Case(
        "two_bad_files_at_once",
        "bad",
        "a multi-task spec where both tasks' files are broken: both reported in one go",
        ("a.jsonl", "line 2", "b.csv", "3 fields"),
        spec={
            "tasks": [
                {
                    "name": "one",
                    "data": "data/a.jsonl",
                    "template": "sentiment.jinja",
                    "labels": ["positive", "negative"],
                },
                {
                    "name": "two",
                    "data": "data/b.csv",
                    "template": "sentiment.jinja",
                    "labels": ["positive", "negative"],
                },
            ]
        },
        files={
            "data/a.jsonl": with_rows({}).replace("\n", "\n{broken\n", 1),
            "data/b.csv": "text,sentiment\nfine,positive,extra\n"
            + "".join(f"{r['text']},{r['sentiment']}\n" for r in sentiment_rows()),
        },
    ),
]

BAD_SPECS = [
    Case(
        "seed_too_large", "bad", "a timestamp used as the seed", ("$.seed", "4294967295"), spec={"seed": 20261203081500}
    ),
    Case(
        "training_seed_too_large",
        "bad",
        "a timestamp used as training.seed",
        ("$.training.seed",),
        spec={"training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "seed": 2**40}},
    ),
    Case(
        "lora_r_ten_million",
        "bad",
        "lora.r set to a parameter count by mistake",
        ("$.method.lora.r",),
        spec={"method": {"kind": "lora", "lora": {"r": 10_000_000}}},
    ),
    Case(
        "name_trailing_newline",
        "bad",
        'name: "x\\n" from a templated spec',
        ("$.name", "control character"),
        spec={"name": "x\n"},
    ),
    Case(
        "task_name_with_tab",
        "bad",
        "a task name pasted from a spreadsheet with a tab",
        ("$.tasks[0].name",),
        task={"name": "senti\tment"},
    ),
    Case(
        "max_time_centuries",
        "bad",
        "max_time with the days and hours swapped",
        ("$.training.max_time",),
        spec={"training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_time": "99999:00:00:00"}},
    ),
    Case(
        "batch_size_huge",
        "bad",
        "batch_size given in tokens instead of rows",
        ("$.training.batch_size",),
        spec={"training": {"epochs": 1, "batch_size": 10**9, "learning_rate": 1e-3}},
    ),
    Case(
        "yaml_alias_bomb",
        "bad",
        "a 'billion laughs' YAML spec",
        ("aliases",),
        spec_text=valid_spec_text("\n" + alias_bomb()),
        hostile=True,
    ),
    Case(
        "yaml_deep_nesting",
        "bad",
        "a YAML spec nested 10,000 flow lists deep",
        ("nested",),
        spec_text=valid_spec_text("x: " + "[" * 10_000 + "]" * 10_000 + "\n"),
        hostile=True,
    ),
    Case(
        "json_spec_deep_nesting",
        "bad",
        "a JSON spec nested 100,000 levels deep",
        ("nested",),
        spec_text='{"name": "tiny", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        spec_name="spec.json",
        hostile=True,
    ),
    Case(
        "set_alias_bomb",
        "bad",
        "a --set value carrying an alias bomb",
        ("--set", "aliases"),
        args=("--set", "description=" + alias_bomb().replace("\n", "\n")),
        hostile=True,
    ),
    Case(
        "set_deep_value",
        "bad",
        "a --set value nested 50 lists deep",
        ("--set", "nested"),
        args=("--set", "training.epochs=" + "[" * 50 + "]" * 50),
    ),
    Case(
        "spec_too_large",
        "bad",
        "a 5 MB generated spec",
        ("bytes",),
        spec_text=valid_spec_text("# " + "x" * 5_000_000 + "\n"),
    ),
    Case(
        "target_modules_the_model_lacks",
        "bad",
        "LoRA target_modules copied from a Mistral recipe (gate_proj is there, w1 is not)",
        ("$.method.lora.target_modules", "w1"),
        spec={"method": {"kind": "lora", "lora": {"target_modules": ["q_proj", "w1"]}}},
    ),
    Case(
        "train_rows_above_the_split",
        "bad",
        "training.train_rows set for the full data set, above what the train split holds",
        ("$.training.train_rows", "28"),
        spec={"training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "train_rows": 1000}},
    ),
    Case(
        "fsdp_cpu_and_bad_data_at_once",
        "bad",
        "a spec with a strategy, a method setting and a data row wrong: all three in one message",
        ("$.trainer.strategy", "freeze", "row 4"),
        spec={
            "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "strategy": "fsdp"},
            "method": {"kind": "freeze", "freeze": {"blocks": 99}},
        },
        files={"data/sentiment.jsonl": with_rows({3: {"sentiment": "meh"}})},
    ),
]

BAD_TEMPLATES = [
    template_case(
        "template_include",
        "a template copied from a project that used {% include %}",
        '{% include "header.jinja" %}{{ text }}\n|||\n{{ sentiment }}',
        ("t.jinja", "line 1", "include"),
    ),
    template_case(
        "template_import",
        "macros imported from another file",
        '{% import "macros.jinja" as m %}{{ text }}\n|||\n{{ sentiment }}',
        ("t.jinja", "import"),
    ),
    template_case(
        "template_from_import",
        "one macro imported by name",
        '{% from "m.jinja" import f %}{{ text }}\n|||\n{{ sentiment }}',
        ("t.jinja", "import"),
    ),
    template_case(
        "template_extends", "a template inheriting a base layout", '{% extends "base.jinja" %}', ("t.jinja", "extends")
    ),
    template_case(
        "template_add_to_string",
        "a numeric template used on a text column",
        "{{ text + 1 }}\n|||\n{{ sentiment }}",
        ("rows 1, 2, 3", "t.jinja"),
    ),
    template_case(
        "template_divide_by_zero",
        "a ratio of two fields, one of them zero",
        "{{ 1 / 0 }} {{ text }}\n|||\n{{ sentiment }}",
        ("rows 1, 2, 3", "t.jinja"),
    ),
    template_case(
        "template_recursive_macro",
        "a macro that calls itself without a base case",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}\n|||\n{{ sentiment }}",
        ("t.jinja", "recurs"),
    ),
    template_case(
        "template_fan_out_macro",
        "a recursive macro with two calls per level (2^60 calls)",
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}{{ text }}\n|||\n{{ sentiment }}",
        ("t.jinja", "template_seconds"),
    ),
    template_case(
        "template_huge_range",
        "range(10**9) in a loop",
        "{% for i in range(10**9) %}{% endfor %}{{ text }}\n|||\n{{ sentiment }}",
        ("t.jinja", "range"),
    ),
    template_case(
        "template_nested_loops",
        "nested loops over 100,000 items each, no output",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ text }}\n|||\n{{ sentiment }}",
        ("t.jinja", "template_seconds"),
    ),
    template_case(
        "template_output_loop",
        "a loop printing 10^10 characters",
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}{{ text }}\n|||\n{{ sentiment }}",
        ("t.jinja", "limits.template"),
    ),
    template_case(
        "template_string_times_huge",
        "'x' * 10**10",
        "{{ 'x' * 10**10 }}{{ text }}\n|||\n{{ sentiment }}",
        ("t.jinja", "template_chars"),
    ),
    template_case(
        "template_power_tower",
        "10 ** (10 ** 10)",
        "{{ 10 ** (10 ** 10) }}{{ text }}\n|||\n{{ sentiment }}",
        ("t.jinja", "row 1", "digits"),
    ),
    template_case(
        "template_doubling_concat",
        "a namespace string doubled 64 times",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}{{ text }}\n|||\n{{ sentiment }}",
        ("t.jinja", "template_chars"),
    ),
    template_case(
        "template_center_huge",
        "a filter padding to 10**10 characters",
        "{{ text | center(10**10) }}\n|||\n{{ sentiment }}",
        ("t.jinja", "template_chars"),
    ),
    template_case(
        "template_format_width",
        "a format string with a 10-billion width",
        "{{ '{:>10000000000}'.format(text) }}\n|||\n{{ sentiment }}",
        ("t.jinja", "template_chars"),
    ),
    template_case(
        "template_sandbox_escape",
        "a template reaching for Python internals",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ text }}\n|||\n{{ sentiment }}",
        ("t.jinja", "rows 1, 2, 3"),
    ),
    template_case(
        "template_syntax",
        "an unclosed block",
        "{% if text %}{{ text }}\n|||\n{{ sentiment }}",
        ("t.jinja", "line"),
        hostile=False,
    ),
]

BAD_RUN_FOLDERS = [
    Case(
        "experiment_folder_alias_bomb",
        "bad",
        "an experiment folder whose spec.yaml was replaced by a 'billion laughs' file",
        ("spec.yaml", "aliases"),
        files={
            "exp/spec.yaml": valid_spec_text("\n" + alias_bomb()),
            "exp/experiment.json": '{"runs": {"lora": "complete"}}',
            "exp/variants/lora/report.json": "{}",
        },
        command=("compare", "{root}/exp"),
        hostile=True,
    ),
    Case(
        "resume_folder_alias_bomb",
        "bad",
        "--resume of a run folder whose spec.yaml is a 'billion laughs' file",
        ("spec.yaml", "aliases"),
        files={"old/spec.yaml": valid_spec_text("\n" + alias_bomb()), "old/checkpoints/last.ckpt": empty_checkpoint},
        command=("run", "{spec}", "--resume", "{root}/old"),
        hostile=True,
    ),
]

CASES = GOOD + BAD_DATA + BAD_SPECS + BAD_TEMPLATES + BAD_RUN_FOLDERS
BAD = [c for c in CASES if c.kind == "bad"]
