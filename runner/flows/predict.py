"""`runner predict RUN_DIR --input FILE|-`: a finished run's template and trained model applied
to new rows, from the run folder alone.

The flow, top to bottom: read the run's inference.json -> read the rows (JSONL, CSV, TSV, JSON
or Parquet; a file or standard input) -> render each through the run's own template copy (a row
may lack the label: only the prompt is needed) and fit it to max_length as the run did -> load
the model from model/ -> score every label (classification) or generate (free text) through the
same `Evaluator.answer` that scored the run's test split -> one JSON line per row.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path

import jinja2
import jinja2.meta
import torch

from runner.data.encode import Encoder
from runner.data.examples import Example, TaskData, render_example
from runner.data.read import read_rows
from runner.data.sandbox import template_environment
from runner.data.template_bounds import TemplateProblem
from runner.data.templates import load_template
from runner.data.truncation import Fitter
from runner.errors import DataError, RunnerError
from runner.evaluation.evaluator import Answers, Evaluator
from runner.limits import DEFAULT_LIMITS, Limits, limits_from
from runner.model.load import merged_adapters
from runner.model.precision import autocast_dtype
from runner.rundir.folder import writing
from runner.rundir.model_files import load_run_model, read_inference
from runner.spec.types import DataSource, TaskSpec
from runner.terminal import printable

FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


MISSING = "\x00runner-missing\x00"  # stands in for fields a row lacks, to see where they land


def predict(
    run_dir: Path, source: str, output: Path | None, task_name: str | None = None, fmt: str | None = None
) -> dict:
    """Write one prediction per input row (JSON lines) to `output` or stdout; returns a summary."""
    inference = read_inference(run_dir)
    task_name = task_name or inference["primary_task"]
    if task_name not in inference["tasks"]:
        tasks = ", ".join(printable(name, 60) for name in inference["tasks"])
        raise RunnerError(f"--task {task_name!r}: this run's tasks are {tasks}.")
    entry = inference["tasks"][task_name]
    limits = limits_from(inference.get("limits"))
    with _input_file(source, fmt) as (path, fmt):
        rows = read_rows(DataSource(path=path, format=fmt), limits)
    task = TaskSpec(
        name=task_name,
        data=DataSource(path=Path(source)),
        template=Path(entry["template"]),  # resolved inside the run folder by read_inference
        split=None,
        labels=tuple(entry["labels"]) if entry["labels"] else None,
        label_map=entry["label_map"],
        id_field=entry["id_field"],
    )
    examples, gold = examples_of(task, rows, source if source != "-" else "standard input", limits)
    answers = _answers(run_dir, inference, task, examples, limits)
    return _write_predictions(task, examples, gold, answers, output)


def _answers(run_dir: Path, inference: dict, task: TaskSpec, examples: list[Example], limits: Limits) -> Answers:
    """Load the run's model and answer every example with the settings inference.json recorded.

    The examples are shortened in place first, as the run shortened its own rows.
    """
    entry = inference["tasks"][task.name]
    model, tokenizer = load_run_model(run_dir, inference)
    encoder = Encoder(tokenizer, inference["max_length"], inference["chat_template"])
    fitter = Fitter(encoder, inference["truncation"], limits)
    data = TaskData(task, train=[], val=[], test=examples, label_eos=entry["label_eos"])
    fitter.fit_task(data)  # shortened as the run shortened its own rows (model.truncation)
    evaluator = Evaluator(
        model,
        encoder,
        inference["batch_size"],
        inference["max_new_tokens"],
        torch.device("cuda" if torch.cuda.is_available() else "cpu"),
        autocast_dtype(inference["precision"]),
        fitter=fitter,
        phase=f"predict {task.name}",
    )
    evaluator.model = model.to(evaluator.device)
    with merged_adapters(evaluator.model):  # as the run scored its test split
        return evaluator.answer(data, examples)


def _write_predictions(
    task: TaskSpec, examples: list[Example], gold: list[str | None], answers: Answers, output: Path | None
) -> dict:
    """One JSON line per example; the summary counts rows, rows with a gold label, and accuracy on those.

    `accuracy` is None when no row carried a usable label.
    """
    correct = []
    with _output(output) as out:
        for i, example in enumerate(examples):
            record = _prediction_record(task, example, answers, i)
            if gold[i] is not None:
                record["gold"] = gold[i]
                record["correct"] = record["prediction"] == gold[i]
                correct.append(record["correct"])
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {
        "rows": len(examples),
        "with_gold": len(correct),
        "accuracy": sum(correct) / len(correct) if correct else None,
    }


def _prediction_record(task: TaskSpec, example: Example, answers: Answers, i: int) -> dict:
    """Example `i`'s prediction: the best label with every label's probability and log-probability
    (classification), or the generated text; `truncated` if its prompt was shortened anywhere."""
    record = {"row": example.row, **({"id": example.id} if example.id is not None else {})}
    if task.is_classification:
        logprobs = answers.label_logprobs[i]
        probabilities = torch.softmax(logprobs, dim=0)
        best = int(logprobs.argmax())
        record["prediction"] = task.labels[best]
        record["probabilities"] = {label: round(float(p), 6) for label, p in zip(task.labels, probabilities)}
        record["label_logprobs"] = {label: round(float(s), 4) for label, s in zip(task.labels, logprobs)}
    else:
        record["prediction"] = answers.texts[i]
    record["truncated"] = bool(example.truncated or answers.cut[i])
    return record


def examples_of(
    task: TaskSpec, rows: list[dict], where: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Example], list[str | None]]:
    """Each row rendered through the task's template. The completion is optional: fields that
    only the completion uses may be missing. Every bad row is named at once."""
    template = load_template(task.template, limits)
    variables = jinja2.meta.find_undeclared_variables(template_environment().parse(task.template.read_text()))
    examples, gold, problems = [], [], []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            problems.append(f"row {number}: expected an object of fields, got {type(row).__name__}.")
            continue
        present = {k: v for k, v in row.items() if v is not None}
        missing = sorted(v for v in variables if v not in present)
        try:
            prompt, completion = render_example(template, {**present, **dict.fromkeys(missing, MISSING)}, limits)
        except TemplateProblem as exc:
            problems.append(f"row {number}: {exc}")
            if exc.fatal:
                break
            continue
        if MISSING in prompt:
            used = [name for name in missing if _shows_in_prompt(template, present, missing, name)]
            problems.append(
                f"row {number}: no {', '.join(map(repr, used or missing))} field, which the prompt uses; "
                f"the row's fields are: {', '.join(sorted(present)) or 'none'}."
            )
            continue
        label = None if MISSING in completion else completion
        if label is not None and task.label_map is not None:
            label = task.label_map.get(label, label)
        if task.labels is not None and label not in task.labels:
            label = None  # no usable gold label: predicted all the same
        row_id = str(row[task.id_field]) if task.id_field and row.get(task.id_field) is not None else None
        filled = {**present, **dict.fromkeys(missing, MISSING)}  # truncation re-renders from these
        examples.append(Example(task.name, number, prompt, completion, None, row_id, filled))
        gold.append(label)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more bad rows."] if len(problems) > 20 else [])
        raise DataError(f"{where} (template {task.template.name})", shown, total=len(problems))
    if not examples:
        raise DataError(where, ["no rows to predict."])
    return examples, gold


def _shows_in_prompt(template: jinja2.Template, present: dict, missing: list[str], name: str) -> bool:
    fields = {**present, **{m: "" for m in missing}, name: MISSING}
    try:
        prompt, _ = render_example(template, fields)
    except ValueError:
        return True
    return MISSING in prompt


@contextlib.contextmanager
def _input_file(source: str, fmt: str | None):
    """(path, format) of the rows: a file, or standard input kept in a temporary file (read as
    JSON lines when it starts with '{', else as CSV, unless --format says)."""
    if source != "-":
        path = Path(source)
        if not path.is_file():
            what = "a folder, not a file" if path.is_dir() else "no such file"
            raise DataError(f"--input {source}", [f"{what}; give a JSONL, CSV, TSV, JSON or Parquet file, or '-'."])
        fmt = fmt or FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(
                f"--input {source}",
                [f"unknown format; name it with --format ({', '.join(sorted(set(FORMATS.values())))})."],
            )
        yield path, fmt
        return
    text = sys.stdin.read()
    if not text.strip():
        raise DataError("--input -", ["standard input is empty; pipe rows in (JSON lines or CSV)."])
    fmt = fmt or ("jsonl" if text.lstrip().startswith("{") else "csv")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"stdin.{fmt}"
        path.write_text(text)
        yield path, fmt


@contextlib.contextmanager
def _output(output: Path | None):
    if output is None:
        yield sys.stdout
        return
    partial = output.with_name(output.name + ".partial")  # never a half-written predictions file
    try:
        with writing(output, partial), open(partial, "w") as f:
            yield f
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    with writing(output, partial):
        partial.replace(output)
