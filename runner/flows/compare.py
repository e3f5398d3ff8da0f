"""`runner compare`: several runs side by side (markdown, html and json), from their report.json
files, with paired deltas and a verdict per task where the runs share test rows (the pairing
itself is report.run_comparison's)."""

from __future__ import annotations

import json
from pathlib import Path

from runner.errors import DataError, ProblemsError
from runner.report import figures as plots
from runner.report.comparison import is_experiment
from runner.report.comparison import write_comparison as write_experiment_comparison
from runner.report.html import to_html, to_markdown
from runner.report.recommend import points_text
from runner.report.run_comparison import MAX_CHART_TASKS, RunInput, comparison_chart, read_inputs, run_comparison
from runner.report.task_blocks import RUNG_TITLES, RUNGS, with_ci
from runner.results import METRICS, RunResult, to_json
from runner.rundir.folder import write_json
from runner.rundir.model_files import REPORT_MAX_BYTES
from runner.spec.parse import read_spec_file
from runner.spec.types import schema


def read_reports(run_dirs: list[Path]) -> list[RunResult]:
    """Each folder's report.json, in the order given.

    Raises:
        DataError: naming every folder without a readable report at once, not just the first.
    """
    reports, problems = [], []
    for run_dir in run_dirs:
        path = run_dir / "report.json"
        try:
            if path.stat().st_size > REPORT_MAX_BYTES:
                problems.append(f"{path}: {path.stat().st_size:,} bytes, over the {REPORT_MAX_BYTES:,} compare reads.")
                continue
            reports.append(RunResult.from_json(json.loads(path.read_text())))
        except FileNotFoundError:
            problems.append(f"{run_dir}: no report.json; give run folders written by `runner run` or `runner eval`.")
        except json.JSONDecodeError as exc:
            problems.append(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).")
        except OSError as exc:
            problems.append(f"{path}: cannot be read ({exc.strerror}).")
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
            # Valid JSON that is not a run's report (a list, a field of the wrong kind): say so.
            problems.append(f"{path}: not a run report ({type(exc).__name__}); give folders `runner run` wrote.")
    if problems:
        raise DataError("runner compare", problems)
    return reports


def comparison(reports: list[RunResult], run_dirs: list[Path], result: dict, image: bool = False) -> list[tuple]:
    """Blocks (see report.document): the verdict per task and the chart (`image`), the runs, then
    per task the paired table and the side-by-side rungs, forgetting and cost, one column per run."""
    columns = [run["label"] for run in result["runs"]]
    blocks: list[tuple] = [("h1", "Run comparison")]
    for name, task in result["tasks"].items():
        lead = f"Verdict on `{name}`." if len(result["tasks"]) > 1 else "Verdict."
        blocks.append(("p", f"**{lead}** {task['recommendation']['sentence']}"))
    if image:
        shown = f" (the first {MAX_CHART_TASKS})" if len(result["tasks"]) > MAX_CHART_TASKS else ""
        blocks.append(("img", "compare", f"fine-tuned test score per run with its 95% CI, per task{shown}"))
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
        blocks.append(("h2", f"Task `{name}`"))
        if name in result["tasks"]:
            blocks += paired_blocks(result["tasks"][name], result["settings"])
        blocks.append(("table", ["", *columns], _task_rows(reports, name)))
    probe_names = list(dict.fromkeys(p for r in reports for p in r.forgetting or {}))
    if probe_names:
        rows = [[probe, *(_forgetting_cell(r, probe) for r in reports)] for probe in probe_names]
        blocks += [("h2", "Forgetting (before → after)"), ("table", ["probe", *columns], rows)]
    blocks += [("h2", "Cost"), ("table", ["", *columns], _cost_rows(reports))]
    return blocks


def paired_blocks(task: dict, settings: dict) -> list[tuple]:
    """One task's runs: score, interval, paired delta to the best and verdict; how they were
    paired, and which runs were not and why."""
    metric, verdicts = task["metric"], task["recommendation"].get("verdicts", {})
    rows = []
    for label, e in task["runs"].items():
        ci = f"{e['ci95'][0]:.2f}..{e['ci95'][1]:.2f}" if e["ci95"] else "—"
        if "delta_ci95" in e:
            lo, hi = e["delta_ci95"]
            delta = f"{points_text(e['delta_to_best'])} ({points_text(lo)}..{points_text(hi)})"
        else:
            delta = "best" if label == task["best"] else "—"
        verdict = "best" if label == task["best"] else verdicts.get(label, "not paired")
        value = f"{e[metric]:.3f}" if e[metric] is not None else "—"
        rows.append([label, value, ci if e["ci_from"] != "report.json" else f"{ci} (own)", delta, verdict])
    blocks: list[tuple] = []
    if task["paired"]:
        tie = f", the first given of {len(task['tied_best'])} tied at the top" if task["tied_best"] else ""
        blocks.append(
            (
                "p",
                f"Paired on the {task['test_rows']} test rows {', '.join(task['paired'])} share (the same row numbers "
                f"and gold answers in predictions.jsonl): each interval and each delta to the best run "
                f"({task['best']}{tie}) is a paired bootstrap of {settings['bootstrap_samples']} resamples (seed "
                f"{settings['seed']}); non-inferiority margin {settings['margin'] * 100:g} points of {metric} "
                f"(from {settings['margin_from']}).",
            )
        )
    header = ["run", f"fine-tuned {metric}", "95% CI", "Δ to best, points (95% CI)", "verdict"]
    blocks.append(("table", header, rows))
    if task["not_paired"]:
        why = "; ".join(f"{label}: {reason}" for label, reason in task["not_paired"].items())
        blocks.append(("p", f"**Not paired:** {why}. Their intervals (own) are each run's own, from its report.json."))
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
    """Write compare.md, compare.html, compare.json and compare.png (the chart) into `output`
    (created if missing).

    Returns:
        The markdown and html paths and the markdown, which the CLI also prints.
    """
    reports = read_reports(run_dirs)
    runs = read_inputs(reports, run_dirs, [run_settings(Path(d)) for d in run_dirs])
    result = {"runs": [run_json(r) for r in runs], **run_comparison(runs, comparison_settings(runs))}
    figure = comparison_chart(result)
    png = plots.png_bytes(figure) if figure is not None else None
    if figure is not None:
        plots.close(figure)
    blocks = comparison(reports, run_dirs, result, image=png is not None)
    output.mkdir(parents=True, exist_ok=True)
    if png is not None:
        (output / "compare.png").write_bytes(png)
    markdown = to_markdown(blocks, {"compare": "compare.png"})
    md_path, html_path = output / "compare.md", output / "compare.html"
    write_json(output / "compare.json", result)
    md_path.write_text(markdown)
    html_path.write_text(to_html(blocks, {"compare": plots.data_uri(png)} if png else {}, "Run comparison"))
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


def run_settings(folder: Path) -> dict:
    """seed, evaluation.bootstrap_samples and comparison.margin from the run's spec.yaml (a run of
    an experiment: margin from the experiment's); keys absent or unusable are left out."""
    out = {}
    spec = _spec(folder / "spec.yaml")
    parent = folder.parent.parent
    if folder.parent.name == "variants" and is_experiment(parent):
        spec.setdefault("comparison", _spec(parent / "spec.yaml").get("comparison"))
    seed, samples = spec.get("seed"), _get(spec, "evaluation", "bootstrap_samples")
    margin = _get(spec, "comparison", "margin")
    if type(seed) is int:
        out["seed"] = seed
    if type(samples) is int and 0 <= samples <= 100_000:  # the schema's range: bounds the bootstrap's memory
        out["bootstrap_samples"] = samples
    if isinstance(margin, (int, float)) and not isinstance(margin, bool) and 0 < margin <= 1:
        out["margin"] = float(margin)
    return out


def _spec(path: Path) -> dict:
    """A spec file as a dict, or {} when it is missing or unreadable (the defaults then stand)."""
    try:
        spec = read_spec_file(path)
    except (ProblemsError, OSError):
        return {}
    return spec if isinstance(spec, dict) else {}


def _get(spec: dict, section: str, key: str):
    """spec[section][key], or None when either is missing or not a mapping."""
    part = spec.get(section)
    return part.get(key) if isinstance(part, dict) else None


def comparison_settings(runs: list[RunInput]) -> dict:
    """The bootstrap and margin every task's pairing uses, and where the margin came from."""
    defaults = schema()["properties"]
    samples = [r.settings["bootstrap_samples"] for r in runs if "bootstrap_samples" in r.settings]
    seeds = [r.settings["seed"] for r in runs if "seed" in r.settings]
    margins = [(r.label, r.settings["margin"]) for r in runs if "margin" in r.settings]
    return {
        # The most any run asked for; a verdict needs an interval, so 0 ("none") falls to the default.
        "bootstrap_samples": max(samples, default=0)
        or defaults["evaluation"]["properties"]["bootstrap_samples"]["default"],
        "seed": seeds[0] if seeds else 0,
        "margin": margins[0][1] if margins else defaults["comparison"]["properties"]["margin"]["default"],
        "margin_from": f"{margins[0][0]}'s spec" if margins else "the schema's default",
    }


def run_json(run: RunInput) -> dict:
    """compare.json's entry of one run: what it is, whether its predictions could be read, and
    the numbers the side-by-side tables show."""
    r = run.report
    tests = {
        task: {
            rung: {"n": m.n, **{k: m.value(k) for k in METRICS if m.value(k) is not None}, "ci95": m.ci95}
            for rung, m in t.test.items()
        }
        for task, t in r.tasks.items()
    }
    return {
        "label": run.label,
        "folder": str(run.folder),
        "name": r.name,
        "status": r.status,
        "model": r.model.get("source"),
        "method": r.model.get("method"),
        "predictions": run.problem or {t: o if isinstance(o, str) else "read" for t, o in run.outcomes.items()},
        "settings": run.settings,
        "tests": tests,
        "forgetting": to_json(r.forgetting or {}),
        "cost": to_json(r.cost),
        "epochs_run": r.training.epochs_run if r.training else None,
        "best_epoch": r.training.best_epoch if r.training else None,
    }
