"""`runner run` on an experiment: its runs (variants x seeds, curve points) one after another in
one parent folder, the base model scored once for all of them, and the comparison that says
which approach to use.

    <output_dir>/<name>/<timestamp>/
        spec.yaml, environment.json, splits.json   the experiment; every run has these splits
        experiment.json                            each run's status
        base_scores/                               the base model's scores, shared by every run
        variants/<run>/                            a whole run folder per run
        comparison.json, comparison.md, comparison.html, plots/

A run that fails leaves the finished ones as they are; `--resume <folder>` runs only the runs
that did not finish (an interrupted one from its last checkpoint).
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
import traceback
from pathlib import Path

from runner import report as reporting
from runner.comparison import write_comparison
from runner.data import splits_record
from runner.errors import Interrupted, RunnerError
from runner.folder import environment, last_checkpoint, new_run_dir, run_status, spec_text
from runner.inputs import Inputs, print_findings
from runner.spec import Spec, read_spec_file, written_spec

STATE_FILE = "experiment.json"
SHARED_SCORES = "base_scores"


def run_experiment_runs(
    spec: Spec, output_dir: Path | None = None, resume: Path | None = None, only: list[str] | None = None
) -> Path:
    """Run every run of the experiment (or those named in `only`); returns the parent folder."""
    from runner.preflight import preflight
    from runner.run import quiet_libraries, train_run

    quiet_libraries()
    runs = selected_runs(spec, only)
    # Every run's inputs first: a bad row in an added task, or a mixture that would move the
    # primary task's rows between splits, stops here, before any folder exists.
    prepared = preflight(spec, runs=runs, output_dir=output_dir, writes=resume is None)
    inputs = {run.run.name: run_inputs for run, run_inputs in zip(runs, prepared)}
    print_new_findings(runs, inputs)
    if resume is not None:
        parent = resume
        check_same_experiment(parent, spec)
    else:
        parent = new_run_dir(output_dir or spec.output_dir, spec.name)
        write_header(parent, spec, inputs[runs[0].run.name])
    state = read_state(parent)
    print(f"Experiment {spec.name}: {len(runs)} runs in {parent}", file=sys.stderr)
    failed = []
    for number, run_spec in enumerate(runs, 1):
        name = run_spec.run.name
        folder = parent / "variants" / name
        if run_status(folder) == "complete":
            print(f"[{number}/{len(runs)}] {name}: complete already, kept.", file=sys.stderr)
            continue
        resume_from = restart_point(folder)
        print(
            f"[{number}/{len(runs)}] {name}"
            + (f" (resumed from {resume_from.name})" if resume_from else "")
            + (f": {run_spec.run.description}" if run_spec.run.description else ""),
            file=sys.stderr,
        )
        reporting.reset_peak_rss()  # each run's report gives its own peak memory
        try:
            train_run(run_spec, folder, inputs[name], resume_from, shared=parent / SHARED_SCORES)
            state[name] = "complete"
        except Interrupted as exc:
            state[name] = "interrupted"
            finish_experiment(parent, spec, state)
            exc.detail = f"finished runs are kept; continue with: {resume_command(spec, parent)}"
            raise
        except Exception as exc:  # one run's failure must not lose the others
            message = exc.message if isinstance(exc, RunnerError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, RunnerError):
                traceback.print_exc(file=sys.stderr)
            print(f"run {name} failed: {message}", file=sys.stderr)
            state[name] = "failed"
            failed.append(f"{name}: {message}")
        finally:
            gc.collect()  # the finished run's model, optimizer and trainer
        write_state(parent, state)
    finish_experiment(parent, spec, state)
    if failed:
        raise RunnerError(
            f"{len(failed)} of {len(runs)} runs failed (their reports say why; the others are complete):\n  "
            + "\n  ".join(failed)
            + f"\nrun only the unfinished ones with: {resume_command(spec, parent)}"
        )
    return parent


def selected_runs(spec: Spec, only: list[str] | None) -> list[Spec]:
    if not only:
        return list(spec.runs)
    names = [r.run.name for r in spec.runs]
    variants = {r.run.variant for r in spec.runs}
    unknown = [n for n in only if n not in names and n not in variants]
    if unknown:
        raise RunnerError(f"--only {', '.join(unknown)}: not a run of {spec.name}; runs: {', '.join(names)}.")
    return [r for r in spec.runs if r.run.name in only or r.run.variant in only]


def print_new_findings(runs: list[Spec], inputs: dict[str, Inputs]) -> None:
    """Data-check findings once each (runs share most tasks)."""
    seen = set()
    for run in runs:
        fresh = [f for f in inputs[run.run.name].findings if f.line() not in seen]
        seen.update(f.line() for f in fresh)
        print_findings(fresh)


def write_header(parent: Path, spec: Spec, inputs: Inputs) -> None:
    reporting.write_json(parent / "splits.json", splits_record(inputs.tasks, spec.seed))
    (parent / "spec.yaml").write_text(spec_text(spec, "experiment"))
    reporting.write_json(parent / "environment.json", environment(spec))
    write_state(parent, {r.run.name: "pending" for r in spec.runs})


def _resolved(spec: Spec) -> dict:
    return json.loads(json.dumps(written_spec(spec)))


def check_same_experiment(parent: Path, spec: Spec) -> None:
    """--resume continues the experiment the folder holds, not an edited one."""
    path = parent / "spec.yaml"
    if not (parent / STATE_FILE).is_file() or not path.is_file():
        raise RunnerError(f"--resume {parent}: not an experiment folder (no {STATE_FILE} or spec.yaml there).")
    before = read_spec_file(path)
    now = _resolved(spec)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise RunnerError(
            f"--resume {parent}: the spec changed since this experiment started ({', '.join(changed)}); "
            "its finished runs would not be comparable. Start a new experiment (drop --resume)."
        )


def read_state(parent: Path) -> dict[str, str]:
    try:
        return json.loads((parent / STATE_FILE).read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_state(parent: Path, state: dict[str, str]) -> None:
    reporting.write_json(parent / STATE_FILE, {"runs": state})


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


def finish_experiment(parent: Path, spec: Spec, state: dict[str, str]) -> None:
    write_state(parent, state)
    if any((parent / "variants" / name / "report.json").is_file() for name in state):
        md_path, html_path, _ = write_comparison(parent)
        print(f"Comparison: {html_path} (and {md_path.name})", file=sys.stderr)


def resume_command(spec: Spec, parent: Path) -> str:
    return f"runner run {spec.source_path or 'SPEC'} --resume {parent}"
