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
the folder's lock file; the shared base scores are written atomically (runner.cache.store), so
two jobs scoring the base model at once both write the same entry, whole.

A run that fails leaves the finished ones as they are; `--resume <folder>` (or `--run-dir`) runs
only the runs that did not finish (an interrupted one from its last checkpoint).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import gc
import json
import os
import shutil
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
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
LOCK_FILE = ".experiment.lock"
# What an experiment folder holds before any run starts; a folder with anything else in it and
# no experiment.json is not made into an experiment by --run-dir.
HEADER_FILES = {"spec.yaml", "environment.json", "splits.json", STATE_FILE, LOCK_FILE}


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
    from runner.builders import quiet_libraries
    from runner.preflight import preflight

    quiet_libraries()
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


# --- the folder, its lock and its header ----------------------------------------------------


@contextlib.contextmanager
def locked(parent: Path) -> Iterator[None]:
    """Hold the experiment folder's exclusive lock (blocks until no other job holds it).

    `flock` on a file in the folder: it serialises jobs on one machine, and on a shared file
    system that supports it (NFS emulates it with byte-range locks) jobs on several. Not
    re-entrant: never take it twice in one process.
    """
    with open(parent / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_experiment(
    spec: Spec,
    runs: list[Spec],
    inputs: dict[str, Inputs],
    output_dir: Path | None,
    resume: Path | None,
    run_dir: Path | None,
) -> Path:
    """The experiment folder this job trains into: the one to resume, the shared one (created
    or joined), or a new timestamped one."""
    if resume is not None:
        with locked(resume):
            check_same_experiment(resume, spec)
        return resume
    if run_dir is not None:
        first = spec.runs[0]
        # The header's splits.json is the first run's whichever job writes it (a variant that
        # adds a task lists that task too).
        join_experiment(run_dir, spec, lambda: inputs.get(first.run.name) or _unchecked_inputs(first))
        return run_dir
    parent = new_run_dir(output_dir or spec.output_dir, spec.name)
    with locked(parent):
        write_header(parent, spec, inputs[runs[0].run.name])
    return parent


def _unchecked_inputs(run: Spec) -> Inputs:
    """A run's data and splits, for the header of an experiment whose first run this job does
    not train (no probes: the header needs only the splits)."""
    from runner.inputs import prepare_inputs

    return prepare_inputs(run, with_probes=False)


def join_experiment(parent: Path, spec: Spec, header_inputs: Callable[[], Inputs]) -> None:
    """Create the shared experiment folder and its header, or check that the header there is
    this experiment's. Several jobs may start at the same moment: the lock makes exactly one of
    them write the header, and the others find it whole."""
    parent.mkdir(parents=True, exist_ok=True)
    with locked(parent):
        if (parent / STATE_FILE).is_file():  # written last: the header is complete
            check_same_experiment(parent, spec, flag="--run-dir")
            print(f"Joined experiment {parent} (its spec matches).", file=sys.stderr)
            return
        if (parent / "report.json").is_file():
            raise RunnerError(f"--run-dir {parent}: holds a single run, not an experiment; name another folder.")
        # A header cut short (a job killed while writing it) is written again; anything else
        # means the folder is not meant for this experiment.
        strangers = sorted(p.name for p in parent.iterdir() if p.name not in HEADER_FILES and p.suffix != ".tmp")
        if strangers:
            raise RunnerError(
                f"--run-dir {parent}: not empty and not an experiment folder (no {STATE_FILE}; holds "
                f"{', '.join(strangers[:5])}); name a new or empty folder."
            )
        write_header(parent, spec, header_inputs())
        print(f"Created experiment {parent}.", file=sys.stderr)


def write_header(parent: Path, spec: Spec, inputs: Inputs) -> None:
    """spec.yaml, splits.json, environment.json, then experiment.json (every run pending): its
    presence says the header is whole. Called under the folder's lock."""
    reporting.write_json(parent / "splits.json", splits_record(inputs.tasks, spec.seed))
    (parent / "spec.yaml").write_text(spec_text(spec, "experiment"))
    reporting.write_json(parent / "environment.json", environment(spec))
    write_state(parent, {r.run.name: "pending" for r in spec.runs}, {})


def _resolved(spec: Spec) -> dict:
    return json.loads(json.dumps(written_spec(spec)))


def check_same_experiment(parent: Path, spec: Spec, flag: str = "--resume") -> None:
    """The folder holds this very experiment (the resolved spec, paths absolute): the runs a job
    adds must be comparable with those already there.

    Raises:
        RunnerError: not an experiment folder, or one started from another spec.
    """
    path = parent / "spec.yaml"
    if not (parent / STATE_FILE).is_file() or not path.is_file():
        raise RunnerError(f"{flag} {parent}: not an experiment folder (no {STATE_FILE} or spec.yaml there).")
    before = read_spec_file(path)
    now = _resolved(spec)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if not changed:
        return
    if flag == "--resume":
        raise RunnerError(
            f"--resume {parent}: the spec changed since this experiment started ({', '.join(changed)}); "
            "its finished runs would not be comparable. Start a new experiment (drop --resume)."
        )
    raise RunnerError(
        f"{flag} {parent}: holds a different experiment; this spec differs from its spec.yaml in "
        f"{', '.join(changed)}, so this job's runs would not be comparable with its runs. Run the spec it was "
        "started with (and the same --set), or name another folder."
    )


# --- experiment.json: each run's state, and who trains the running ones ----------------------


def read_document(parent: Path) -> dict:
    """experiment.json: {"runs": {run: state}, "claims": {run: {host, pid, started, since}}}."""
    try:
        document = json.loads((parent / STATE_FILE).read_text())
    except (OSError, ValueError):
        document = {}
    if not isinstance(document, dict):
        document = {}
    return {"runs": document.get("runs") or {}, "claims": document.get("claims") or {}}


def read_state(parent: Path) -> dict[str, str]:
    """Run -> state: pending, running, complete, failed or interrupted."""
    return read_document(parent)["runs"]


def write_state(parent: Path, state: dict[str, str], claims: dict[str, dict]) -> None:
    """experiment.json, written atomically (readers without the lock see a whole file)."""
    reporting.write_json(parent / STATE_FILE, {"runs": state, "claims": claims})


def current_states(parent: Path) -> dict[str, str]:
    """Each run's state; a run whose report says complete is complete (its job may have been
    killed between writing the report and experiment.json)."""
    return {
        name: "complete" if run_status(parent / "variants" / name) == "complete" else state
        for name, state in read_state(parent).items()
    }


def this_job() -> dict:
    """What a claim records: the host, the pid and the process's start time (a pid reused by a
    later process is not taken for the job)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def claim_holder(claim: dict, reclaim: bool) -> str | None:
    """Why a run marked running must be left alone, or None when its job is gone (or --reclaim).

    On this host the claim's pid is checked; another host's claim cannot be, so it is trusted.
    """
    host, pid = claim.get("host"), claim.get("pid")
    where = f"pid {pid} on {host}, since {claim.get('since', '?')}"
    if host != socket.gethostname():
        if reclaim:
            print(f"  taking over from {where} (--reclaim).", file=sys.stderr)
            return None
        return (
            f"being trained by {where} (another machine: its process cannot be checked from here, so the mark "
            "is trusted); skipped. If that job is gone, run this one again with --reclaim."
        )
    alive = isinstance(pid, int) and _alive(pid) and claim.get("started") in (None, _process_start(pid))
    if alive and pid != os.getpid():
        return f"being trained by {where} (alive); skipped."
    print(f"  its earlier job ({where}) is gone; training it again.", file=sys.stderr)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def claim_run(parent: Path, name: str, reclaim: bool) -> str | None:
    """Mark the run running by this job, under the lock; or say why it is not this job's to train
    (complete already, or being trained by a live job)."""
    with locked(parent):
        document = read_document(parent)
        state, claims = document["runs"], document["claims"]
        if run_status(parent / "variants" / name) == "complete":
            state[name] = "complete"
            claims.pop(name, None)
            write_state(parent, state, claims)
            return "complete already, kept."
        if state.get(name) == "running" and name in claims:
            why = claim_holder(claims[name], reclaim)
            if why is not None:
                return why
        state[name] = "running"
        claims[name] = {**this_job(), "since": _now()}
        write_state(parent, state, claims)
    return None


def release_run(parent: Path, name: str, status: str) -> None:
    """The run's final state for this job (complete, failed, interrupted), its claim removed;
    left as it is if another job has taken the run over meanwhile (--reclaim)."""
    with locked(parent):
        document = read_document(parent)
        claim = document["claims"].get(name)
        if claim is not None and (claim.get("host"), claim.get("pid")) != (socket.gethostname(), os.getpid()):
            print(
                f"{name}: taken over by pid {claim.get('pid')} on {claim.get('host')}; its state is that job's.",
                file=sys.stderr,
            )
            return
        document["runs"][name] = status
        document["claims"].pop(name, None)
        write_state(parent, document["runs"], document["claims"])


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- training the job's runs -------------------------------------------------------------------


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
    from runner.run import train_run

    name = run_spec.run.name
    folder = parent / "variants" / name
    resume_from = restart_point(folder)  # only after the claim: it may empty the folder
    print(
        tag
        + (f" (resumed from {resume_from.name})" if resume_from else "")
        + (f": {run_spec.run.description}" if run_spec.run.description else ""),
        file=sys.stderr,
    )
    reporting.reset_peak_rss()  # each run's report gives its own peak memory
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


# --- the comparison --------------------------------------------------------------------------


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
        names = " ".join(f"--only {name}" for name in stopped)
        text += (
            f"\nTrain the stopped ones again with: runner run {spec.source_path or 'SPEC'} --run-dir {parent} {names}"
        )
    return text


def experiment_complete(parent: Path) -> bool:
    """Whether every run of the experiment in `parent` is complete."""
    return all(state == "complete" for state in current_states(parent).values())


def continue_command(spec: Spec, parent: Path, runs: list[Spec], shared: bool) -> str:
    """The command that continues this job's unfinished runs."""
    if not shared:
        return f"runner run {spec.source_path or 'SPEC'} --resume {parent}"
    names = "" if len(runs) == len(spec.runs) else " " + " ".join(f"--only {r.run.name}" for r in runs)
    return f"runner run {spec.source_path or 'SPEC'} --run-dir {parent}{names}"
