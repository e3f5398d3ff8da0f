"""An experiment folder shared by several jobs: a lock, per-run claims and states."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from runner.data.split import splits_record
from runner.errors import RunFolderError, RunnerError
from runner.inputs import Inputs
from runner.rundir import folder as reporting
from runner.rundir.folder import environment, new_run_dir, spec_text
from runner.rundir.model_files import run_status
from runner.rundir.ranks import check_target, make_folder
from runner.spec.parse import read_spec_file
from runner.spec.types import Spec
from runner.spec.written import written_spec
from runner.terminal import printable

STATE_FILE = "experiment.json"


SHARED_SCORES = "base_scores"


LOCK_FILE = ".experiment.lock"


# What an experiment folder holds before any run starts; a folder with anything else in it and
# no experiment.json is not made into an experiment by --run-dir.
HEADER_FILES = {"spec.yaml", "environment.json", "splits.json", STATE_FILE, LOCK_FILE}


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
    them write the header, and the others find it whole. A folder that is neither (a project
    folder, a file, a single run) is refused before anything is written into it."""
    if not (parent / STATE_FILE).is_file():
        _check_new_experiment_folder(parent)
    make_folder(parent)
    with locked(parent):
        if (parent / STATE_FILE).is_file():  # written last: the header is complete
            check_same_experiment(parent, spec, flag="--run-dir")
            print(f"Joined experiment {parent} (its spec matches).", file=sys.stderr)
            return
        _check_new_experiment_folder(parent)  # again, under the lock
        write_header(parent, spec, header_inputs())
        print(f"Created experiment {parent}.", file=sys.stderr)


def _check_new_experiment_folder(parent: Path) -> None:
    """A folder without experiment.json that --run-dir names: missing, empty, or a header cut
    short (a job killed while writing it, written again); anything else is not meant for it."""
    if (parent / "report.json").is_file():
        raise RunFolderError(
            f"--run-dir {parent}", [f"{parent}: holds a single run, not an experiment; name another folder."]
        )
    check_target(parent, HEADER_FILES, f"not an experiment folder (no {STATE_FILE})")


def write_header(parent: Path, spec: Spec, inputs: Inputs) -> None:
    """spec.yaml, splits.json, environment.json, then experiment.json (every run pending): its
    presence says the header is whole. Called under the folder's lock."""
    reporting.write_json(parent / "splits.json", splits_record(inputs.tasks, spec.seed))
    reporting.write_text(parent / "spec.yaml", spec_text(spec, "experiment"))
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
    damaged = state_problems(parent)
    if damaged:
        raise RunFolderError(f"{flag} {parent}", damaged, footer=reporting.CHANGED)
    before = read_spec_file(path)
    now = _resolved(spec)
    changed = sorted((k for k in set(before) | set(now) if before.get(k) != now.get(k)), key=str)
    if not changed:
        return
    changed = [printable(k, 60) for k in changed]  # keys read from the folder's spec.yaml
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


def read_document(parent: Path) -> dict:
    """experiment.json: {"runs": {run: state}, "claims": {run: {host, pid, started, since}}}."""
    try:
        document = json.loads((parent / STATE_FILE).read_text())
    except (OSError, ValueError):
        document = {}
    if not isinstance(document, dict):
        document = {}
    return {"runs": document.get("runs") or {}, "claims": document.get("claims") or {}}


def state_problems(parent: Path) -> list[str]:
    """What makes experiment.json unusable (empty: nothing): it must be an object whose "runs"
    maps each run to its state and whose "claims" maps runs to objects."""
    try:
        document = json.loads((parent / STATE_FILE).read_text(encoding="utf-8"))
    except OSError as exc:
        return [f"{STATE_FILE}: cannot be read ({exc.strerror or exc})."]
    except (ValueError, RecursionError) as exc:
        return [f"{STATE_FILE}: not valid JSON ({printable(exc, 120)})."]
    runs = document.get("runs") if isinstance(document, dict) else None
    claims = document.get("claims", {}) if isinstance(document, dict) else None
    if not isinstance(runs, dict) or not all(isinstance(v, str) for v in runs.values()):
        return [f'{STATE_FILE}: no "runs" object of run states.']
    if not isinstance(claims, dict) or not all(isinstance(v, dict) for v in claims.values()):
        return [f'{STATE_FILE}: "claims" is not an object of claims.']
    return []


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
