"""`runner runs [DIR]`: every run folder under DIR at a glance: status, age, method, each task's
fine-tuned result (with its CI and the zero-shot score), and how to continue the ones that
stopped. A run whose report still says `running` but whose process is gone (killed, machine
lost) shows as `stopped`."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path

from runner.results import RunResult, TaskResult
from runner.rundir.folder import rerun_command
from runner.rundir.model_files import REPORT_MAX_BYTES
from runner.terminal import printable

ACTIVE = ("running",)


RESUMABLE = ("interrupted", "failed", "stopped")


def find_reports(root: Path) -> list[Path]:
    """report.json of every run under root (a run folder, an experiment's runs, or deeper)."""
    if (root / "report.json").is_file():
        return [root / "report.json"]
    return sorted(root.glob("**/report.json"))


def describe(path: Path, root: Path, now: dt.datetime) -> dict:
    """One row: what the run is, how it ended, what it scored, what to do next. A report.json is
    input like any other file: one that cannot be read is a row that says so (never a traceback
    that hides the other runs), and every cell is safe to print (escape sequences and control
    characters shown as their escapes, megabyte strings cut)."""
    try:
        row = _describe(path, root, now)
    except UNREADABLE as exc:  # one bad file must not hide the other runs
        row = {"run": _relative(path.parent, root), "status": "unreadable", "result": str(exc)}
    return {column: printable(row.get(column, ""), CELL_CHARS.get(column, 80)) for column in COLUMNS}


COLUMNS = ("run", "status", "age", "method", "result", "next")
CELL_CHARS = {"run": 160, "result": 200, "next": 400}  # the longest cell shown; others 80
# What a report.json that is not runner's (damaged, hand-edited, hostile) raises while read.
UNREADABLE = (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError)


def _describe(path: Path, root: Path, now: dt.datetime) -> dict:
    """The row of a report.json; raises when the file's content is not what runner writes."""
    run_dir = path.parent
    if path.stat().st_size > REPORT_MAX_BYTES:
        raise ValueError(f"{path.stat().st_size:,} bytes, far more than a report runner writes")
    report = RunResult.from_json(json.loads(path.read_text()))
    status = report.status
    if status in ACTIVE and not _alive(report):
        status = "stopped"  # killed or machine lost: its report could not say so
    started = _parse_time(report.started_at)
    result = "; ".join(_task_result(name, task) for name, task in report.tasks.items() if task.test)
    nxt = ""
    folder = run_dir.parent.parent if report.variant else run_dir
    if status in RESUMABLE and (folder / "spec.yaml").is_file():
        # The folder's own spec.yaml holds every override the run started with (and a run
        # stopped before its first checkpoint trains from the start in the same folder).
        nxt = rerun_command(folder, "--resume", folder)
    elif status in RESUMABLE:
        nxt = "no spec.yaml in its folder: run it again"
    return {
        "run": _relative(run_dir, root),
        "status": status,
        "age": _age(now - started) if started else "",
        "method": report.model.get("method", ""),
        "result": result or ("—" if status != "failed" else (report.error or "")[:80]),
        "next": nxt,
    }


def runs_table(root: Path) -> str:
    """A plain-text table, one line per run, columns padded to fit; a sentence instead when there is none."""
    reports = find_reports(root)
    if not reports:
        return f"No runs under {root} (no report.json found)."
    now = dt.datetime.now(dt.timezone.utc)
    rows = [describe(p, root, now) for p in reports]
    columns = COLUMNS
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def _task_result(name: str, task: TaskResult) -> str:
    """A task's best-known score: the fine-tuned rung's (beside zero-shot), else the highest rung scored."""
    tests = task.test
    rung = next(
        (r for r in ("fine_tuned", "base_zero_shot", "base_few_shot", "majority") if r in tests), next(iter(tests))
    )
    metric = tests[rung].headline()
    value = tests[rung].value(metric)
    if value is None:
        return f"{name}: —"
    text = f"{name} {metric} {value:.3f}"
    ci = tests[rung].ci95.get(metric)
    if ci:
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    zero_shot = tests["base_zero_shot"].value(metric) if "base_zero_shot" in tests else None
    if rung != "fine_tuned":
        text += f" ({rung})"
    elif zero_shot is not None:
        text += f" (zero-shot {zero_shot:.3f})"
    return text


def _alive(report: RunResult) -> bool:
    """Whether the process that writes this report still runs (unknown hosts count as alive)."""
    pid, host = report.pid, report.host
    if pid is None or host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_time(text: str | None) -> dt.datetime | None:
    """An ISO time from the report; None when missing or malformed, so the age is left blank."""
    try:
        return dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _age(delta: dt.timedelta) -> str:
    """A duration as one rounded unit: 3 d, 5 h, 12 min or 40 s ago."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _relative(path: Path, root: Path) -> str:
    """The run folder relative to the listed root, or whole when it lies outside."""
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)
