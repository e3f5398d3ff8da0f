"""A run folder's lifecycle around a flow: the header files and a "running" report.json first,
then, whatever stops the flow (an error, Ctrl-C, SIGTERM from a scheduler), a report that says so
and the command that continues the run."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

from runner.data.split import splits_record
from runner.errors import Interrupted, RunnerError
from runner.evaluation.scoring import describe_data
from runner.inputs import Inputs
from runner.results import RunResult
from runner.rundir.folder import input_fingerprints, rerun_command, write_run_header
from runner.rundir.report_files import finish, start_report, write_report
from runner.spec.types import Spec
from runner.training.callbacks import STOP


def guarded(spec: Spec, run_dir: Path, mode: str, inputs: Inputs, flow: Callable[[RunResult], None]) -> Path:
    """Run a flow with its report kept honest: whatever stops it (an error, Ctrl-C, SIGTERM from
    a scheduler), report.json says so and report.md/html show what was done."""
    # A resumed run keeps the header it started with (checked equal by check_resumable).
    resumed = mode == "train" and (run_dir / "spec.yaml").is_file() and (run_dir / "checkpoints").is_dir()
    if not resumed:
        write_run_header(run_dir, spec, splits_record(inputs.tasks, spec.seed), input_fingerprints(spec, inputs.tasks))
    result = start_report(spec, run_dir, mode)
    describe_data(result, inputs.tasks, inputs.findings, inputs.encoder, spec)
    result.cost.prepare_seconds = round(inputs.seconds, 1)
    write_report(run_dir, result)  # "running", from the start
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _raise_interrupted)
    try:
        flow(result)
    except Interrupted as exc:
        exc.detail = f"the report in {run_dir} says so; continue with: {resume_command(spec, run_dir)}"
        finish(run_dir, result, "interrupted", f"stopped by {exc.name}; continue with: {resume_command(spec, run_dir)}")
        raise
    except RunnerError as exc:
        finish(run_dir, result, "failed", exc.message)
        raise
    except Exception as exc:
        finish(run_dir, result, "failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return run_dir


def _raise_interrupted(signum: int, frame) -> None:
    if STOP.training and STOP.signum is None:
        # Training: the step in progress finishes and a checkpoint is saved first (LastCheckpoint).
        STOP.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this training step, with a checkpoint "
            "(again to stop at once, from the last checkpoint).",
            file=sys.stderr,
        )
        return
    # Raised, not handled here, so the flow unwinds (Lightning passes a BaseException that is
    # not a KeyboardInterrupt through fit unchanged) and the report is written on the way out.
    signal.signal(signum, signal.SIG_IGN)  # a further Ctrl-C must not break the report writing
    raise Interrupted(signum)


def resume_command(spec: Spec, run_dir: Path) -> str:
    """The command that continues this run, printed when it stops early."""
    # A run of an experiment continues with its experiment (variants/<run>/ -> the parent).
    folder = run_dir.parent.parent if spec.run is not None else run_dir
    return rerun_command(folder, "--resume", folder)
