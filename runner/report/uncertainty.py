"""Seeded bootstrap confidence intervals: test sets are small, so every metric carries one."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from runner.results import Delta, ProbeResult, TaskResult

# The paired deltas every report shows: the fine-tuned model against each rung below it.
DELTAS = (
    ("fine_tuned", "base_zero_shot"),
    ("fine_tuned", "base_few_shot"),
    ("fine_tuned", "majority"),
    ("fine_tuned", "baseline_tfidf"),
)


CHUNK = 200  # resamples per vectorised step; bounds memory at CHUNK x n x classes


def resample_indices(n: int, samples: int, seed: int) -> torch.Tensor:
    """[samples, n] row indices drawn with replacement; the same seed gives the same draws."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (samples, n), generator=generator)


def accuracy_samples(correct: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Accuracy (mean of a 0/1 vector) for every resample."""
    return correct.float()[idx].mean(dim=1)


def f1_macro_samples(preds: torch.Tensor, gold: torch.Tensor, num_classes: int, idx: torch.Tensor) -> torch.Tensor:
    """Macro-F1 over the classes present in each resample's gold or predictions."""
    out = []
    for chunk in idx.split(CHUNK):
        p = F_one_hot(preds[chunk], num_classes)
        g = F_one_hot(gold[chunk], num_classes)
        tp = (p * g).sum(1)
        fp = p.sum(1) - tp
        fn = g.sum(1) - tp
        denom = 2 * tp + fp + fn
        f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(denom))
        present = (p.sum(1) + g.sum(1)) > 0
        out.append((f1 * present).sum(1) / present.sum(1))
    return torch.cat(out)


def recall_samples(preds: torch.Tensor, gold: torch.Tensor, label: int, idx: torch.Tensor) -> torch.Tensor:
    """One class's recall for every resample that holds the class (others are dropped): small
    classes get the wide intervals they deserve."""
    support = (gold == label).float()[idx].sum(1)
    hits = ((gold == label) & (preds == label)).float()[idx].sum(1)
    return (hits / support)[support > 0]


def F_one_hot(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot rows as floats, so per-class counts over resamples are one matrix product."""
    return torch.nn.functional.one_hot(values, num_classes).float()


def interval(samples: torch.Tensor) -> list[float]:
    """The central 95% of the resampled values."""
    lo, hi = torch.quantile(samples.double(), torch.tensor([0.025, 0.975], dtype=torch.double))
    return [round(float(lo), 4), round(float(hi), 4)]


def excludes_zero(ci: list[float]) -> bool:
    """Whether an interval lies wholly on one side of zero: a difference the resampling supports."""
    return ci[0] > 0 or ci[1] < 0


def calibration(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> dict:
    """Expected calibration error (the gap between confidence and accuracy, weighted by the rows
    in each of `bins` equal-width confidence bins) and the bins themselves for a reliability plot."""
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence.clamp(0, 1), edges[1:-1], right=True)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count:
            conf, acc = float(confidence[inside].mean()), float(correct[inside].float().mean())
            ece += count / len(confidence) * abs(conf - acc)
            table.append(
                {
                    "low": round(float(edges[b]), 2),
                    "high": round(float(edges[b + 1]), 2),
                    "count": count,
                    "confidence": round(conf, 4),
                    "accuracy": round(acc, 4),
                }
            )
    return {"ece": round(ece, 4), "bins": table}


def finite(value):
    """The value with every non-finite float replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


@dataclass
class ItemScores:
    """Per-row outcomes of one rung on one task, kept for (paired) bootstraps."""

    correct: torch.Tensor  # 0/1 per test row
    preds: torch.Tensor | None = None  # class indices (classification)
    gold: torch.Tensor | None = None
    num_classes: int = 0
    token_f1: torch.Tensor | None = None  # per test row (generation)


def metric_samples(items: ItemScores, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each metric on every resample of the test rows (the same `idx` for every rung: paired)."""
    if items.preds is None:
        out = {"exact_match": accuracy_samples(items.correct, idx)}
        if items.token_f1 is not None:
            out["token_f1"] = accuracy_samples(items.token_f1, idx)  # a mean, like accuracy
        return out
    return {
        "accuracy": accuracy_samples(items.correct, idx),
        "f1_macro": f1_macro_samples(items.preds, items.gold, items.num_classes, idx),
    }


def add_uncertainty(task: TaskResult, items: dict[str, ItemScores], samples: int, seed: int) -> None:
    """ci95 on every rung's metrics, and paired-bootstrap deltas between rungs."""
    if samples <= 0 or not items:
        return
    n = len(next(iter(items.values())).correct)
    idx = resample_indices(n, samples, seed)
    drawn = {rung: metric_samples(item, idx) for rung, item in items.items()}
    for rung, metrics in drawn.items():
        task.test[rung].ci95 = {m: interval(v) for m, v in metrics.items()}
        item, per_class = items[rung], task.test[rung].per_class
        if item.preds is not None and per_class:
            for label_index, entry in enumerate(per_class.values()):
                recall = recall_samples(item.preds, item.gold, label_index, idx)
                entry["recall_ci95"] = interval(recall) if len(recall) else None
    deltas = {}
    for a, b in DELTAS:
        if a in drawn and b in drawn:
            deltas[f"{a} - {b}"] = {
                m: Delta(
                    delta=round(task.test[a].value(m) - task.test[b].value(m), 4),
                    ci95=(ci := interval(drawn[a][m] - drawn[b][m])),
                    excludes_zero=excludes_zero(ci),
                )
                for m in drawn[a]
            }
    if deltas:
        task.deltas = deltas


def forgetting_entry(
    kind: str,
    metric: str,
    higher_is_better: bool,
    before: dict,
    after: dict,
    items_before: torch.Tensor | dict | None,
    items_after: torch.Tensor | dict | None,
    samples: int,
    seed: int,
    paired=None,
    second: str | None = None,
) -> ProbeResult:
    """A one-model probe before and after, with a paired interval on the change when it scores
    items (`paired(before, after, idx)`: the change for each resample of items; default the change
    of the items' mean), and the tuned pass's `second` metric when it has one (the text kind's drift)."""
    b, a = before[metric], after[metric]
    entry = ProbeResult(
        kind=kind,
        metric=metric,
        before=round(b, 4),
        after=round(a, 4),
        delta=round(a - b, 4),
        retention=round((a / b if higher_is_better else b / a), 4) if a and b else None,
        higher_is_better=higher_is_better,
        details_before=before,
        details_after=after,
    )
    if items_before is not None and items_after is not None and samples > 0:
        n = len(next(iter(items_before.values()))) if isinstance(items_before, dict) else len(items_before)
        idx = resample_indices(n, samples, seed)
        if paired is None:
            entry.delta_ci95 = interval(accuracy_samples(items_after, idx) - accuracy_samples(items_before, idx))
        else:
            entry.delta_ci95 = interval(paired(items_before, items_after, idx))
        entry.excludes_zero = excludes_zero(entry.delta_ci95)
    if second is not None and after.get(second) is not None:
        entry.second = {"metric": second, "value": round(after[second], 6)}
    return entry


# Thresholds for the verdict (heuristics, stated in the sentence itself): perplexity on general
# text up by more than 10%, or an accuracy probe down with a paired 95% interval below zero, is
# forgetting; perplexity up by more than 2% or drift above 0.02 nats/token is a shift worth
# watching, which accuracy on a few hundred items cannot show.
PERPLEXITY_FORGETTING, PERPLEXITY_SHIFT, DRIFT_SHIFT = 0.10, 0.02, 0.02


def forgot(e: ProbeResult) -> bool:
    """Forgetting on one (non-drift) probe: perplexity up by more than PERPLEXITY_FORGETTING, or an
    accuracy down with its paired 95% interval below zero (without items: retention below 0.95)."""
    if e.metric == "perplexity":
        return e.after / e.before - 1 > PERPLEXITY_FORGETTING
    if e.excludes_zero is not None:
        return e.delta < 0 and e.excludes_zero
    return e.delta < 0 and e.retention is not None and e.retention < 0.95
