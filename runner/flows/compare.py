"""`runner compare`: several runs side by side (markdown and html), from their report.json files."""

from __future__ import annotations

import json
from pathlib import Path

from runner.errors import DataError
from runner.report.document import RUNG_TITLES, RUNGS, headline
from runner.report.html import to_html, to_markdown


def read_reports(run_dirs: list[Path]) -> list[dict]:
    reports, problems = [], []
    for run_dir in run_dirs:
        path = run_dir / "report.json"
        try:
            reports.append(json.loads(path.read_text()))
        except FileNotFoundError:
            problems.append(f"{run_dir}: no report.json; give run folders written by `runner run` or `runner eval`.")
        except json.JSONDecodeError as exc:
            problems.append(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).")
    if problems:
        raise DataError("runner compare", problems)
    return reports


def comparison(reports: list[dict], run_dirs: list[Path]) -> list[tuple]:
    """Blocks (see report.document) with one column per run."""
    columns = [f"{r['name']} ({Path(d).name}, {r['model']['method']})" for r, d in zip(reports, run_dirs)]
    blocks: list[tuple] = [("h1", "Run comparison")]
    blocks.append(
        (
            "table",
            ["run", "status", "model", "method", "folder"],
            [
                [c, r["status"], r["model"]["source"], r["model"]["method"], str(d)]
                for c, r, d in zip(columns, reports, run_dirs)
            ],
        )
    )
    task_names = list(dict.fromkeys(name for r in reports for name in r.get("tasks", {})))
    for name in task_names:
        rows = []
        metrics = []
        for r in reports:
            for m in r.get("tasks", {}).get(name, {}).get("test", {}).values():
                metrics += [headline(m)] + (["f1_macro"] if "f1_macro" in m else [])
                break
        for rung in RUNGS:
            for metric in dict.fromkeys(metrics):
                cells = []
                for r in reports:
                    m = r.get("tasks", {}).get(name, {}).get("test", {}).get(rung)
                    cells.append(_metric(m, metric) if m else "—")
                if any(c != "—" for c in cells):
                    rows.append([f"{RUNG_TITLES[rung]}: {metric}", *cells])
        blocks += [("h2", f"Task `{name}`"), ("table", ["", *columns], rows)]
    probe_names = list(dict.fromkeys(p for r in reports for p in r.get("forgetting", {})))
    if probe_names:
        rows = []
        for probe in probe_names:
            cells = []
            for r in reports:
                e = r.get("forgetting", {}).get(probe)
                if e is None:
                    cells.append("—")
                elif e["kind"] == "drift":
                    cells.append(f"{e['value']:.4f}")
                else:
                    cells.append(f"{e['before']:.3f} → {e['after']:.3f} ({e['delta']:+.3f})")
            rows.append([probe, *cells])
        blocks += [("h2", "Forgetting (before → after)"), ("table", ["probe", *columns], rows)]
    rows = [
        ["trainable parameters", *(_cost(r, "trainable_params", "{:,}") for r in reports)],
        ["total parameters", *(_cost(r, "total_params", "{:,}") for r in reports)],
        ["train time (s)", *(_cost(r, "train_seconds", "{:.0f}") for r in reports)],
        ["tokens / s", *(_cost(r, "tokens_per_second", "{:.0f}") for r in reports)],
        ["exported model (MB)", *(_cost(r, "checkpoint_mb", "{:.1f}") for r in reports)],
        ["peak memory (MB)", *(_cost(r, "peak_rss_mb", "{:.0f}") for r in reports)],
        [
            "epochs run / best",
            *(
                f"{r['training']['epochs_run']} / {r['training']['best_epoch']}" if r.get("training") else "—"
                for r in reports
            ),
        ],
    ]
    blocks += [("h2", "Cost"), ("table", ["", *columns], rows)]
    return blocks


def write_comparison(run_dirs: list[Path], output: Path) -> tuple[Path, Path, str]:
    reports = read_reports(run_dirs)
    blocks = comparison(reports, run_dirs)
    output.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(blocks, {})
    md_path, html_path = output / "compare.md", output / "compare.html"
    md_path.write_text(markdown)
    html_path.write_text(to_html(blocks, {}, "Run comparison"))
    return md_path, html_path, markdown


def _metric(metrics: dict, key: str) -> str:
    if key not in metrics:
        return "—"
    ci = metrics.get("ci95", {}).get(key)
    return f"{metrics[key]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _cost(report: dict, key: str, fmt: str) -> str:
    value = report.get("cost", {}).get(key)
    return fmt.format(value) if value is not None else "—"
