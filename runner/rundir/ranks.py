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

from runner.errors import RunnerError
from runner.spec.types import Spec

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
    """Rank 0 creates the agreed folder; one that already holds a run is not reused silently."""
    if (run_dir / "report.json").is_file():
        raise RunnerError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, or name another folder."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def wait_for_header(run_dir: Path, timeout: float = 1800.0) -> None:
    """Other ranks wait for rank 0 to check the inputs and write the run folder's header (not
    for its base scoring: under an external launcher rank 0 scores the base model after training)."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "spec.yaml").is_file():
        if time.monotonic() > deadline:
            raise RunnerError(f"rank 0 did not start the run in {run_dir} within {timeout:.0f} s; see its output.")
        time.sleep(1.0)
