"""The run report read as a person reads it: the verdict at the top, tables that fit the page
with 77 labels, numbers in words and units (built from typed results: no model, milliseconds)."""

from __future__ import annotations

import re

import pytest

from runner.report import figures as plots
from runner.report.document import document
from runner.report.figures import make_figures
from runner.report.html import to_html, to_markdown
from runner.report.verdict import lead_metric, verdict_blocks
from runner.results import Cost, Delta, ProbeResult, RungResult, RunResult, TaskResult, TrainingResult


def rung(accuracy: float, f1: float, n: int = 300, ci: float = 0.05, **extra) -> RungResult:
    return RungResult(
        n=n,
        accuracy=accuracy,
        f1_macro=f1,
        prompt_tokens_mean=0.0,
        prompts_truncated=0,
        ci95={"accuracy": [accuracy - ci, accuracy + ci], "f1_macro": [f1 - ci, f1 + ci]},
        **extra,
    )


def delta(value: float, low: float, high: float) -> Delta:
    return Delta(delta=value, ci95=[low, high], excludes_zero=low > 0 or high < 0)


def tickets(tuned_f1: float = 0.50, low: float = 0.05, high: float = 0.15, labels: int = 3) -> RunResult:
    """A run on support tickets with 89% in one class: accuracy's ladder hides what macro-F1 shows."""
    names = ["low", "medium", "high", *(f"intent_{i}" for i in range(labels - 3))]
    matrix = [[(5 if i == j else (2 if j == (i + 1) % labels else 0)) for j in range(labels)] for i in range(labels)]
    per_class = {name: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 7} for name in names}
    tuned = rung(0.94, tuned_f1, per_class=per_class, confusion_matrix={"labels": names, "matrix": matrix})
    task = TaskResult(
        kind="classification",
        data={"rows": 1000, "train": 600, "val": 99, "test": 301, "label_counts": {"test": {"low": 268}}},
        labels=names,
        test={
            "majority": rung(0.89, 0.24, answer="low"),
            "baseline_tfidf": rung(0.92, 0.40),
            "base_zero_shot": rung(0.30, 0.11),
            "fine_tuned": tuned,
        },
        deltas={
            "fine_tuned - baseline_tfidf": {"accuracy": delta(0.02, -0.01, 0.05), "f1_macro": delta(0.10, low, high)},
            "fine_tuned - majority": {"accuracy": delta(0.05, 0.02, 0.08), "f1_macro": delta(0.26, 0.2, 0.3)},
        },
        samples=[{"row": 3, "input": "Ticket: printer on fire", "gold": "high", "prediction": "high", "correct": True}],
    )
    return RunResult(
        name="tickets",
        mode="train",
        run_dir="runs/tickets/1",
        primary_task="urgency",
        model={"source": "random-tiny", "method": "lora"},
        status="complete",
        started_at="2026-12-03T10:00:00+00:00",
        finished_at="2026-12-03T10:19:30+00:00",
        tasks={"urgency": task},
        training=TrainingResult(
            1, 0, 0.77, None, None, False, False, 91, None, None, [{"epoch": 0, "train_loss": 0.9}]
        ),
        forgetting={
            "general_mc": ProbeResult(
                kind="multiple_choice",
                metric="accuracy",
                before=0.5,
                after=0.49,
                delta=-0.01,
                retention=0.98,
                details_before={},
                details_after={},
            )
        },
        forgetting_summary="No measurable forgetting.",
        cost=Cost(train_seconds=870.0, peak_rss_mb=5734.0, trainable_params=921_600, total_params=135_436_800),
    )


def text_of(blocks: list[tuple]) -> str:
    return "\n".join(str(b[1]) for b in blocks if b[0] in ("p", "h2"))


def test_the_verdict_comes_first_and_leads_with_macro_f1_when_one_label_dominates() -> None:
    result = tickets()
    blocks = document(result, {})
    first_task = next(i for i, b in enumerate(blocks) if b[0] == "h2" and b[1].startswith("Task"))
    assert ("h2", "Verdict") in blocks[:first_task]
    assert lead_metric(result.tasks["urgency"])[0] == "f1_macro"
    verdict = text_of(verdict_blocks(result))
    assert "**Fine-tuning pays: it beats TF-IDF + logistic regression, the best baseline, on macro-F1.**" in verdict
    assert "+0.100 (paired 95% CI +0.050..+0.150 on 300 test rows)" in verdict
    assert "`low` is 89% of the test rows" in verdict
    assert "training 14.5 min" in verdict and "peak memory 5.6 GB" in verdict and "921.6 K trainable" in verdict
    assert "0.68% of 135.4 M" in verdict and "19.5 min for the whole run" in verdict
    assert "**Forgetting:** none measurable — 1 probe: general_mc (accuracy)" in verdict


@pytest.mark.parametrize(
    ("low", "high", "words"),
    [
        (-0.20, -0.05, "Fine-tuning does not pay: TF-IDF + logistic regression is better on macro-F1."),
        (-0.05, 0.15, "No clear winner: the test rows cannot tell the fine-tuned model from TF-IDF"),
    ],
)
def test_the_verdict_says_when_fine_tuning_loses_or_cannot_be_told_apart(low: float, high: float, words: str) -> None:
    assert words in text_of(verdict_blocks(tickets(low=low, high=high)))


def test_balanced_labels_lead_with_accuracy_and_a_failed_run_has_no_verdict() -> None:
    result = tickets()
    result.tasks["urgency"].test["majority"] = rung(0.40, 0.19, answer="low")  # 40% of 3 labels: balanced
    assert lead_metric(result.tasks["urgency"])[0] == "accuracy"
    result.status, result.error = "failed", "out of memory"
    assert text_of(verdict_blocks(result)).endswith("**No verdict: the run is failed: out of memory.**")


def test_seventy_seven_labels_fit_the_page_and_the_confusion_figure_stays_small() -> None:
    result = tickets(labels=77)
    figures = make_figures(result)
    pngs = {key: plots.png_bytes(fig) for key, fig in figures.items()}
    for fig in figures.values():
        plots.close(fig)
    assert len(pngs["confusion_urgency"]) <= 300_000
    blocks = document(result, pngs)
    tables = [b for b in blocks if b[0] == "table"]
    # No table is wider than a handful of columns: labels are rows, never columns.
    assert max(len(header) for _, header, _ in tables) <= 7
    top = next(t for t in tables if t[1][0] == "gold")
    assert top[1] == ["gold", "predicted instead", "rows", "share of gold's rows"] and len(top[2]) == 20
    assert top[2][0][2] == 2 and top[2][0][3] == "29%"  # 2 of the gold label's 7 rows
    page = to_html(blocks, {k: plots.data_uri(v) for k, v in pngs.items()}, "tickets")
    assert page.count("<table>") == page.count('<div class="tbl') > 0  # every table scrolls inside the page
    assert '<div class="tbl long">' in page  # a 77-row table scrolls in its own box


def test_numbers_read_as_numbers_not_as_python_spells_them() -> None:
    markdown = to_markdown(document(tickets(), {}), {})
    assert not re.search(r"\b(True|False|None)\b", markdown)
    assert (
        "Ran 1 epoch (91 steps); the best was epoch 0 (val loss 0.7700); it ran every epoch it was given." in markdown
    )
    assert "| train time | 14.5 min |" in markdown and "| peak memory (RSS) | 5.6 GB |" in markdown
    assert "| 3 | Ticket: printer on fire | high | high | ✓ |" in markdown  # samples show their input
    assert "| fine-tuned − TF-IDF + logistic regression | +0.020 [−0.010, +0.050] | +0.100 [+0.050, +0.150] ✓ |" in (
        markdown
    )
