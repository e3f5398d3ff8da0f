"""Seeded bootstrap confidence intervals: test sets are small, so every metric carries one."""

from __future__ import annotations

import torch

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
    return torch.nn.functional.one_hot(values, num_classes).float()


def interval(samples: torch.Tensor) -> list[float]:
    """The central 95% of the resampled values."""
    lo, hi = torch.quantile(samples.double(), torch.tensor([0.025, 0.975], dtype=torch.double))
    return [round(float(lo), 4), round(float(hi), 4)]


def excludes_zero(ci: list[float]) -> bool:
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
