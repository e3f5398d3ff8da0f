"""An experiment's comparison: its runs side by side on the primary task, paired against the best
variant, with forgetting, cost, a data-efficiency curve and one sentence that recommends a variant.

Everything is read back from the experiment folder (spec.yaml, experiment.json, each run's
report.json and predictions.jsonl), so `runner compare <experiment folder>` writes it again.

Pairing: every run is scored on the same test rows, so a difference between two variants is
bootstrapped over rows (the same resampled rows for both), which is far tighter than comparing
two separate intervals. With several seeds a row's outcome is its mean over the seeds: the
interval is then over test rows for the seed-averaged model, and the spread over seeds is
reported next to it as mean ± sd.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from runner.report import figures as plots
from runner.report import uncertainty as stats
from runner.report.comparison_document import comparison_figures, document
from runner.report.html import to_html, to_markdown
from runner.report.recommend import recommend
from runner.report.uncertainty import forgot
from runner.results import RunResult
from runner.rundir.folder import write_json
from runner.spec.parse import read_spec_file

RUNG_LINES = (
    "majority",
    "baseline_tfidf",
    "base_zero_shot",
    "base_few_shot",
)  # the reference lines: no model, then the untouched model


@dataclass
class Variant:
    """One variant's runs (one per seed) and what the comparison says about them."""

    name: str
    description: str = ""
    runs: list[str] = field(default_factory=list)
    reports: list[RunResult] = field(default_factory=list)  # complete runs only
    statuses: dict[str, str] = field(default_factory=dict)
    rows: torch.Tensor | None = None  # per test row: correct, averaged over seeds
    train_rows: int | str | None = None

    @property
    def complete(self) -> bool:
        """Whether at least one of its runs finished, so it has numbers to compare."""
        return bool(self.reports)


def write_comparison(parent: Path) -> tuple[Path, Path, str]:
    """comparison.json, comparison.md (+ plots/*.png) and comparison.html in `parent`."""
    result = compare(parent)
    write_json(parent / "comparison.json", result)
    figures = comparison_figures(result)
    pngs = {key: plots.png_bytes(fig) for key, fig in figures.items()}
    for fig in figures.values():
        plots.close(fig)
    if pngs:
        (parent / "plots").mkdir(exist_ok=True)
        for key, png in pngs.items():
            (parent / "plots" / f"{key}.png").write_bytes(png)
    blocks = document(result, pngs)
    markdown = to_markdown(blocks, {k: f"plots/{k}.png" for k in pngs})
    md_path, html_path = parent / "comparison.md", parent / "comparison.html"
    md_path.write_text(markdown)
    uris = {key: plots.data_uri(png) for key, png in pngs.items()}
    html_path.write_text(to_html(blocks, uris, f"{result['name']}: comparison"))
    return md_path, html_path, markdown


def is_experiment(folder: Path) -> bool:
    """Whether `folder` is an experiment's (its runs under variants/), not a single run's."""
    return (folder / "experiment.json").is_file() and (folder / "variants").is_dir()


def compare(parent: Path) -> dict:
    """comparison.json's content, read back from the experiment folder `parent`."""
    spec = read_spec_file(parent / "spec.yaml")
    primary, margin = spec["primary_task"], spec["comparison"]["margin"]
    samples, seed = spec["evaluation"]["bootstrap_samples"], spec["seed"]
    states = json.loads((parent / "experiment.json").read_text())["runs"]
    variants = read_variants(parent, states, primary)
    done = [v for v in variants if v.complete]
    metric = done[0].reports[0].tasks[primary].test["fine_tuned"].headline() if done else "accuracy"
    n_rows = len(done[0].rows) if done else 0
    idx = stats.resample_indices(n_rows, samples, seed) if done and samples > 0 else None
    best = max(done, key=lambda v: float(v.rows.mean())) if done else None
    entries = {v.name: variant_entry(v, best, primary, metric, idx) for v in variants}
    return {
        "name": spec["name"],
        "folder": str(parent),
        "primary_task": primary,
        "metric": metric,
        "test_rows": n_rows,
        "margin": margin,
        "seeds": spec.get("seeds"),
        "best": best.name if best else None,
        "base": base_lines_of(done, primary),
        "variants": entries,
        # Runs without a complete report (pending, running elsewhere, failed): the comparison
        # covers the complete ones only, and says so.
        "incomplete": {name: state for v in variants for name, state in v.statuses.items() if state != "complete"},
        "curve": curve_points(variants, entries, primary),
        "recommendation": recommend(entries, best.name if best else None, margin, n_rows, base_lines_of(done, primary)),
    }


def read_variants(parent: Path, states: dict[str, str], primary: str) -> list[Variant]:
    """The experiment's runs grouped by variant, each with its complete reports and the
    per-row outcomes of the fine-tuned model on the primary task (averaged over seeds)."""
    variants: dict[str, Variant] = {}
    for name in states:
        folder = parent / "variants" / name
        report = _read_report(folder / "report.json")
        # A run that never wrote a report (pending, or lost before its first write) is still a
        # variant of its own name, so the comparison can say it is missing.
        run = (report.variant if report else None) or {"variant": name, "description": ""}
        v = variants.setdefault(run["variant"], Variant(run["variant"], run.get("description", "")))
        v.runs.append(name)
        v.train_rows = run.get("train_rows")
        status = report.status if report else states[name]
        v.statuses[name] = status
        if status == "complete":
            v.reports.append(report)
    for v in variants.values():
        outcomes = [
            row_outcomes(parent / "variants" / name, primary) for name in v.runs if v.statuses[name] == "complete"
        ]
        if outcomes:
            rows = sorted(outcomes[0])  # test row numbers, the same in every run
            v.rows = torch.tensor([[o[r] for r in rows] for o in outcomes], dtype=torch.float).mean(0)
    return list(variants.values())


def row_outcomes(folder: Path, task: str) -> dict[int, float]:
    """Test row -> 1.0 if the fine-tuned model got it right, from predictions.jsonl."""
    out = {}
    with open(folder / "predictions.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if record["task"] == task and record["rung"] == "fine_tuned":
                out[record["row"]] = float(record["correct"])
    return out


def variant_entry(v: Variant, best: Variant | None, primary: str, metric: str, idx: torch.Tensor | None) -> dict:
    """One variant's entry of comparison.json: its score over seeds with the interval over test
    rows, the paired difference to the best variant, forgetting and cost."""
    entry = {"description": v.description, "runs": v.statuses, "train_rows": v.train_rows}
    if not v.complete:
        return entry
    tests = [r.tasks[primary].test["fine_tuned"] for r in v.reports]
    values = [t.value(metric) for t in tests]
    first = v.reports[0]
    entry.update(
        {
            "method": first.model["method"],
            "replay": (first.training_data or {}).get("replay"),
            "seeds_done": len(values),
            metric: round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            "per_seed": values,
            "ci95": stats.interval(stats.accuracy_samples(v.rows, idx)) if idx is not None else None,
            "forgetting": forgetting(v.reports),
            "cost": cost(v.reports),
        }
    )
    if tests[0].f1_macro is not None:
        entry["f1_macro"] = round(statistics.fmean(t.f1_macro for t in tests), 4)
    others = [name for name in first.tasks if name != primary]
    if others:  # a multi-task variant's other tasks: their own test metric (not compared)
        entry["other_tasks"] = {}
        for name in others:
            runs = [r.tasks[name].test["fine_tuned"] for r in v.reports]
            key = runs[0].headline()
            entry["other_tasks"][name] = {key: round(statistics.fmean(m.value(key) for m in runs), 4)}
    if best is not None and best is not v and idx is not None:
        delta = stats.accuracy_samples(v.rows, idx) - stats.accuracy_samples(best.rows, idx)
        entry["delta_to_best"] = round(float(v.rows.mean() - best.rows.mean()), 4)
        entry["delta_ci95"] = stats.interval(delta)
    return entry


def forgetting(reports: list[RunResult]) -> dict:
    """Per probe: before, after and the change (means over seeds), the paired interval of a
    single seed's change, and whether it shows forgetting (the report's own rule, report.forgot)."""
    out = {}
    for name in reports[0].forgetting or {}:
        entries = [r.forgetting[name] for r in reports if name in (r.forgetting or {})]
        first = entries[0]
        if first.two_model:  # the mean of its one number
            out[name] = {"kind": first.kind, "value": round(statistics.fmean(e.value for e in entries), 6)}
            continue
        out[name] = {
            "kind": first.kind,
            "metric": first.metric,
            "before": first.before,
            "after": round(statistics.fmean(e.after for e in entries), 4),
            "delta": round(statistics.fmean(e.delta for e in entries), 4),
            "delta_ci95": first.delta_ci95 if len(entries) == 1 else None,
            "forgot": any(forgot(e) for e in entries),
        }
        seconds = [e.second["value"] for e in entries if e.second]
        if seconds:  # the text kind's drift, measured on the same pass
            out[name]["second"] = {"metric": first.second["metric"], "value": round(statistics.fmean(seconds), 6)}
    return out


def cost(reports: list[RunResult]) -> dict:
    """A variant's cost over its seeds: parameters, means of time, speed and size, the peak memory,
    the fine-tuned model's latency over every task, and each seed's epochs."""
    costs = [r.cost for r in reports]

    def mean(key: str, digits: int = 1):
        values = [getattr(c, key) for c in costs if getattr(c, key) is not None]
        return round(statistics.fmean(values), digits) if values else None

    latency = [r.tasks[t].test["fine_tuned"].ms_per_example for r in reports for t in r.tasks]
    latency = [x for x in latency if x is not None]
    return {
        "trainable_params": costs[0].trainable_params,
        "total_params": costs[0].total_params,
        "train_seconds": mean("train_seconds"),
        "tokens_per_second": mean("tokens_per_second"),
        "peak_rss_mb": max((c.peak_rss_mb or 0 for c in costs), default=None),
        "checkpoint_mb": mean("checkpoint_mb", 2),
        "ms_per_example": round(statistics.fmean(latency), 1) if latency else None,
        "epochs_run": [r.training.epochs_run if r.training else None for r in reports],
    }


def base_lines_of(done: list[Variant], primary: str) -> dict:
    """The reference lines from the first complete run; none when no run is complete."""
    return base_lines(done[0].reports[0], primary) if done else {}


def base_lines(report: RunResult, primary: str) -> dict:
    """The untouched model's rungs on the primary task (scored once, the same in every run)."""
    tests = report.tasks[primary].test
    out = {}
    for rung in RUNG_LINES:
        if rung in tests:
            m = tests[rung]
            metric = m.headline()
            out[rung] = {
                metric: m.value(metric),
                "ci95": m.ci95.get(metric),
                "prompt_tokens_mean": m.prompt_tokens_mean,
            }
    return out


def curve_points(variants: list[Variant], entries: dict, primary: str) -> list[dict]:
    """The data-efficiency curve: curve runs (rows-<n>) by the training rows they had."""
    points = []
    for v in variants:
        e = entries[v.name]
        if v.train_rows is None or not v.complete:
            continue
        per_epoch = (v.reports[0].training_data or {}).get("per_epoch", {})
        rows = per_epoch.get(primary, {}).get("available")
        points.append({"variant": v.name, "train_rows": rows, "requested": v.train_rows, **_metric_of(e)})
    return sorted(points, key=lambda p: p["train_rows"] or 0)


def _metric_of(entry: dict) -> dict:
    """The curve point's score: the headline metric, its interval and spread over seeds."""
    return {k: entry[k] for k in ("accuracy", "exact_match", "ci95", "sd") if k in entry}


def _read_report(path: Path) -> RunResult | None:
    """A run's report.json, or None when it is missing or half written (the run's state in
    experiment.json then stands for it)."""
    try:
        return RunResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
