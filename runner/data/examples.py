"""Rows to examples: each task's rows rendered through its template into prompt/completion
pairs and split — the prepared data every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import jinja2

from runner.data.template_bounds import TemplateProblem
from runner.data.templates import load_template, render
from runner.errors import DataError
from runner.limits import DEFAULT_LIMITS, Limits
from runner.spec.types import TaskSpec

SEPARATOR = "|||"


MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class Example:
    """One templated row. `row` is its 1-based number in its source file (also after
    sampling); `fields` is the row itself, kept so that truncation can re-render it."""

    task: str
    row: int
    prompt: str
    completion: str
    label: int | None = None
    id: str | None = None
    fields: dict = field(default_factory=dict, compare=False, repr=False)
    truncated: bool = False


@dataclass
class TaskData:
    """A task's examples, split into train/val/test, and where each split's rows came from."""

    task: TaskSpec
    train: list[Example]
    val: list[Example]
    test: list[Example]
    rows_read: int = 0
    files: dict[str, str] = field(default_factory=dict)  # split -> the file its row numbers refer to
    label_eos: bool = False  # labels end with the end token (set when one label's tokens begin another's)

    def splits(self) -> dict[str, list[Example]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Rows per split and label (classification tasks)."""
        if not self.task.is_classification:
            return {}
        return {
            name: {label: sum(e.label == i for e in rows) for i, label in enumerate(self.task.labels)}
            for name, rows in self.splits().items()
        }

    def examples(self) -> list[Example]:
        """Every example of the task: train, val, then test."""
        return self.train + self.val + self.test

    @property
    def completion_eos(self) -> bool:
        """Whether completions end with the end token: free text (generation learns to stop), and
        labels of a set where one label's tokens begin another's."""
        return self.label_eos or not self.task.is_classification

    def truncated_counts(self) -> dict[str, int]:
        return {name: sum(e.truncated for e in rows) for name, rows in self.splits().items()}


def render_example(template: jinja2.Template, row: dict, limits: Limits = DEFAULT_LIMITS) -> tuple[str, str]:
    """Render a row to (prompt, completion); raise TemplateProblem (a ValueError) with a
    user-facing reason. Null fields count as missing (`{{ x | default('') }}` shows them empty),
    and the render is bounded in time and size (runner.data.template_bounds)."""
    text = render(template, row, limits)
    prompt, sep, completion = text.partition(SEPARATOR)
    if not sep:
        raise TemplateProblem(f"the template rendered no '{SEPARATOR}' between prompt and completion.")
    prompt, completion = prompt.strip(), completion.strip()
    if not completion:
        empty = [k for k, v in row.items() if v == ""]
        hint = f" (empty cells in this row: {', '.join(map(repr, empty[:5]))})" if empty else ""
        raise TemplateProblem(f"the completion is empty{hint}; check the completion field of this row.")
    if not prompt:
        raise TemplateProblem("the prompt is empty.")
    return prompt, completion


def grouped_rows(problems: list[tuple[int, str]], shown: int = 5) -> list[str]:
    """One line per distinct problem, naming its rows: a template error on every row is one line
    ("rows 1, 2, 3, 4, 5 and 35 more: ...") rather than forty."""
    rows: dict[str, list[int]] = {}
    for number, message in problems:
        rows.setdefault(message, []).append(number)
    lines = []
    for message, numbers in rows.items():
        if len(numbers) == 1:
            lines.append(f"row {numbers[0]}: {message}")
            continue
        more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
        lines.append(f"rows {', '.join(map(str, numbers[:shown]))}{more}: {message}")
    return lines


def prompt_fields(template: jinja2.Template, row: dict) -> list[str]:
    """The row fields a template shows in the prompt and not in the completion: each field is
    replaced by a marker and the row rendered to see where the marker lands."""
    marker = "\x00runner-field\x00"
    found = []
    for name in sorted(row):
        try:
            prompt, completion = render_example(template, {**row, name: marker})
        except (ValueError, TypeError):  # a field the template computes with: not plain input text
            continue
        if marker in prompt and marker not in completion:
            found.append(name)
    return found


def build_examples(
    task: TaskSpec, rows: list[tuple[int, dict]], where: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> list[Example]:
    """Template every (row number, row); collect every bad row and raise once, naming file, row and reason.
    A row past a resource limit (time, size, recursion) stops at once: every row would pay it again."""
    template = load_template(task.template, limits)
    examples, problems = [], []
    labels = {label: i for i, label in enumerate(task.labels or ())}
    for number, row in rows:
        try:
            prompt, completion = render_example(template, row, limits)
        except TemplateProblem as exc:
            problems.append((number, str(exc)))
            if exc.fatal:
                break
            continue
        if task.label_map is not None:
            completion = task.label_map.get(completion, completion)
        label = None
        if task.is_classification:
            if completion not in labels:
                fix = "add it to tasks[].label_map" if task.label_map is not None else "add the label to tasks[].labels"
                fix = f"fix the row or {fix}"
                near = [label for label in labels if label.casefold() == completion.strip().casefold()]
                if near:
                    fix = f"did you mean {near[0]!r}? Labels match exactly, case included; {fix}"
                elif completion.strip().lstrip("-").isdigit() and task.label_map is None:
                    fix = f"numeric labels become words with tasks[].label_map, e.g. {{{completion}: {task.labels[0]}}}"
                problems.append(
                    (
                        number,
                        f"completion {completion!r} is not one of the task's labels ({', '.join(task.labels)}); {fix}.",
                    )
                )
                continue
            label = labels[completion]
        row_id = None
        if task.id_field is not None:
            if row.get(task.id_field) is None:
                problems.append((number, f"no {task.id_field!r} field (tasks[].id_field); every row needs one."))
                continue
            row_id = str(row[task.id_field])
        examples.append(Example(task.name, number, prompt, completion, label, row_id, row))
    if problems:
        lines = grouped_rows(problems)
        shown = lines[:MAX_PROBLEMS_SHOWN]
        if len(lines) > len(shown):
            shown.append(f"... and {len(lines) - len(shown)} more problems.")
        raise DataError(
            f"{where or task.data.describe()} (task {task.name!r}, template {task.template.name})",
            shown,
            total=len(problems),
        )
    return examples


def rows_text(numbers: list[int], shown: int = 10) -> str:
    """Row numbers for a message, at most `shown` of them, then how many more ("1, 2 and 8 more")."""
    text = ", ".join(map(str, numbers[:shown]))
    return text + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")
