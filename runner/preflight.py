"""One pre-flight: every problem `runner run` would meet before it makes a run folder, found
at once and raised once (litgpt's `validate_args`), for `validate`, `preview`, `plan`, `run`
and `eval` alike — so that `runner validate` passes exactly the specs `runner run` accepts.

What it walks, after the spec itself has loaded (schema, semantic rules, files named): the
Lightning strategy of every run, the output folder, and each run's inputs (data read,
templated, split; the tokenizer; the method against the model's config; train_rows against
the split; rows fitted to max_length; data checks; probes). A problem in one input does not
hide the problems of another: every data source, the model and the strategy are checked even
when an earlier one failed.
"""

from __future__ import annotations

from pathlib import Path

from runner.errors import ProblemsError, SpecError, collect, raise_all
from runner.inputs import Inputs, prepare_inputs
from runner.spec.checks import strategy_problems
from runner.spec.types import Spec


def preflight(
    spec: Spec,
    runs: list[Spec] | None = None,
    output_dir: Path | None = None,
    writes: bool = False,
    with_probes: bool = True,
    enforce_checks: bool = True,
) -> list[Inputs]:
    """Each run's inputs (one for a plain spec; for an experiment, `runs` or all its runs),
    after every check a run makes before its folder exists. `writes`: the command will create
    a run folder under `output_dir` (default: the spec's), so it must be writable."""
    runs = runs if runs is not None else (list(spec.runs) if spec.is_experiment else [spec])
    where = str(spec.source_path or spec.name)
    errors: list[ProblemsError] = []
    strategy = [
        (f"{run.run.name}: " if run.run is not None and len(runs) > 1 else "") + problem
        for run in runs
        for problem in strategy_problems(run.trainer)
    ]
    if strategy:
        errors.append(SpecError(where, list(dict.fromkeys(strategy))))
    if writes:
        from runner.rundir.folder import (
            check_writable,  # the run folder's code (and its plotting) only when one is made
        )

        collect(errors, check_writable, output_dir or spec.output_dir)
    inputs = [collect(errors, prepare_inputs, run, with_probes, enforce_checks) for run in runs]
    if spec.is_experiment and all(i is not None for i in inputs):
        collect(errors, check_shared_split, spec, runs, inputs)
    raise_all(errors)
    return inputs


def check_shared_split(spec: Spec, runs: list[Spec], inputs: list[Inputs]) -> None:
    """Every run of an experiment holds the same primary-task rows in train, val and test: the
    base scores and the paired comparison rest on it. A task added on the primary task's file
    changes how that file is stratified unless both name the same data.stratify_by."""
    from runner.data.split import splits_record

    problems = []
    reference = None
    for run, run_inputs in zip(runs, inputs):
        entry = splits_record(run_inputs.tasks, spec.seed)["tasks"][spec.primary_task]
        record = {split: entry[split] for split in ("train", "val", "test")}
        if reference is None:
            reference = (run.run.name, record)
        elif record != reference[1]:
            problems.append(
                f"$.variants: run {run.run.name!r} splits the rows of task {spec.primary_task!r} differently from "
                f"run {reference[0]!r}; a task it adds reads the same file, which changes the stratification: give "
                f"every task on that file the same data.stratify_by (e.g. the primary task's label field)."
            )
    if problems:
        raise SpecError(str(spec.source_path or spec.name), problems)
