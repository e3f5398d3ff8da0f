"""A run's inputs, everything before its model: the data read, templated and split once per
source, the tokenizer, rows fitted to max_length, the data checks and the probes. `runner run`,
`runner eval` and `runner preview` share this one code path; it loads no weights (and no
Lightning), so `runner preview` answers in seconds.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runner.data import checks
from runner.data.encode import Encoder
from runner.data.examples import Example, TaskData
from runner.data.prepare import prepare_data, prepare_replay
from runner.data.truncation import Fitter, fit_tasks
from runner.errors import ProblemsError, RunnerError, SpecError, collect, raise_all
from runner.model.load import load_tokenizer, model_config
from runner.model.methods import method_problems
from runner.spec.types import Spec

if TYPE_CHECKING:
    from runner.evaluation.probes import ProbeData

LOSS_OPEN, LOSS_CLOSE = "⟦", "⟧"  # around the tokens that carry loss (preview and plan show them)


@dataclass
class Inputs:
    """Everything a run needs before its model: checked data, probes, tokenizer and encoder."""

    tasks: list[TaskData]
    probes: list[ProbeData]
    encoder: Encoder
    fitter: Fitter
    findings: list[checks.Finding]
    seconds: float = 0.0  # wall time to prepare all of this
    replay: list[Example] = field(default_factory=list)  # general rows mixed into training (spec.replay)


def prepare_inputs(spec: Spec, with_probes: bool = True, enforce_checks: bool = True) -> Inputs:
    """Data (read, templated, split), the tokenizer, rows fitted to max_length, data checks and
    probes. Raises one error listing every problem found (exit 2), before any run folder: a bad
    data file does not hide a bad probe, model or method setting."""
    started = time.perf_counter()
    where = str(spec.source_path or spec.name)
    errors: list[ProblemsError] = []
    tasks = collect(errors, prepare_data, spec)
    if tasks is not None:
        collect(errors, check_train_rows, spec, tasks)
    probes = []
    if with_probes:
        from runner.evaluation.probes import load_probe  # scoring code (and Lightning) only when probes are wanted

        probes = [collect(errors, load_probe, p, spec.limits) for p in spec.evaluation.forgetting]
    problems = method_problems(spec.method, model_config(spec.model.source))
    if problems:
        errors.append(SpecError(where, problems))
    tokenizer = collect(errors, _tokenizer, spec)
    replay = collect(errors, prepare_replay, spec.replay, spec.limits) if spec.replay is not None else []
    if tasks is None or tokenizer is None:
        raise_all(errors)
    encoder = Encoder(tokenizer, spec.model.max_length, spec.model.chat_template)
    fitter = collect(errors, fit_tasks, tasks, encoder, spec.model.truncation, spec.limits)
    findings = checks.run_checks(tasks, encoder, spec.data_checks) if fitter is not None else []
    if enforce_checks:
        collect(errors, checks.raise_failures, findings, where)
    raise_all(errors)
    return Inputs(tasks, probes, encoder, fitter, findings, time.perf_counter() - started, replay or [])


def _tokenizer(spec: Spec):
    """The model's tokenizer; one that cannot be loaded is a spec problem (the model.source)."""
    try:
        return load_tokenizer(spec.model.tokenizer or spec.model.source)
    except RunnerError as exc:
        message = (
            exc.message if spec.model.tokenizer is None else exc.message.replace("model.source", "model.tokenizer")
        )
        raise SpecError(str(spec.source_path or spec.name), [f"$.{message}"]) from None


def check_train_rows(spec: Spec, tasks: list[TaskData]) -> None:
    """training.train_rows (or a learning-curve point) cannot ask for more rows than the
    primary task's train split has: the run would silently train on fewer."""
    wanted = spec.training.train_rows
    primary = next(t for t in tasks if t.task.name == spec.primary_task)
    if wanted is not None and wanted > len(primary.train):
        where = (
            "$.curve.train_rows"
            if spec.run is not None and spec.run.train_rows is not None
            else "$.training.train_rows"
        )
        raise SpecError(
            str(spec.source_path or spec.name),
            [
                f"{where}: {wanted} rows, but {spec.primary_task!r}'s train split has {len(primary.train)}; "
                f"use at most {len(primary.train)} (or 'all' in a curve)."
            ],
        )


def print_findings(findings: list[checks.Finding]) -> None:
    """Data-check findings on stderr, so they never mix into output a script reads from stdout."""
    for finding in findings:
        print(f"data check {finding.line()}", file=sys.stderr)


def summary_text(inputs: Inputs, spec: Spec) -> str:
    """Per task and split: rows and token lengths (min, median, p90, max), shortened rows, label
    counts for classification; then every data-check finding.
    """
    lines = [f"Tokens per row (prompt + completion, as trained; {LOSS_OPEN}…{LOSS_CLOSE} marks the loss tokens above):"]
    for data in inputs.tasks:
        lines.append(f"task {data.task.name}: {data.task.data.describe()}")
        for name, examples in data.splits().items():
            lengths = [len(inputs.encoder.encode(e, data.completion_eos)["input_ids"]) for e in examples]
            truncated = sum(e.truncated for e in examples)
            lines.append(
                f"  {name:<5} {len(examples):>6} rows  tokens min {min(lengths)}, median {statistics.median(lengths):g}, "
                f"p90 {percentile(lengths, 0.9)}, max {max(lengths)}; shortened to fit "
                f"{spec.model.max_length}: {truncated}"
            )
        if data.task.is_classification:
            counts = data.label_counts()
            lines.append(
                "  labels "
                + "; ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for s, c in counts.items())
            )
    lines.append("")
    lines.append("Data checks:" if inputs.findings else "Data checks: nothing found.")
    lines += [f"  {finding.line()}" for finding in inputs.findings]
    return "\n".join(lines)


def percentile(values: list[int], q: float) -> int:
    """The `q` quantile as the sorted value at index int(q * n): no interpolation, always one of the values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
