"""`runner run` on an experiment: its runs (variants x seeds, curve points) in one parent folder,
the base model scored once for all of them, and the comparison that says which approach to use.

    <output_dir>/<name>/<timestamp>/   (or the folder --run-dir names)
        spec.yaml, environment.json, splits.json   the experiment; every run has these splits
        experiment.json                            each run's status, and who trains the running ones
        base_scores/                               the base model's scores, shared by every run
        variants/<run>/                            a whole run folder per run
        comparison.json, comparison.md, comparison.html, plots/
        .experiment.lock                           taken while the folder's shared files change

One process may train every run one after another, or several jobs (machines, a SLURM job array,
local processes) may each train some runs into the same folder (`--run-dir`): the first job
writes the header, each job claims a run in experiment.json before it trains it (so no run is
trained twice at once), and the job that completes the last run writes the comparison. Every
change to experiment.json, the header and the comparison happens under an exclusive `flock` on
the folder's lock file; the shared base scores are written atomically (runner.evaluation.cache.store), so
two jobs scoring the base model at once both write the same entry, whole.

A run that fails leaves the finished ones as they are; `--resume <folder>` (or `--run-dir`) runs
only the runs that did not finish (an interrupted one from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import gc
import shutil
import sys
import traceback
from pathlib import Path

from runner.errors import Interrupted, RunnerError
from runner.inputs import Inputs, print_findings
from runner.report.comparison import write_comparison
from runner.rundir.experiment import SHARED_SCORES, claim_run, current_states, locked, open_experiment, release_run
from runner.rundir.folder import last_checkpoint, rerun_command
from runner.spec.smoke import SMOKE_RUNS
from runner.spec.types import Spec
from runner.training.memory import reset_peak_rss


def run_experiment_runs(
    spec: Spec,
    output_dir: Path | None = None,
    resume: Path | None = None,
    only: list[str] | None = None,
    run_dir: Path | None = None,
    indices: list[int] | None = None,
    reclaim: bool = False,
) -> Path:
    """Run the experiment's runs (all, or those named in `only` or numbered in `indices`).

    Args:
        spec: The experiment spec.
        output_dir: Where a new experiment folder goes (default: the spec's output_dir).
        resume: An existing experiment folder to continue (its spec must be unchanged).
        only: Run or variant names to train.
        run_dir: An experiment folder shared with other jobs: created if absent, joined if it
            holds this experiment; the comparison is written only once every run is complete.
        indices: 0-based positions in the experiment's runs (`runner validate`'s order).
        reclaim: Take over runs marked running by a job on another machine (which cannot be
            checked from here).

    Returns:
        The experiment folder.
    """
    from runner.preflight import preflight
    from runner.training.setup import quiet_libraries

    quiet_libraries()
    if spec.smoke and not only and not indices:
        # A smoke run of an experiment: two runs carry it through the comparison (--only picks others).
        spec = dataclasses.replace(spec, runs=spec.runs[:SMOKE_RUNS])
    runs = selected_runs(spec, only, indices)
    # Every run's inputs first: a bad row in an added task, or a mixture that would move the
    # primary task's rows between splits, stops here, before any folder exists.
    where = run_dir if run_dir is not None else output_dir
    prepared = preflight(spec, runs=runs, output_dir=where, writes=resume is None)
    inputs = {run.run.name: run_inputs for run, run_inputs in zip(runs, prepared)}
    print_new_findings(runs, inputs)
    parent = open_experiment(spec, runs, inputs, output_dir, resume, run_dir)
    shared = run_dir is not None
    print(f"Experiment {spec.name}: {len(runs)} of its {len(spec.runs)} runs in {parent}", file=sys.stderr)
    again = continue_command(spec, parent, runs, shared)
    try:
        failed = train_runs(parent, runs, inputs, reclaim)
    except Interrupted as exc:
        finish_experiment(parent, spec, shared)
        exc.detail = f"finished runs are kept; continue with: {again}"
        raise
    finish_experiment(parent, spec, shared)
    if failed:
        raise RunnerError(
            f"{len(failed)} of {len(runs)} runs failed (their reports say why; the others are complete):\n  "
            + "\n  ".join(failed)
            + f"\nrun only the unfinished ones with: {again}"
        )
    return parent


def selected_runs(spec: Spec, only: list[str] | None, indices: list[int] | None = None) -> list[Spec]:
    """The runs a job trains, in the experiment's order: those named (run or variant) in `only`
    and those numbered in `indices`; every run when neither is given."""
    if not only and not indices:
        return list(spec.runs)
    names = [r.run.name for r in spec.runs]
    variants = {r.run.variant for r in spec.runs}
    unknown = [n for n in only or [] if n not in names and n not in variants]
    if unknown:
        raise RunnerError(f"--only {', '.join(unknown)}: not a run of {spec.name}; runs: {', '.join(names)}.")
    outside = [i for i in indices or [] if not 0 <= i < len(names)]
    if outside:
        listing = "\n".join(f"  {i}  {name}" for i, name in enumerate(names))
        raise RunnerError(
            f"--run-index {', '.join(map(str, outside))}: out of range; {spec.name} has {len(names)} runs, "
            f"numbered 0 to {len(names) - 1} (runner validate's order):\n{listing}"
        )
    picked, wanted = set(indices or []), set(only or [])
    return [r for i, r in enumerate(spec.runs) if i in picked or r.run.name in wanted or r.run.variant in wanted]


def print_new_findings(runs: list[Spec], inputs: dict[str, Inputs]) -> None:
    """Data-check findings once each (runs share most tasks)."""
    seen = set()
    for run in runs:
        fresh = [f for f in inputs[run.run.name].findings if f.line() not in seen]
        seen.update(f.line() for f in fresh)
        print_findings(fresh)


def train_runs(parent: Path, runs: list[Spec], inputs: dict[str, Inputs], reclaim: bool) -> list[str]:
    """Train each run this job can claim; returns `run: message` for each that failed."""
    failed = []
    for number, run_spec in enumerate(runs, 1):
        name = run_spec.run.name
        tag = f"[{number}/{len(runs)}] {name}"
        skip = claim_run(parent, name, reclaim)
        if skip is not None:
            print(f"{tag}: {skip}", file=sys.stderr)
            continue
        error = train_claimed(parent, run_spec, inputs[name], tag)
        if error is not None:
            failed.append(f"{name}: {error}")
    return failed


def train_claimed(parent: Path, run_spec: Spec, inputs: Inputs, tag: str) -> str | None:
    """Train a run this job has claimed; returns the error message if it failed. Whatever ends
    it (an error, Ctrl-C, SIGTERM), its state is written and its claim released."""
    from runner.flows.run import train_run

    name = run_spec.run.name
    folder = parent / "variants" / name
    resume_from = restart_point(folder)  # only after the claim: it may empty the folder
    print(
        tag
        + (f" (resumed from {resume_from.name})" if resume_from else "")
        + (f": {run_spec.run.description}" if run_spec.run.description else ""),
        file=sys.stderr,
    )
    reset_peak_rss()  # each run's report gives its own peak memory
    status = "interrupted"  # unless training returns or fails (Interrupted passes through)
    try:
        train_run(run_spec, folder, inputs, resume_from, shared=parent / SHARED_SCORES)
        status = "complete"
    except Exception as exc:  # one run's failure must not lose the others
        status = "failed"
        message = exc.message if isinstance(exc, RunnerError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, RunnerError):
            traceback.print_exc(file=sys.stderr)
        print(f"run {name} failed: {message}", file=sys.stderr)
        return message
    finally:
        release_run(parent, name, status)
        gc.collect()  # the finished run's model, optimizer and trainer
    return None


def restart_point(folder: Path) -> Path | None:
    """Where an unfinished run continues: its last checkpoint if one loads; else it starts over
    in an emptied folder."""
    if (folder / "checkpoints" / "last.ckpt").is_file():
        try:
            return last_checkpoint(folder)
        except RunnerError as exc:
            print(f"{exc.message} Starting {folder.name} over.", file=sys.stderr)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return None


def finish_experiment(parent: Path, spec: Spec, shared: bool) -> bool:
    """Write the comparison, under the lock (two jobs finishing together write it one after the
    other); returns whether it was written.

    A shared folder (--run-dir) gets it once every run is complete, from the job that completes
    the last one; until then this says which runs are not. One process that ran the experiment
    (or --resume) writes it with whatever finished, as before.
    """
    with locked(parent):
        states = current_states(parent)
        waiting = {name: state for name, state in states.items() if state != "complete"}
        if shared and waiting:
            print(not_complete(spec, parent, waiting), file=sys.stderr)
            return False
        if not any((parent / "variants" / name / "report.json").is_file() for name in states):
            return False
        md_path, html_path, _ = write_comparison(parent)
    print(f"Comparison: {html_path} (and {md_path.name})", file=sys.stderr)
    return True


def not_complete(spec: Spec, parent: Path, waiting: dict[str, str]) -> str:
    """Which runs are not complete yet, and who writes the comparison."""
    lines = ", ".join(f"{name} ({state})" for name, state in waiting.items())
    text = (
        f"Not complete yet: {lines}. The job that completes the last run writes the comparison; "
        f"or, once every run is complete: runner compare {parent}"
    )
    stopped = [name for name, state in waiting.items() if state in ("failed", "interrupted")]
    if stopped:
        only = [flag for name in stopped for flag in ("--only", name)]
        text += f"\nTrain the stopped ones again with: {rerun_command(parent, '--run-dir', parent, *only)}"
    return text


def experiment_complete(parent: Path) -> bool:
    """Whether every run of the experiment in `parent` is complete."""
    return all(state == "complete" for state in current_states(parent).values())


def continue_command(spec: Spec, parent: Path, runs: list[Spec], shared: bool) -> str:
    """The command that continues this job's unfinished runs."""
    if not shared:
        return rerun_command(parent, "--resume", parent)
    only = [] if len(runs) == len(spec.runs) else [flag for r in runs for flag in ("--only", r.run.name)]
    return rerun_command(parent, "--run-dir", parent, *only)


def experiment_summary(parent: Path, shared: bool) -> str:
    """What the terminal shows after an experiment's runs: its comparison once every run is
    complete (a folder shared by several jobs (`shared`) may still wait for others; the runs
    have said which), and where TensorBoard compares them."""
    lines = []
    if (parent / "comparison.md").is_file() and (not shared or experiment_complete(parent)):
        lines += [
            (parent / "comparison.md").read_text(),
            f"Comparison: {parent / 'comparison.html'}; runs in {parent / 'variants'}",
        ]
    lines.append(f"TensorBoard (HParams compares the runs): tensorboard --logdir {parent / 'variants'}")
    return "\n".join(lines)
