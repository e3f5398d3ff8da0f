"""Separate runs (`runner compare RUN RUN ...`) compared on the test rows they share.

Two runs are paired on a task only when their predictions.jsonl hold the same test row numbers
with the same gold answers: then a difference is bootstrapped over those rows (the same
resampled rows for every run), as an experiment's comparison does, and the experiment's rule
(recommend()) gives the verdict. Runs on other rows are shown with their own intervals and are
never paired: rows that differ would make the paired interval a fiction.

predictions.jsonl comes from a folder anyone may have edited: it is read under stated bounds,
line by line, and a file that cannot be used is a reason in the comparison, never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

from runner.limits import DEFAULT_LIMITS
from runner.report import uncertainty as stats
from runner.report.comparison import RUNG_LINES, forgetting
from runner.report.figures import RUNG_COLORS, RUNG_TITLES, plt
from runner.report.recommend import points_text, recommend
from runner.results import RunResult
from runner.terminal import printable

# A predictions file holds every rung's record of every test row, prompt included: 1 GiB is
# far above a real run's (100k test rows x 5 rungs x 2 KB) and bounds what one compare reads.
PREDICTIONS_MAX_BYTES = 2**30
# One record carries one prompt, which a run renders under limits.template_chars; as JSON a
# character takes up to 6 bytes (\uXXXX), plus the gold answer and the prediction.
LINE_MAX_BYTES = 8 * DEFAULT_LIMITS.template_chars
MAX_SHOWN = 5  # problems named per file; reading stops there, since the file is unusable anyway
MATCH_TOLERANCE = 1e-3  # report.json rounds its metrics; predictions.jsonl holds the raw outcomes


@dataclass
class RunInput:
    """One run folder as the comparison sees it: its report, label, settings and outcomes."""

    label: str
    folder: Path
    report: RunResult
    settings: dict = field(default_factory=dict)  # seed, bootstrap_samples, margin: what its spec says
    outcomes: dict[str, dict[int, tuple[str, float]] | str] = field(default_factory=dict)  # task: rows, or why not
    problem: str | None = None  # why none of its tasks can be paired


def run_labels(reports: list[RunResult], run_dirs: list[Path]) -> list[str]:
    """Short unique names: the variant or run name, with the folder's name where two share it,
    and a number where even that repeats (the same folder given twice)."""
    bases = [str((r.variant.get("variant") if isinstance(r.variant, dict) else None) or r.name) for r in reports]
    labels = [b if bases.count(b) == 1 else f"{b} ({Path(d).name})" for b, d in zip(bases, run_dirs)]
    return [lab if labels.count(lab) == 1 else f"{lab} #{labels[:i].count(lab) + 1}" for i, lab in enumerate(labels)]


def read_inputs(reports: list[RunResult], run_dirs: list[Path], settings: list[dict]) -> list[RunInput]:
    """Every run with its settings and fine-tuned outcomes per task (or why they cannot be used)."""
    runs = []
    for label, report, folder, own in zip(run_labels(reports, run_dirs), reports, run_dirs, settings):
        run = RunInput(label, Path(folder), report, settings=own)
        if report.status != "complete":
            run.problem = f"its report.json says `{report.status}`, not complete"
        else:
            run.problem = read_outcomes(run)
        runs.append(run)
    return runs


def read_outcomes(run: RunInput) -> str | None:
    """Fill run.outcomes from predictions.jsonl: per task, test row -> (gold as JSON, correct) of
    the fine-tuned model, or the task's reason when its rows disagree with report.json. Returns
    why the whole file cannot be used, or None."""
    path = run.folder / "predictions.jsonl"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "it has no predictions.jsonl (`runner run` and `runner eval` write one as they score)"
    except OSError as exc:
        return f"its predictions.jsonl cannot be read ({exc.strerror})"
    if size > PREDICTIONS_MAX_BYTES:
        return f"its predictions.jsonl is {size:,} bytes, over the {PREDICTIONS_MAX_BYTES:,} that compare reads"
    rows: dict[str, dict[int, tuple[str, float]]] = {}
    expected = {name: t.test["fine_tuned"].n for name, t in run.report.tasks.items() if "fine_tuned" in t.test}
    expected = {name: n if type(n) is int else None for name, n in expected.items()}
    problems = _read_lines(path, rows, expected)
    if problems:
        more = " (reading stopped there)" if len(problems) >= MAX_SHOWN else ""
        return "its predictions.jsonl is damaged: " + "; ".join(problems) + more
    for task in expected:
        run.outcomes[task] = _task_rows(run.report, task, rows.get(task, {}))
    return None


def _read_lines(path: Path, rows: dict, expected: dict[str, int | None]) -> list[str]:
    """Read predictions.jsonl's fine-tuned records into `rows`, at most PREDICTIONS_MAX_BYTES and
    LINE_MAX_BYTES a line; the first MAX_SHOWN problems, each located by line."""
    problems, total, number = [], 0, 0
    try:
        with open(path, "rb") as f:
            while len(problems) < MAX_SHOWN:
                line = f.readline(LINE_MAX_BYTES + 1)
                number += 1
                total += len(line)
                if not line:
                    break
                if len(line) > LINE_MAX_BYTES or total > PREDICTIONS_MAX_BYTES:  # grown since stat()
                    problems.append(f"line {number} is longer than {LINE_MAX_BYTES:,} bytes or the file grew")
                    break
                problem = _take(line, rows, expected)
                if problem:
                    problems.append(f"line {number}: {problem}")
    except OSError as exc:
        problems.append(f"cannot be read ({exc.strerror})")
    return problems


def _take(line: bytes, rows: dict, expected: dict[str, int | None]) -> str | None:
    """One line into `rows` when it is a fine-tuned record of a task the report has; what is
    wrong with it otherwise (other rungs' records are skipped, not checked)."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            return "not a JSON object"
        if record.get("rung") != "fine_tuned":
            return None
        task, row, correct = record.get("task"), record.get("row"), record.get("correct")
        if not isinstance(task, str) or type(row) is not int or "gold" not in record or correct not in (0, 1):
            return "a fine-tuned record without a task, a row number, gold and correct (true or false)"
        gold = json.dumps(record["gold"], sort_keys=True)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return f"not valid JSON ({exc if isinstance(exc, json.JSONDecodeError) else type(exc).__name__})"
    if task not in expected:
        return f"task {task!r} is not in report.json"
    kept = rows.setdefault(task, {})
    if row in kept:
        return f"row {row} of task {task!r} appears twice"
    # Bounds what is kept in memory by what the report says was scored, not by the file.
    if expected[task] is not None and len(kept) >= expected[task]:
        return f"more fine-tuned rows of task {task!r} than the {expected[task]} report.json scored"
    kept[row] = (gold, float(correct))
    return None


def _task_rows(report: RunResult, task: str, rows: dict[int, tuple[str, float]]) -> dict | str:
    """The task's rows when they agree with report.json (count and score), else why not."""
    rung = report.tasks[task].test["fine_tuned"]
    metric = rung.headline()
    if not rows:
        return "predictions.jsonl holds no fine-tuned rows of it"
    if rung.n is None or len(rows) != rung.n:
        return f"predictions.jsonl holds {len(rows)} fine-tuned rows of it, report.json says {rung.n}"
    score = sum(c for _, c in rows.values()) / len(rows)
    if rung.value(metric) is None or abs(score - rung.value(metric)) > MATCH_TOLERANCE:
        return f"predictions.jsonl gives {metric} {score}, report.json {rung.value(metric)}: the files disagree"
    return rows


def scored(run: RunInput, task: str):
    """The run's fine-tuned rung on `task`, or None when it did not score one."""
    result = run.report.tasks.get(task)
    return result.test.get("fine_tuned") if result else None


def pair_task(task: str, metric: str, runs: list[RunInput]) -> tuple[list[RunInput], dict[str, str]]:
    """The runs paired on `task`: the largest group with identical test rows and gold answers
    (the earliest run's group on a tie; none under two runs), and why each other run is not."""
    reasons, usable = {}, []
    for r in runs:
        got = r.outcomes.get(task)
        if scored(r, task).headline() != metric:
            reasons[r.label] = f"it scores {scored(r, task).headline()} on this task, not {metric}"
        elif r.problem or not isinstance(got, dict):
            reasons[r.label] = r.problem or str(got)
        else:
            usable.append(r)
    groups: dict[tuple, list[RunInput]] = {}
    for r in usable:
        groups.setdefault(tuple(sorted((row, gold) for row, (gold, _) in r.outcomes[task].items())), []).append(r)
    group = max(groups.values(), key=len, default=[])
    if len(group) < 2:
        group = []
    for r in usable:
        if r not in group:
            others = [o for o in (group or usable) if o is not r]
            reasons[r.label] = _apart(r, others[0], task) if others else "no other run has usable rows of this task"
    return group, {r.label: reasons[r.label] for r in runs if r.label in reasons}  # in the order given


def _apart(run: RunInput, other: RunInput, task: str) -> str:
    """Why two runs' rows of a task cannot be paired: other row numbers, or other gold answers."""
    mine, theirs = run.outcomes[task], other.outcomes[task]
    shared = mine.keys() & theirs.keys()
    if len(shared) == len(mine) == len(theirs):
        differ = sum(mine[row][0] != theirs[row][0] for row in shared)
        return (
            f"its {len(mine)} test row numbers are {other.label}'s, but the gold answer differs on {differ} "
            "of them (other data or labels)"
        )
    return f"it was scored on other test rows than {other.label} ({len(shared)} of its {len(mine)} row numbers shared)"


def _number(value) -> float | None:
    """A real number from a report, or None (a damaged report.json may hold anything)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    return float(value) if ok else None


def _ci(rung, metric: str) -> list[float] | None:
    """A rung's [low, high] interval of `metric` from a report, or None."""
    value = rung.ci95.get(metric) if isinstance(rung.ci95, dict) else None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) is not None for v in value):
        return [float(value[0]), float(value[1])]
    return None


def shared_base(runs: list[RunInput], task: str, metric: str) -> dict:
    """The reference rungs (majority, TF-IDF, the untouched model) every run that has them scored
    the same: one line for all; a rung whose score differs between runs is left out."""
    lines = {}
    for rung in RUNG_LINES:
        have = [r.report.tasks[task].test[rung] for r in runs if rung in r.report.tasks[task].test]
        values = {_number(m.value(metric)) for m in have}
        if have and len(values) == 1 and None not in values:
            lines[rung] = {metric: values.pop(), "ci95": _ci(have[0], metric)}
    return lines


def task_entry(task: str, runs: list[RunInput], settings: dict) -> dict:
    """compare.json's entry of one task: each run's metric and interval (paired where the runs
    share rows, else each run's own from report.json), the deltas to the best and the verdict."""
    present = [r for r in runs if scored(r, task) is not None]
    metric = scored(present[0], task).headline()
    group, reasons = pair_task(task, metric, present)
    entry = {"metric": metric, "test_rows": None, "best": None, "tied_best": [], "paired": [r.label for r in group]}
    entry["not_paired"] = reasons
    # Reference lines from the paired runs when there are (scored on the same rows as them).
    entry["base"] = shared_base(group or present, task, metric)
    entry["runs"] = {}
    for r in present:
        rung = scored(r, task)
        own = {metric: _number(rung.value(metric)), "ci95": _ci(rung, metric), "ci_from": "report.json"}
        entry["runs"][r.label] = own
    if group:
        entry.update(paired_numbers(task, metric, group, settings, entry["runs"]))
    entry["recommendation"] = verdict(entry, settings)
    return entry


def paired_numbers(task: str, metric: str, group: list[RunInput], settings: dict, runs: dict) -> dict:
    """Each paired run's score and its interval over the shared rows, and its paired difference
    to the best run: every run resampled with the same rows (seeded)."""
    rows = sorted(group[0].outcomes[task])
    correct = {r.label: torch.tensor([r.outcomes[task][row][1] for row in rows]) for r in group}
    idx = stats.resample_indices(len(rows), settings["bootstrap_samples"], settings["seed"])
    drawn = {label: stats.accuracy_samples(c, idx) for label, c in correct.items()}
    means = {label: float(c.mean()) for label, c in correct.items()}
    best = max(means, key=means.get)  # the first given wins a tie
    for r in group:
        e = runs[r.label]
        e.update({metric: round(means[r.label], 4), "ci95": stats.interval(drawn[r.label])})
        e["ci_from"] = "paired bootstrap"
        # What recommend() weighs after the scores: forgetting, then parameters and time.
        e["cost"] = {k: _number(getattr(r.report.cost, k)) for k in ("trainable_params", "train_seconds")}
        e["forgetting"] = _forgetting(r.report)
        if r.label != best:
            e["delta_to_best"] = round(means[r.label] - means[best], 4)
            e["delta_ci95"] = stats.interval(drawn[r.label] - drawn[best])
    tied = [label for label, mean in means.items() if mean == means[best]]
    return {"test_rows": len(rows), "best": best, "tied_best": tied if len(tied) > 1 else []}


def _forgetting(report: RunResult) -> dict:
    """The run's forgetting as an experiment's comparison summarises it; {} when a damaged
    report.json's probes cannot be read as numbers."""
    try:
        return forgetting([report])
    except (TypeError, ValueError, KeyError, AttributeError):
        return {}


def verdict(entry: dict, settings: dict) -> dict:
    """The experiment's rule (recommend()) over the paired runs, as one sentence naming runs by
    label; without two paired runs, why there is no verdict."""
    if len(entry["paired"]) < 2:
        alone = len(entry["runs"]) == 1
        sentence = (
            f"Only {next(iter(entry['runs']))} scored this task, so there is nothing to compare it with."
            if alone
            else "No verdict: no two runs could be paired on this task (why: under its table), so only each "
            "run's own 95% CI can be read; runs pair when they score the same test rows (same data, split and seed) "
            "and their predictions.jsonl are intact."
        )
        return {"verdict": "not paired", "sentence": sentence}
    paired = {label: entry["runs"][label] for label in entry["paired"]}
    out = recommend(paired, entry["best"], settings["margin"], entry["test_rows"], entry["base"], noun="run")
    result = {"verdict": out["verdict"], "sentence": out["sentence"], "verdicts": out.get("verdicts", {})}
    if "variant" in out:
        result["use"] = out["variant"]
    return result


def run_comparison(runs: list[RunInput], settings: dict) -> dict:
    """compare.json's settings of the pairing (`settings`: bootstrap_samples, seed, margin) and
    every task's entry."""
    tasks = list(dict.fromkeys(t for r in runs for t in r.report.tasks if scored(r, t) is not None))
    return {"settings": settings, "tasks": {task: task_entry(task, runs, settings) for task in tasks}}


MAX_CHART_TASKS = 8  # a page's worth; compare.json and the tables hold every task


def comparison_chart(result: dict) -> Figure | None:
    """Per task, each run's metric with its 95% CI (filled: paired on shared rows; hollow: its own
    interval) and the reference rungs the runs share as lines; None when no run has a score."""
    tasks = list(result["tasks"].items())[:MAX_CHART_TASKS]
    if not tasks:
        return None
    heights = [0.45 * len(t["runs"]) + 1.5 for _, t in tasks]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, sum(heights)), height_ratios=heights, squeeze=False)
    for ax, (name, task) in zip(axes[:, 0], tasks):
        _task_axes(fig, ax, name, task)
    fig.tight_layout()
    return fig


def _task_axes(fig: Figure, ax, name: str, task: dict) -> None:
    """One task's panel: a row per run (the first on top), its value and delta written on the right."""
    metric, labels = task["metric"], list(task["runs"])[::-1]
    green, grey = RUNG_COLORS["fine_tuned"], "#868e96"
    for y, label in enumerate(labels):
        e = task["runs"][label]
        value, (low, high) = e[metric], e["ci95"] or [e[metric], e[metric]]
        if value is None:
            continue
        paired = label in task["paired"]
        ax.errorbar(
            value,
            y,
            xerr=[[max(value - low, 0)], [max(high - value, 0)]],  # a damaged report's interval may miss its value
            fmt="o",
            capsize=5,
            color=green if paired else grey,
            markerfacecolor=None if paired else "white",
            markersize=8 if label == task["best"] else 6,
        )
        note = "best" if label == task["best"] else _points(e) if paired else "not paired"
        ax.annotate(f"{value:.3f}  {note}", (1.02, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    for rung, m in task["base"].items():
        color, style = ("#6b6b6b", ":") if rung == "majority" else (RUNG_COLORS[rung], "--")
        ax.axvline(m[metric], color=color, linestyle=style, linewidth=1.2, label=RUNG_TITLES[rung])
    if task["not_paired"] and task["paired"]:  # say what the two marker kinds mean
        ax.plot([], [], "o", color=green, label="paired (same rows)")
        ax.plot([], [], "o", color=grey, markerfacecolor="white", label="not paired (own CI)")
    ax.set_yticks(range(len(labels)), [_plain(label) for label in labels])
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    rows = f"paired on {task['test_rows']} shared test rows" if task["paired"] else "not paired"
    ax.set_title(f"{_plain(name)}: fine-tuned test {metric} (95% CI), {rows}", fontsize=9, loc="left")
    if ax.get_legend_handles_labels()[0]:  # under the tick labels (18 points below), covering no run
        below = ax.transAxes + ScaledTranslation(0, -18 / 72, fig.dpi_scale_trans)
        ax.legend(loc="upper left", bbox_to_anchor=(0, 0), bbox_transform=below, ncol=4, fontsize=7, frameon=False)


def _points(entry: dict) -> str:
    """A paired run's difference to the best, in points with its interval."""
    lo, hi = entry["delta_ci95"]
    return f"{points_text(entry['delta_to_best'])} ({points_text(lo)}..{points_text(hi)}) pts"


def _plain(text: str) -> str:
    """A label as matplotlib prints it verbatim: control characters escaped (they have no glyph),
    $ too (it would start mathtext), cut to fit the axis."""
    text = printable(text, limit=None)
    text = text if len(text) <= 40 else text[:39] + "…"
    return text.replace("$", r"\$")
