"""Data checks run on every task before any model loads: duplicates, leaks, conflicts,
imbalance, truncation, short completions, prefix labels.

A row's *input* is what the model is asked about: the values of the fields the template shows
in the prompt and not in the completion (found by rendering, `data.prompt_fields`), case-folded
with whitespace collapsed. Comparing inputs rather than rendered prompts finds leaks across tasks
whose templates word the question differently. Leaks also compare the source's `group_by` value.

Each finding has a severity: `fail` stops the run (exit 2, rows named, no run folder), `warn`
goes to the report and the terminal, `info` says what runner did about it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from runner.data.encode import Encoder
from runner.data.examples import Example, TaskData, prompt_fields
from runner.data.templates import load_template
from runner.data.truncation import prefix_labels
from runner.errors import DataError
from runner.spec.types import DataChecksSpec

ROWS_SHOWN = 8


SPLIT_ORDER = ("train", "val", "test")


@dataclass
class Finding:
    check: str
    severity: str  # fail | warn | info
    tasks: list[str]
    message: str
    rows: list[str] = field(default_factory=list)  # e.g. "urgency test row 12"

    def line(self) -> str:
        rows = (
            f" ({', '.join(self.rows[:ROWS_SHOWN])}{' …' if len(self.rows) > ROWS_SHOWN else ''})" if self.rows else ""
        )
        return f"[{self.severity}] {self.check}: {self.message}{rows}"


def run_checks(tasks: list[TaskData], encoder: Encoder, settings: DataChecksSpec) -> list[Finding]:
    """Every check that is on, with severities after `data_checks.on_issue`."""
    keys = {t.task.name: input_keys(t) for t in tasks}
    found: list[Finding] = []
    for check, finder in CHECKS.items():
        severity = settings.severity(check)
        if severity == "off":
            continue
        for finding in finder(tasks, keys, encoder, settings):
            finding.severity = severity
            found.append(finding)
    for t in tasks:
        for a, b in prefix_labels(encoder, t.task.labels) if t.task.is_classification else []:
            found.append(
                Finding(
                    "prefix_labels",
                    "info",
                    [t.task.name],
                    f"task {t.task.name!r}: the tokens of label {a!r} begin those of {b!r}; every label is trained "
                    "and scored with the end token after it, so either can win.",
                )
            )
    return found


def raise_failures(findings: list[Finding], source: str) -> None:
    """Stop the run on any finding of severity `fail`, all of them in one DataError; warnings pass."""
    failed = [f for f in findings if f.severity == "fail"]
    if failed:
        raise DataError(
            f"{source}: data checks",
            [f.line() for f in failed],
            footer="Fix the data, or set data_checks.<check>: warn (or off) in the spec to run anyway; "
            "`runner preview SPEC` shows every check.",
        )


def as_report(findings: list[Finding], task: str) -> list[dict]:
    """A task's findings for report.json (tasks.<name>.data.checks)."""
    return [asdict(f) for f in findings if task in f.tasks]


def prompt_variables(data: TaskData) -> list[str]:
    """The row fields the prompt shows and the completion does not (judged on one row)."""
    return prompt_fields(load_template(data.task.template), data.examples()[0].fields)


def normalize(text: str) -> str:
    """Case-folded, whitespace collapsed: two inputs that differ only in spacing or case compare equal."""
    return " ".join(str(text).split()).casefold()


def input_keys(data: TaskData) -> dict[int, str]:
    """id(example) -> its normalised input: the prompt variables' values."""
    variables = prompt_variables(data)
    return {id(e): " \x1f ".join(normalize(e.fields.get(v, "")) for v in variables) for e in data.examples()}


def group_keys(data: TaskData) -> dict[int, str]:
    """id(example) -> its group_by value, for the sources that name one."""
    group = data.task.data.group_by
    if group is None:
        return {}
    return {id(e): f"group:{normalize(e.fields[group])}" for e in data.examples() if e.fields.get(group) is not None}


def _where(t: TaskData, split: str, e: Example) -> str:
    return f"{t.task.name} {split} row {e.row}"


def _by_split(t: TaskData):
    for split in SPLIT_ORDER:
        for e in t.splits()[split]:
            yield split, e


def find_duplicates(tasks, keys, encoder, settings) -> list[Finding]:
    """Rows whose input and completion both repeat an earlier row of the same task, any split.

    Findings carry severity ""; run_checks fills it in from the spec.
    """
    out = []
    for t in tasks:
        seen: dict[tuple, str] = {}
        rows = []
        for split, e in _by_split(t):
            key = (keys[t.task.name][id(e)], e.completion)
            if key in seen:
                rows.append(f"{_where(t, split, e)} = {seen[key]}")
            else:
                seen[key] = _where(t, split, e)
        if rows:
            out.append(
                Finding("duplicates", "", [t.task.name], f"{len(rows)} duplicate rows in task {t.task.name!r}", rows)
            )
    return out


def find_leaks(tasks, keys, encoder, settings) -> list[Finding]:
    """The same input — or the same group_by value — in train (or val) and in a later split,
    within a task or across tasks."""
    groups = {t.task.name: group_keys(t) for t in tasks}

    def keys_of(t, e):
        return [k for k in (keys[t.task.name][id(e)], groups[t.task.name].get(id(e))) if k is not None]

    first_seen: dict[str, tuple[int, str]] = {}  # input or group -> (split rank, where)
    for rank, split in enumerate(SPLIT_ORDER):
        for t in tasks:
            for e in t.splits()[split]:
                for key in keys_of(t, e):
                    first_seen.setdefault(key, (rank, _where(t, split, e)))
    pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
    involved: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rank, split in enumerate(SPLIT_ORDER):
        for t in tasks:
            for e in t.splits()[split]:
                earlier = min(first_seen[key] for key in keys_of(t, e))
                if earlier[0] < rank:
                    kind = (SPLIT_ORDER[earlier[0]], split)
                    pairs[kind].append(f"{_where(t, split, e)} = {earlier[1]}")
                    involved[kind] |= {t.task.name, earlier[1].split(" ")[0]}
    return [
        Finding(
            "leaks",
            "",
            sorted(involved[kind]),
            f"{len(rows)} {kind[1]} rows have the same input{' or group' if any(groups.values()) else ''} "
            f"as a {kind[0]} row",
            rows,
        )
        for kind, rows in pairs.items()
    ]


def find_near_duplicates(tasks, keys, encoder, settings) -> list[Finding]:
    """Inputs equal once punctuation, digits and spacing are ignored, in different splits."""
    loose = lambda text: re.sub(r"[\W\d_]+", "", text)  # noqa: E731
    first: dict[str, tuple[str, str, str]] = {}
    rows, involved = [], set()
    for split in SPLIT_ORDER:
        for t in tasks:
            for e in t.splits()[split]:
                exact = keys[t.task.name][id(e)]
                key = loose(exact)
                if not key:
                    continue
                if key in first and first[key][0] != split and first[key][2] != exact:
                    rows.append(f"{_where(t, split, e)} ~ {first[key][1]}")
                    involved |= {t.task.name, first[key][1].split(" ")[0]}
                first.setdefault(key, (split, _where(t, split, e), exact))
    if not rows:
        return []
    return [Finding("near_duplicates", "", sorted(involved), f"{len(rows)} near-duplicate inputs across splits", rows)]


def find_conflicts(tasks, keys, encoder, settings) -> list[Finding]:
    """One input with different completions within a task: the model is taught both answers."""
    out = []
    for t in tasks:
        answers: dict[str, dict[str, str]] = defaultdict(dict)
        for split, e in _by_split(t):
            answers[keys[t.task.name][id(e)]].setdefault(e.completion, _where(t, split, e))
        rows = [" vs ".join(f"{where} ({c!r})" for c, where in a.items()) for a in answers.values() if len(a) > 1]
        if rows:
            out.append(
                Finding(
                    "conflicts",
                    "",
                    [t.task.name],
                    f"{len(rows)} inputs with different completions in {t.task.name!r}",
                    rows,
                )
            )
    return out


def find_imbalance(tasks, keys, encoder, settings) -> list[Finding]:
    """Classification tasks whose train split lacks a label, or whose label counts differ more than
    `data_checks.imbalance_ratio` (most frequent over rarest).
    """
    out = []
    for t in tasks:
        if not t.task.is_classification:
            continue
        counts = Counter(e.completion for e in t.train)
        missing = [label for label in t.task.labels if counts[label] == 0]
        present = [counts[label] for label in t.task.labels if counts[label]]
        ratio = max(present) / min(present)
        if missing:
            message = f"task {t.task.name!r}: no train rows for {', '.join(map(repr, missing))}; it cannot be learned"
        elif ratio > settings.imbalance_ratio:
            rare = min(t.task.labels, key=lambda label: counts[label])
            message = (
                f"task {t.task.name!r}: the most frequent train label has {ratio:.1f}x the rows of the rarest "
                f"({rare!r}, {counts[rare]} rows), more than imbalance_ratio {settings.imbalance_ratio:g}"
            )
        else:
            continue
        out.append(Finding("imbalance", "", [t.task.name], message))
    return out


def find_truncation(tasks, keys, encoder, settings) -> list[Finding]:
    """Tasks where more than `data_checks.truncation_share` of a split's rows were shortened to fit
    model.max_length; every shortened row is named.
    """
    out = []
    for t in tasks:
        counts = t.truncated_counts()
        over = {s: n for s, n in counts.items() if n and n / max(len(t.splits()[s]), 1) > settings.truncation_share}
        if over:
            shares = ", ".join(f"{s} {n} of {len(t.splits()[s])}" for s, n in over.items())
            rows = [_where(t, s, e) for s, e in _by_split(t) if e.truncated]
            out.append(
                Finding(
                    "truncation",
                    "",
                    [t.task.name],
                    f"task {t.task.name!r}: rows shortened to fit model.max_length {encoder.max_length}: {shares}",
                    rows,
                )
            )
    return out


def find_short_completions(tasks, keys, encoder, settings) -> list[Finding]:
    """Free-text completions of one token or less, counted without the end token; classification is exempt."""
    out = []
    for t in tasks:
        if t.task.is_classification:
            continue
        rows = [
            _where(t, s, e) for s, e in _by_split(t) if len(encoder.completion_ids(e.completion, add_eos=False)) <= 1
        ]
        if rows:
            out.append(
                Finding(
                    "short_completions",
                    "",
                    [t.task.name],
                    f"task {t.task.name!r}: {len(rows)} free-text completions of one token or less",
                    rows,
                )
            )
    return out


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def find_empty_fields(tasks, keys, encoder, settings) -> list[Finding]:
    """Prompt fields left empty in some rows (an empty CSV cell renders as nothing): real exports
    miss a column for part of their rows, and the model then sees a blank where the others had text."""
    out = []
    for t in tasks:
        rows = list(_by_split(t))
        for variable in prompt_variables(t):
            empty = [_where(t, s, e) for s, e in rows if _blank(e.fields.get(variable))]
            if empty:
                out.append(
                    Finding(
                        "empty_fields",
                        "",
                        [t.task.name],
                        f"task {t.task.name!r}: field {variable!r} is empty in {len(empty)} of {len(rows)} rows; "
                        "the prompt shows it blank there",
                        empty,
                    )
                )
    return out


# check name (a data_checks key) -> finder; a new check is one entry here and one in the schema
CHECKS = {
    "duplicates": find_duplicates,
    "leaks": find_leaks,
    "near_duplicates": find_near_duplicates,
    "conflicts": find_conflicts,
    "imbalance": find_imbalance,
    "truncation": find_truncation,
    "short_completions": find_short_completions,
    "empty_fields": find_empty_fields,
}
