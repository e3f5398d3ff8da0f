"""Figures for report.html and TensorBoard (matplotlib, headless)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display: render to memory

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from runner.report.cells import table_cell
from runner.report.task_blocks import MAX_MATRIX_LABELS, top_confusions
from runner.report.verdict import METRIC_WORDS, lead_metric
from runner.results import ProbeResult, RungResult, RunResult, TaskResult

RUNG_COLORS = {
    "majority": "#d9d9d9",
    "baseline_tfidf": "#c9a227",
    "base_zero_shot": "#9aa5b1",
    "base_few_shot": "#5b8def",
    "fine_tuned": "#2f9e44",
}


RUNG_TITLES = {
    "majority": "majority",
    "baseline_tfidf": "TF-IDF + LR",
    "base_zero_shot": "base, zero-shot",
    "base_few_shot": "base, few-shot",
    "fine_tuned": "fine-tuned",
}


def training_curves(epochs: list[dict], best_epoch: int | None) -> Figure:
    """Training and validation loss per epoch, with the best epoch marked."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for key, label, style in (("train_loss", "train loss", "o-"), ("val_loss", "validation loss", "s-")):
        points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, label=label)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="#2f9e44", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (completion tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def error_bars(values: list[float], cis: list[list[float] | None]) -> list[list[float]]:
    """matplotlib's yerr (distances below and above) from 95% intervals; none: no bar."""
    cis = [ci or [v, v] for v, ci in zip(values, cis)]
    return [[v - lo for v, (lo, _) in zip(values, cis)], [hi - v for v, (_, hi) in zip(values, cis)]]


def ladder_chart(task_name: str, tests: dict[str, RungResult], metric: str) -> Figure:
    """Headline metric per rung with its 95% interval, and the prompt tokens each rung costs."""
    rungs = [r for r in RUNG_TITLES if r in tests]
    values = [tests[r].value(metric) for r in rungs]
    errors = error_bars(values, [tests[r].ci95.get(metric) for r in rungs])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(rungs)), 3.4))  # room for every rung's label
    bars = ax.bar(
        [RUNG_TITLES[r] for r in rungs], values, yerr=errors, capsize=6, color=[RUNG_COLORS[r] for r in rungs]
    )
    for bar, r, value in zip(bars, rungs, values):
        tokens = tests[r].prompt_tokens_mean
        label = f"{value:.2f}" + (f"\n{tokens:.0f} prompt tok" if tokens is not None else "")
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, 0.02),
            ha="center",
            va="bottom",
            fontsize=8,
            color="white",
            fontweight="bold",
        )
    ax.set_ylim(0, 1)
    ax.set_ylabel(METRIC_WORDS.get(metric, metric))
    ax.set_title(f"{task_name}: test {METRIC_WORDS.get(metric, metric)} (95% CI)")
    fig.tight_layout()
    return fig


MAX_INCHES = 14.0  # the confusion heatmap's largest side


def confusion_heatmap(task_name: str, confusion: dict) -> Figure:
    """The fine-tuned model's confusion matrix (gold rows, predicted columns) with counts in the
    cells; up to MAX_MATRIX_LABELS labels (past them, top_confusions_chart)."""
    labels, matrix = confusion["labels"], confusion["matrix"]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(min(1.1 * n + 2.2, MAX_INCHES), min(1.0 * n + 1.6, MAX_INCHES)))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    top = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    ax.set_title(f"{task_name}: confusion (fine-tuned)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def top_confusions_chart(task_name: str, confusion: dict) -> Figure:
    """Past MAX_MATRIX_LABELS labels: the most frequent mistakes as bars (gold → predicted), which a
    reader can act on; a 77×77 matrix is a moiré of colours."""
    pairs = top_confusions(confusion["labels"], confusion["matrix"])
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * max(len(pairs), 1)))
    names = [f"{table_cell(gold, 34)} → {table_cell(predicted, 34)}" for gold, predicted, _, _ in pairs]
    ax.barh(range(len(pairs)), [n for _, _, n, _ in pairs], color=RUNG_COLORS["fine_tuned"])
    ax.set_yticks(range(len(pairs)), names, fontsize=8)
    ax.invert_yaxis()  # the most frequent mistake on top
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    total = sum(sum(row) for row in confusion["matrix"])
    ax.set_title(f"{task_name}: the fine-tuned model's {len(pairs)} most frequent mistakes")
    ax.set_xlabel(f"test rows (of {total})")
    if not pairs:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def forgetting_chart(forgetting: dict[str, ProbeResult]) -> Figure:
    """Retention (after / before, 1 = unchanged; for perplexity before / after) per probe."""
    names = [n for n, e in forgetting.items() if e.retention is not None]
    values = [forgetting[n].retention for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.4))
    colors = ["#2f9e44" if v >= 0.98 else "#f59f00" if v >= 0.9 else "#e03131" for v in values]
    ax.barh(names, values, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, max([1.1, *[v * 1.1 for v in values]]))
    ax.set_xlabel("retention (1.0 = general ability unchanged)")
    ax.set_title("catastrophic forgetting probes")
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as a PNG file's bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """A PNG as a data URI, so report.html needs no files beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def close(fig: Figure) -> None:
    """Free the figure: pyplot keeps every open figure alive until it is closed."""
    plt.close(fig)


def variants_chart(variants: dict, base: dict, metric: str) -> Figure:
    """An experiment's variants: the primary task's metric with its 95% interval, and the
    untouched model's zero- and few-shot lines for reference."""
    names = list(variants)
    values = [variants[n][metric] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names) + 2), 3.6))
    ax.bar(
        names,
        values,
        yerr=error_bars(values, [variants[n].get("ci95") for n in names]),
        capsize=6,
        color=RUNG_COLORS["fine_tuned"],
    )
    _base_lines(ax, base, metric)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.2f}", (i, 0.02), ha="center", va="bottom", fontsize=9, color="white")
    ax.set_ylabel(f"test {metric}")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def curve_chart(points: list[dict], base: dict, metric: str) -> Figure:
    """The data-efficiency curve: test metric (95% interval) by training rows."""
    rows = [p["train_rows"] for p in points]
    values = [p[metric] for p in points]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.errorbar(
        rows,
        values,
        yerr=error_bars(values, [p.get("ci95") for p in points]),
        fmt="o-",
        capsize=5,
        color=RUNG_COLORS["fine_tuned"],
        label="fine-tuned",
    )
    _base_lines(ax, base, metric)
    ax.set_xscale("log")
    ax.set_xticks(rows, [str(r) for r in rows])
    ax.minorticks_off()
    ax.set_xlabel("training rows (log scale)")
    ax.set_ylabel(f"test {metric}")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _base_lines(ax, base: dict, metric: str) -> None:
    for rung, m in base.items():
        # The majority line is the number any model must beat: dotted, dark enough to see.
        color, style = ("#6b6b6b", ":") if rung == "majority" else (RUNG_COLORS[rung], "--")
        ax.axhline(m[metric], color=color, linestyle=style, linewidth=1.2, label=RUNG_TITLES[rung])


def reliability_chart(task_name: str, calibration: dict) -> Figure:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), bin sizes as
    bar widths' labels: where the fine-tuned model's label probabilities can be trusted."""
    bins = calibration["bins"]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], linestyle="--", color="#9aa5b1", linewidth=1, label="perfectly calibrated")
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(
        centers,
        [b["accuracy"] for b in bins],
        width=[b["high"] - b["low"] for b in bins],
        color=RUNG_COLORS["fine_tuned"],
        alpha=0.75,
        edgecolor="white",
        label="accuracy in bin",
    )
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="#1b5e20", markersize=4)
    for c, b in zip(centers, bins):
        ax.annotate(str(b["count"]), (c, min(b["accuracy"] + 0.02, 0.95)), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (probability of the predicted label)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{task_name}: ECE {calibration['ece']:.3f} (rows per bin above bars)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def make_figures(result: RunResult) -> dict[str, Figure]:
    """Every figure the run's results support, by key (plots/<key>.png, the report's img blocks)."""
    figures = {}
    training = result.training
    if training and training.epochs:
        figures["training_curves"] = training_curves(training.epochs, training.best_epoch)
    for name, task in result.tasks.items():
        figures.update(task_figures(name, task))
    forgetting = result.forgetting or {}
    if any(e.retention is not None for e in forgetting.values()):
        figures["forgetting"] = forgetting_chart(forgetting)
    return figures


def task_figures(name: str, task: TaskResult) -> dict[str, Figure]:
    """One task's ladder (in the verdict's lead metric) and, for a fine-tuned classifier, its
    confusion matrix (or top confusions) and reliability."""
    figures, tests = {}, task.test
    if tests:
        figures[f"ladder_{name}"] = ladder_chart(name, tests, lead_metric(task)[0])
    ft = tests.get("fine_tuned")
    if ft and ft.confusion_matrix is not None:
        # A 77x77 matrix once drew an 87-inch figure with 5,929 numbers for a minute and a half.
        many = len(ft.confusion_matrix["labels"]) > MAX_MATRIX_LABELS
        chart = top_confusions_chart if many else confusion_heatmap
        figures[f"confusion_{name}"] = chart(name, ft.confusion_matrix)
    if ft and ft.calibration and ft.calibration.get("bins"):
        figures[f"calibration_{name}"] = reliability_chart(name, ft.calibration)
    return figures
