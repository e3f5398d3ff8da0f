"""Multi-process runs under any launcher: which process is rank 0, and how every rank names the
same run folder without asking it.

Lightning's own launcher starts the other ranks when rank 0 reaches training and hands them the
folder in RUNNER_RUN_DIR. torchrun, srun or mpirun start every rank at once: each derives the
folder from --run-dir or the launcher's job id, waits only for rank 0 to write the folder's
header, and rank 0 scores the base model after training rather than while they wait.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from runner.errors import RunFolderError, RunnerError
from runner.rundir.folder import runner_made_spec, write_error
from runner.spec.types import Spec
from runner.terminal import printable

RUN_DIR_ENV = "RUNNER_RUN_DIR"


def is_rank_zero() -> bool:
    """Whether this process is rank 0, as Lightning sees it; a single-process run is always rank 0."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


RUN_ID_ENVS = ("RUNNER_RUN_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")


def launched_externally() -> bool:
    """Every rank started at once by a launcher (torchrun, srun, mpirun), not by Lightning's own
    launcher, which starts the other ranks only when rank 0 reaches training."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and RUN_DIR_ENV not in os.environ


def agreed_run_dir(spec: Spec, output_dir: Path | None, resume: Path | None, run_dir: Path | None) -> Path | None:
    """The run folder every rank can name without asking rank 0: --resume, --run-dir, the one
    Lightning's launcher passed down, or <output_dir>/<name>/<run id> from the launcher's job id
    (RUNNER_RUN_ID, SLURM_JOB_ID, TORCHELASTIC_RUN_ID). Rank 0 alone: None (a new timestamped one)."""
    if resume is not None:
        return resume
    if run_dir is not None:
        return run_dir
    if RUN_DIR_ENV in os.environ:
        return Path(os.environ[RUN_DIR_ENV])
    run_id = next((os.environ[k] for k in RUN_ID_ENVS if os.environ.get(k) not in (None, "", "none")), None)
    if run_id is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return Path(output_dir or spec.output_dir) / spec.name / f"run-{run_id}"
    if not is_rank_zero():
        raise RunnerError(
            "this process is one rank of a multi-process run, but nothing names the run folder all ranks share: "
            "pass --run-dir DIR (the same on every rank) or set RUNNER_RUN_ID to one value for all ranks."
        )
    return None


def claim_run_dir(run_dir: Path) -> Path:
    """Rank 0 creates the agreed folder. Only a missing or empty folder is taken, or one holding
    nothing but the header runner began to write there: a folder that holds a run is not reused
    silently, and any other (a project folder with its own spec.yaml, a file) is never written into.

    Raises:
        RunFolderError: the folder holds a run or something else (exit 2).
    """
    if (run_dir / "report.json").is_file():
        raise RunFolderError(
            str(run_dir), [f"already holds a run; continue it with --resume {run_dir}, or name another folder."]
        )
    check_target(run_dir, RUN_HEADER_FILES, "not a run folder")
    make_folder(run_dir)
    return run_dir


# What a run folder holds before its report.json: the header a rank 0 killed while writing it left.
RUN_HEADER_FILES = frozenset({"spec.yaml", "splits.json", "environment.json", "fingerprints.json"})


def check_target(folder: Path, header: frozenset[str] | set[str], what: str) -> None:
    """A folder that --run-dir (or a launcher's job id) names: missing, empty, or holding only
    runner's own `header` files (a spec.yaml that runner wrote, not a user's); else RunFolderError."""
    fix = "name a new or empty folder, or drop --run-dir for a new timestamped one."
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--run-dir {folder}", [f"{folder.absolute()}: a file, not a folder; {fix}"])
    foreign = foreign_entries(folder, header) if folder.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunFolderError(
            f"--run-dir {folder}", [f"{folder.absolute()}: not empty and {what} (holds {shown}); {fix}"]
        )


def foreign_entries(folder: Path, header: frozenset[str] | set[str]) -> list[str]:
    """What in `folder` runner's header does not explain: anything not named in `header` (leftover
    `.tmp` files of an atomic write aside), a folder or link by such a name, and a spec.yaml that
    runner did not write. Names are shown safe to print."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        plain = entry.is_file() and not entry.is_symlink()
        ours = plain and (entry.name in header or entry.suffix == ".tmp")
        if ours and entry.name == "spec.yaml" and not runner_made_spec(entry):
            foreign.append("spec.yaml (not written by runner)")
        elif not ours:
            foreign.append(printable(entry.name, 60) + ("/" if entry.is_dir() else ""))
    return foreign


def make_folder(folder: Path) -> None:
    """mkdir -p, a failure located: a path through a file is the input's fault (exit 2), a full
    disk or a read-only folder the machine's (exit 1)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunFolderError(
            f"--run-dir {folder}", [f"{folder}: cannot be made, a file lies on its path; name another folder."]
        ) from None
    except OSError as exc:
        raise write_error(folder, exc) from None


def wait_for_header(run_dir: Path, timeout: float = 1800.0) -> None:
    """Other ranks wait for rank 0 to check the inputs and write the run folder's header (not
    for its base scoring: under an external launcher rank 0 scores the base model after training)."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "spec.yaml").is_file():
        if time.monotonic() > deadline:
            raise RunnerError(f"rank 0 did not start the run in {run_dir} within {timeout:.0f} s; see its output.")
        time.sleep(1.0)
