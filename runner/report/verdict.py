"""The verdict at the top of a run's report: per task, did fine-tuning beat the best thing a user
could have had without it, by how much and how sure; then what it cost and what it did to the
model's general abilities. A reader who stops after this block can act on it.

Which metric leads: accuracy, unless the test labels are imbalanced. With 89% of tickets in one
class, majority / TF-IDF / fine-tuned read 0.89 / 0.92 / 0.94 in accuracy but 0.24 / 0.40 / 0.50
in macro-F1: accuracy rewards answering the common label, so it hides what a reader needs to see.
"""

from __future__ import annotations

import datetime as dt

from runner.report.cells import count, duration, interval, memory, plural, share, signed
from runner.report.sentences import probe_verdict
from runner.report.task_blocks import RUNG_TITLES, RUNGS, with_ci
from runner.results import Delta, RunResult, TaskResult

BASELINES = ("majority", "baseline_tfidf", "base_zero_shot", "base_few_shot")
SHORT = {
    "majority": "majority",
    "baseline_tfidf": "TF-IDF",
    "base_zero_shot": "zero-shot",
    "base_few_shot": "few-shot",
    "fine_tuned": "fine-tuned",
}
METRIC_WORDS = {"accuracy": "accuracy", "f1_macro": "macro-F1", "exact_match": "exact match", "token_f1": "token F1"}

# Labels are imbalanced, and macro-F1 leads, when the largest label's share of the test rows is at
# least 1.5× an even share (capped at 75%, so two labels need a 75/25 split): 50% of three labels,
# 37.5% of four, 2% of 77.
IMBALANCE_FACTOR, IMBALANCE_CAP = 1.5, 0.75


def verdict_blocks(result: RunResult) -> list[tuple]:
    """The report's first section: one verdict per task, then cost and forgetting in a line each."""
    if result.status != "complete":
        reason = f": {result.error}" if result.error else ""
        return [("h2", "Verdict"), ("p", f"**No verdict: the run is {result.status}{reason}.**")]
    blocks: list[tuple] = [("h2", "Verdict")]
    for name, task in result.tasks.items():
        if task.test:
            blocks += task_verdict(name, task, len(result.tasks) > 1)
    if result.mode == "train":
        blocks.append(("p", cost_line(result)))
        blocks.append(("p", forgetting_line(result)))
    return blocks


def lead_metric(task: TaskResult) -> tuple[str, str]:
    """The metric the verdict leads with, and why (an empty reason for the plain case)."""
    if task.kind != "classification":
        return "exact_match", ""
    largest, label = largest_share(task)
    k = len(task.labels or []) or 2
    if largest is not None and largest >= min(IMBALANCE_CAP, IMBALANCE_FACTOR / k):
        return "f1_macro", (
            f"led by macro-F1: `{label}` is {share(largest)} of the test rows, {largest * k:.1f}× an even share "
            f"of {k} labels, and accuracy rewards answering it"
        )
    return "accuracy", ""


def largest_share(task: TaskResult) -> tuple[float | None, str | None]:
    """The largest label's share of the scored test rows (from the majority rung, which always
    answers it, else from the test split's label counts)."""
    majority = task.test.get("majority")
    if majority is not None and majority.accuracy is not None and majority.answer is not None:
        return majority.accuracy, majority.answer
    counts = (task.data.get("label_counts") or {}).get("test")
    if not counts or not sum(counts.values()):
        return None, None
    label = max(counts, key=counts.get)
    return counts[label] / sum(counts.values()), label


def task_verdict(name: str, task: TaskResult, several: bool) -> list[tuple]:
    """One task's verdict sentence and its ladder on one line."""
    metric, why = lead_metric(task)
    words = METRIC_WORDS[metric]
    where = f"`{name}`: " if several else ""
    tuned = task.test.get("fine_tuned")
    scored = {r: task.test[r] for r in BASELINES if r in task.test and task.test[r].value(metric) is not None}
    if tuned is None or tuned.value(metric) is None:
        return [
            ("p", upper_first(f"{where}the base model only (no fine-tuned model in this run); its scores are below."))
        ]
    if not scored:
        text = (
            f"**{where}fine-tuned {words} {with_ci(tuned, metric)}.** No baseline was scored "
            "(evaluation.baselines), so nothing here says whether fine-tuning was needed."
        )
        return [("p", text)]
    best = max(scored, key=lambda r: scored[r].value(metric))
    delta = task.deltas.get(f"fine_tuned - {best}", {}).get(metric)
    diff = tuned.value(metric) - scored[best].value(metric)
    text = upper_first(headline(where, words, best, delta, diff))
    text += (
        f" The fine-tuned model scores {with_ci(tuned, metric)} against {scored[best].value(metric):.3f} "
        f"for the best baseline, {RUNG_TITLES[best]}: {difference(delta, diff, tuned.n)}."
    )
    if why:
        text += f" ({upper_first(why)}; accuracy {tuned.accuracy:.3f} vs {scored[best].accuracy:.3f}.)"
    ladder = " · ".join(
        (
            f"**{SHORT[r]} {task.test[r].value(metric):.3f}**"
            if r == "fine_tuned"
            else f"{SHORT[r]} {task.test[r].value(metric):.3f}"
        )
        for r in RUNGS
        if r in task.test and task.test[r].value(metric) is not None
    )
    return [("p", text), ("p", f"{words[0].upper()}{words[1:]} by rung: {ladder}.")]


def headline(where: str, words: str, best: str, delta: Delta | None, diff: float) -> str:
    """The sentence a reader acts on, in bold: pays, loses, or cannot be told apart."""
    rival = RUNG_TITLES[best]
    if delta is None:
        verb = "scores higher than" if diff > 0 else "does not beat"
        return f"**{where}the fine-tuned model {verb} {rival} (no interval: evaluation.bootstrap_samples is 0).**"
    low, high = delta.ci95
    if low > 0:
        return f"**{where}fine-tuning pays: it beats {rival}, the best baseline, on {words}.**"
    if high < 0:
        return (
            f"**{where}fine-tuning does not pay: {rival} is better on {words}.** Use it, or change the "
            "training (more epochs, another learning rate or method) and compare again."
        )
    return (
        f"**{where}no clear winner: the test rows cannot tell the fine-tuned model from {rival} on {words}.** "
        f"More test rows would decide it; until then {rival}, which needs no fine-tuning, is the safer choice."
    )


def upper_first(text: str) -> str:
    """The first letter in upper case, past any Markdown marks (`**`)."""
    i = len(text) - len(text.lstrip("*"))
    return text[:i] + text[i : i + 1].upper() + text[i + 1 :]


def difference(delta: Delta | None, diff: float, n: int | None) -> str:
    """The paired difference with its interval, in words."""
    if delta is None:
        return f"{signed(diff)}"
    rows = f" on {plural(n, 'test row')}" if n else ""
    return f"{signed(delta.delta)} (paired 95% CI {interval(delta.ci95)}{rows})"


def cost_line(result: RunResult) -> str:
    """Training time and speed, peak memory, the trainable share, and the whole run's wall time."""
    cost = result.cost
    parts = []
    if cost.train_seconds is not None:
        speed = f" at {cost.tokens_per_second:,.0f} tokens/s" if cost.tokens_per_second else ""
        parts.append(f"training {duration(cost.train_seconds)}{speed}")
    if cost.peak_rss_mb is not None:
        parts.append(f"peak memory {memory(cost.peak_rss_mb)}")
    if cost.trainable_params is not None and cost.total_params:
        parts.append(
            f"{count(cost.trainable_params)} trainable parameters "
            f"({share(cost.trainable_params / cost.total_params)} of {count(cost.total_params)})"
        )
    wall = wall_seconds(result)
    if wall is not None and cost.before_resume:  # started_at is the resume's
        earlier = sum(cost.before_resume.values())
        parts.append(f"{duration(wall)} since the resume, after {duration(earlier)} of stages before it")
    elif wall is not None:
        parts.append(f"{duration(wall)} for the whole run")
    return "**Cost:** " + ("; ".join(parts) if parts else "not measured") + "."


def wall_seconds(result: RunResult) -> float | None:
    """The run's wall time from its start and finish stamps (None when either is missing)."""
    try:
        start = dt.datetime.fromisoformat(result.started_at)
        end = dt.datetime.fromisoformat(result.finished_at)
    except (TypeError, ValueError):
        return None
    return max((end - start).total_seconds(), 0.0)


def forgetting_line(result: RunResult) -> str:
    """Which probes measured the model's general abilities before and after, and what they found."""
    probes = result.forgetting or {}
    if not probes:
        return "**Forgetting:** not measured (evaluation.forgetting is empty), so the cost to general abilities is unknown."
    verdicts = {name: probe_verdict(e) for name, e in probes.items()}
    measured = ", ".join(f"{name} ({e.metric})" for name, e in probes.items())
    forgot = [n for n, v in verdicts.items() if v == "forgot"]
    shifted = [n for n, v in verdicts.items() if v == "shifted"]
    if forgot:
        found = f"**forgetting on {', '.join(forgot)}**"
    elif shifted:
        found = f"no accuracy lost, general text behaviour shifted on {', '.join(shifted)}"
    else:
        found = "none measurable"
    return f"**Forgetting:** {found} — {plural(len(probes), 'probe')}: {measured}. Details in the forgetting section."
