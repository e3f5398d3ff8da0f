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
from runner.results import Cost, RunResult
from runner.rundir.folder import input_fingerprints, rerun_command, write_run_header
from runner.rundir.model_files import REPORT_MAX_BYTES, read_object
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
    earlier = earlier_stages(run_dir) if resumed else None
    result = start_report(spec, run_dir, mode)
    result.cost.before_resume = earlier or None
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


def earlier_stages(run_dir: Path) -> dict[str, float]:
    """The stage times the run's report.json recorded before this resume (added up over earlier
    resumes); nothing when it is missing or unreadable, which only costs the report a line."""
    report, _ = read_object(run_dir / "report.json", "report.json", REPORT_MAX_BYTES)
    cost = (report or {}).get("cost")
    if not isinstance(cost, dict):
        return {}
    earlier = cost.get("before_resume")
    earlier = (
        {k: v for k, v in earlier.items() if k in Cost.STAGES and _seconds(v)} if isinstance(earlier, dict) else {}
    )
    for key in Cost.STAGES:
        if _seconds(cost.get(key)):
            earlier[key] = round(earlier.get(key, 0) + cost[key], 1)
    return earlier


def _seconds(value) -> bool:
    """A wall time as report.json keeps it: a number of seconds, not negative."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e9


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
