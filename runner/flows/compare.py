"""`runner compare`: several runs side by side (markdown and html), from their report.json files."""

from __future__ import annotations

import json
from pathlib import Path

from runner.errors import DataError
from runner.report.comparison import is_experiment
from runner.report.comparison import write_comparison as write_experiment_comparison
from runner.report.html import to_html, to_markdown
from runner.report.task_blocks import RUNG_TITLES, RUNGS, with_ci
from runner.results import RunResult


def read_reports(run_dirs: list[Path]) -> list[RunResult]:
    """Each folder's report.json, in the order given.

    Raises:
        DataError: naming every folder without a readable report at once, not just the first.
    """
    reports, problems = [], []
    for run_dir in run_dirs:
        path = run_dir / "report.json"
        try:
            reports.append(RunResult.from_json(json.loads(path.read_text())))
        except FileNotFoundError:
            problems.append(f"{run_dir}: no report.json; give run folders written by `runner run` or `runner eval`.")
        except json.JSONDecodeError as exc:
            problems.append(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).")
    if problems:
        raise DataError("runner compare", problems)
    return reports


def comparison(reports: list[RunResult], run_dirs: list[Path]) -> list[tuple]:
    """Blocks (see report.document) with one column per run."""
    columns = [f"{r.name} ({Path(d).name}, {r.model.get('method', '?')})" for r, d in zip(reports, run_dirs)]
    blocks: list[tuple] = [("h1", "Run comparison")]
    blocks.append(
        (
            "table",
            ["run", "status", "model", "method", "folder"],
            [
                [c, r.status, r.model.get("source", "?"), r.model.get("method", "?"), str(d)]
                for c, r, d in zip(columns, reports, run_dirs)
            ],
        )
    )
    task_names = list(dict.fromkeys(name for r in reports for name in r.tasks))
    for name in task_names:
        blocks += [("h2", f"Task `{name}`"), ("table", ["", *columns], _task_rows(reports, name))]
    probe_names = list(dict.fromkeys(p for r in reports for p in r.forgetting or {}))
    if probe_names:
        rows = [[probe, *(_forgetting_cell(r, probe) for r in reports)] for probe in probe_names]
        blocks += [("h2", "Forgetting (before → after)"), ("table", ["probe", *columns], rows)]
    blocks += [("h2", "Cost"), ("table", ["", *columns], _cost_rows(reports))]
    return blocks


def _task_rows(reports: list[RunResult], name: str) -> list[list[str]]:
    """One row per rung and headline metric of task `name`; rows no run has a value for are left out."""
    tests = [r.tasks[name].test if name in r.tasks else {} for r in reports]
    metrics = []
    for test in tests:
        # One rung per run suffices: a task's rungs all report the same kind (classification or generation).
        for m in test.values():
            metrics += [m.headline()] + (["f1_macro"] if m.f1_macro is not None else [])
            break
    rows = []
    for rung in RUNGS:
        for metric in dict.fromkeys(metrics):
            cells = [with_ci(test[rung], metric, ci_digits=2) if rung in test else "—" for test in tests]
            if any(c != "—" for c in cells):
                rows.append([f"{RUNG_TITLES[rung]}: {metric}", *cells])
    return rows


def _forgetting_cell(report: RunResult, probe: str) -> str:
    """A two-model probe's one value, or a probe's before → after (change); "—" if the run lacks it."""
    e = (report.forgetting or {}).get(probe)
    if e is None:
        return "—"
    if e.two_model:
        return f"{e.value:.4f}"
    return f"{e.before:.3f} → {e.after:.3f} ({e.delta:+.3f})"


def _cost_rows(reports: list[RunResult]) -> list[list[str]]:
    """The cost table's rows: parameters, time, speed, size, memory and epochs, one cell per run."""
    return [
        ["trainable parameters", *(_cost(r, "trainable_params", "{:,}") for r in reports)],
        ["total parameters", *(_cost(r, "total_params", "{:,}") for r in reports)],
        ["train time (s)", *(_cost(r, "train_seconds", "{:.0f}") for r in reports)],
        ["tokens / s", *(_cost(r, "tokens_per_second", "{:.0f}") for r in reports)],
        ["exported model (MB)", *(_cost(r, "checkpoint_mb", "{:.1f}") for r in reports)],
        ["peak memory (MB)", *(_cost(r, "peak_rss_mb", "{:.0f}") for r in reports)],
        [
            "epochs run / best",
            *(f"{r.training.epochs_run} / {r.training.best_epoch}" if r.training else "—" for r in reports),
        ],
    ]


def write_comparison(run_dirs: list[Path], output: Path) -> tuple[Path, Path, str]:
    """Write compare.md and compare.html into `output` (created if missing).

    Returns:
        The two paths and the markdown, which the CLI also prints.
    """
    reports = read_reports(run_dirs)
    blocks = comparison(reports, run_dirs)
    output.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(blocks, {})
    md_path, html_path = output / "compare.md", output / "compare.html"
    md_path.write_text(markdown)
    html_path.write_text(to_html(blocks, {}, "Run comparison"))
    return md_path, html_path, markdown


def _cost(report: RunResult, key: str, fmt: str) -> str:
    """One cost figure of a run, formatted; "—" when the run did not measure it."""
    value = getattr(report.cost, key)
    return fmt.format(value) if value is not None else "—"


def compare(run_dirs: list[Path], output: Path) -> tuple[Path, Path, str]:
    """`runner compare`: one experiment folder alone rewrites its own comparison (with its
    recommendation); anything else is a side-by-side table of the runs, written under `output`."""
    if len(run_dirs) == 1 and is_experiment(run_dirs[0]):
        return write_experiment_comparison(run_dirs[0])
    return write_comparison(run_dirs, output)
