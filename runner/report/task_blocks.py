"""One task's section of the run report: its data, the ladder of rungs, the paired deltas, the
fine-tuned model's per-class view and a few sample predictions."""

from __future__ import annotations

from runner.report.cells import signed, table_cell
from runner.results import RungResult, TaskResult

RUNGS = ("majority", "baseline_tfidf", "base_zero_shot", "base_few_shot", "fine_tuned")


RUNG_TITLES = {
    "majority": "majority class (no model)",
    "baseline_tfidf": "TF-IDF + logistic regression",
    "base_zero_shot": "base model, zero-shot",
    "base_few_shot": "base model, few-shot",
    "fine_tuned": "fine-tuned",
}


def task_blocks(name: str, task: TaskResult, images: dict[str, str]) -> list[tuple]:
    """The task's blocks (see document.document), in the order a reader checks them."""
    blocks: list[tuple] = [("h2", f"Task `{name}` ({task.kind})"), *data_blocks(task)]
    if task.test:
        blocks += ladder_blocks(name, task, images)
        if "fine_tuned" in task.test and task.kind == "classification":
            blocks += fine_tuned_blocks(name, task.test, images)
    if task.samples:
        blocks.append(("table", ["row", "input", "gold", "prediction (fine-tuned)", ""], sample_rows(task.samples)))
    return blocks


def sample_rows(samples: list[dict], answer_width: int = 40) -> list[list]:
    """The fine-tuned model's sample predictions as table rows: row, input, gold, prediction, ✓/✗
    (every cell one line; gold and prediction at most `answer_width` characters)."""
    return [
        [
            s["row"],
            table_cell(s.get("input", ""), 100),
            table_cell(s["gold"], answer_width),
            table_cell(s["prediction"], answer_width),
            "✓" if s["correct"] else "✗",
        ]
        for s in samples
    ]


def data_blocks(task: TaskResult) -> list[tuple]:
    """The task's data as prepared: rows per split, what was shortened, the data checks' findings
    and the label counts per split."""
    data = task.data
    truncated = data.get("truncated", {})
    if isinstance(truncated, dict):
        cut = ", ".join(f"{split} {n}" for split, n in truncated.items()) if any(truncated.values()) else "none"
    else:
        cut = str(truncated)
    blocks: list[tuple] = [
        (
            "p",
            f"Rows: {data['rows']} read → train {data['train']}, val {data['val']}, test {data['test']}; "
            f"shortened to fit max_length: {cut}.",
        )
    ]
    if data.get("label_end_token"):
        blocks.append(
            ("p", "One label's tokens begin another's, so every label is trained and scored with the end token.")
        )
    if data.get("checks"):
        rows = [
            [c["severity"], c["check"], table_cell(c["message"], 120), table_cell(", ".join(c["rows"][:5]), 80)]
            for c in data["checks"]
        ]
        blocks.append(("table", ["severity", "data check", "finding", "rows (first)"], rows))
    if data.get("label_counts"):
        # Labels as rows, splits as columns: 77 labels make a long table, never a wide one.
        splits = data["label_counts"]
        rows = [[label, *(counts.get(label, 0) for counts in splits.values())] for label in task.labels or []]
        blocks.append(("table", ["label", *(f"{split} rows" for split in splits)], rows))
    return blocks


def ladder_blocks(name: str, task: TaskResult, images: dict[str, str]) -> list[tuple]:
    """Each rung's test scores (with intervals and prompt cost), then the paired deltas between rungs."""
    metric_names = ["accuracy", "f1_macro"] if task.kind == "classification" else ["exact_match", "token_f1"]
    ladder = {rung: task.test[rung] for rung in RUNGS if rung in task.test}  # cheapest rung first
    rows = [
        [
            rung_title(rung, m),
            *(with_ci(m, k) for k in metric_names),
            f"{m.prompt_tokens_mean:.0f}",
            "—" if m.prompts_truncated is None else m.prompts_truncated,
            m.n,
        ]
        for rung, m in ladder.items()
    ]
    blocks: list[tuple] = [
        ("table", ["model", *metric_names, "prompt tokens / request", "prompts shortened", "n"], rows)
    ]
    if task.deltas:
        # One row per rung the fine-tuned model is set against, the same resampled rows for both.
        rows = []
        for label, delta in task.deltas.items():
            a, _, b = label.partition(" - ")
            title = f"{RUNG_TITLES.get(a, a)} − {RUNG_TITLES.get(b, b)}"
            rows.append([title, *(delta_cell(delta.get(m)) for m in metric_names)])
        blocks.append(("table", ["paired difference", *(f"{m} [95% CI]" for m in metric_names)], rows))
        blocks.append(
            (
                "p",
                "A difference is measured when its interval excludes zero (marked ✓); the interval is a paired "
                "bootstrap over the test rows, both models scored on the same resampled rows.",
            )
        )
    if f"ladder_{name}" in images:
        blocks.append(("img", f"ladder_{name}", f"{name}: metric per rung with token cost"))
    return blocks


def delta_cell(d) -> str:
    """A paired difference with its interval, ✓ when the interval excludes zero."""
    if d is None:
        return "—"
    mark = " ✓" if d.excludes_zero else ""
    return f"{signed(d.delta)} [{signed(d.ci95[0])}, {signed(d.ci95[1])}]{mark}"


def rung_title(rung: str, m: RungResult) -> str:
    """The rung's row title, with what a reader needs to trust its number (shots, cache)."""
    title = RUNG_TITLES[rung]
    if m.few_shot_k is not None:
        title += f" (k = {m.few_shot_k:g} on average, {m.shots_truncated or 0} shots shortened)"
    if rung == "majority" and m.answer is not None:
        title += f": always {m.answer!r}"
    if m.cached:
        title += " (cached)"
    return title


def with_ci(m: RungResult, metric: str, ci_digits: int = 3) -> str:
    """A metric with its 95% interval when the bootstrap gave one; a dash when the rung lacks it
    (`ci_digits`: the interval's decimals; `runner compare`'s narrower columns use 2)."""
    value = m.value(metric)
    if value is None:
        return "—"
    ci = m.ci95.get(metric)
    return f"{value:.3f}" + (f" [{ci[0]:.{ci_digits}f}, {ci[1]:.{ci_digits}f}]" if ci else "")


def fine_tuned_blocks(name: str, tests: dict[str, RungResult], images: dict[str, str]) -> list[tuple]:
    """A classifier's fine-tuned view: per-class scores, calibration per rung, the confusion matrix."""
    ft = tests["fine_tuned"]
    rows = [
        [
            label,
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
            f"{m['recall_ci95'][0]:.2f}..{m['recall_ci95'][1]:.2f}" if m.get("recall_ci95") else "—",
            f"{m['f1']:.3f}",
            m["support"],
        ]
        for label, m in ft.per_class.items()
    ]
    blocks: list[tuple] = [
        ("table", ["label (fine-tuned)", "precision", "recall", "recall 95% CI", "F1", "support"], rows)
    ]
    calibration = {r: tests[r].calibration["ece"] for r in RUNGS if r in tests and tests[r].calibration is not None}
    if calibration:
        blocks.append(
            (
                "p",
                "Calibration of the label probabilities (expected calibration error, 10 bins; 0 is "
                "perfect): " + ", ".join(f"{RUNG_TITLES[r]} {e:.3f}" for r, e in calibration.items()) + ".",
            )
        )
    if f"calibration_{name}" in images:
        blocks.append(("img", f"calibration_{name}", f"{name}: reliability of the fine-tuned model's probabilities"))
    if f"confusion_{name}" in images:
        blocks.append(("img", f"confusion_{name}", f"{name}: confusion matrix of the fine-tuned model"))
    labels, matrix = ft.confusion_matrix["labels"], ft.confusion_matrix["matrix"]
    if len(labels) <= MAX_MATRIX_LABELS:
        blocks.append(("table", ["gold \\ predicted", *labels], [[label, *row] for label, row in zip(labels, matrix)]))
    else:  # a 77-column matrix fits no page: the mistakes that matter, most frequent first
        rows = [
            [gold, predicted, n, f"{n / support:.0%}" if support else "—"]
            for gold, predicted, n, support in top_confusions(labels, matrix)
        ]
        blocks.append(("table", ["gold", "predicted instead", "rows", "share of gold's rows"], rows))
    return blocks


MAX_MATRIX_LABELS = 20  # past this many labels, the confusion matrix shows its top confusions


def top_confusions(labels: list[str], matrix: list[list[int]], top: int = 20) -> list[tuple[str, str, int, int]]:
    """The `top` most frequent (gold, predicted, rows, gold's rows) mistakes of a confusion matrix."""
    pairs = [
        (labels[i], labels[j], n, sum(row)) for i, row in enumerate(matrix) for j, n in enumerate(row) if i != j and n
    ]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))[:top]
