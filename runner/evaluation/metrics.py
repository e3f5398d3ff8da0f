"""Metrics on predictions: accuracy, macro F1, token F1, KL divergence."""

from __future__ import annotations

import re
import string
from collections import Counter

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

PUNCTUATION = set(string.punctuation)


def squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD's token-level F1: the harmonic mean of the precision and recall of the shared
    tokens (as bags). Partial credit where exact match gives none: "in 1905" vs "1905" is 0.67."""
    predicted, expected = squad_tokens(prediction), squad_tokens(gold)
    if not predicted or not expected:
        return float(predicted == expected)
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def normalize_answer(text: str) -> str:
    """Case-fold, collapse whitespace, drop surrounding punctuation: for exact match."""
    return re.sub(r"\s+", " ", text).strip().strip(".,;:!?\"'").strip().casefold()


def kl_divergence(base_logprobs: torch.Tensor, tuned_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(base || tuned) in nats: how far fine-tuning moved each next-token distribution."""
    return F.kl_div(tuned_logprobs, base_logprobs, log_target=True, reduction="none").sum(-1)


def classification_metrics(preds: torch.Tensor, gold: torch.Tensor, labels: tuple[str, ...]) -> dict:
    """Accuracy, macro-F1 (over classes present in gold or predictions), per-class P/R, confusion matrix."""
    k = len(labels)
    precision = multiclass_precision(preds, gold, num_classes=k, average="none", zero_division=0)
    recall = multiclass_recall(preds, gold, num_classes=k, average="none", zero_division=0)
    f1 = multiclass_f1_score(preds, gold, num_classes=k, average="none", zero_division=0)
    present = torch.zeros(k, dtype=torch.bool)
    present[gold] = True
    present[preds] = True
    return {
        "accuracy": float(multiclass_accuracy(preds, gold, num_classes=k, average="micro")),
        "f1_macro": float(f1[present].mean()),
        "n": int(gold.numel()),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int((gold == i).sum())}
            for i, (label, p, r, f) in enumerate(zip(labels, precision, recall, f1))
        },
        "confusion_matrix": {
            "labels": list(labels),
            "rows_are": "gold",
            "matrix": multiclass_confusion_matrix(preds, gold, num_classes=k).tolist(),
        },
    }
