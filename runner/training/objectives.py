"""Training objectives: what a batch's loss is, looked up by `training.objective`.

An objective gives per-unit losses for a (micro-)batch and the batch's weight, the number of
units its mean is taken over (loss tokens for SFT; a preference objective would count pairs).
The module sums each rank's losses and divides by the weight summed over every rank and
micro-batch, so the loss is the mean over the whole global batch whatever the objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from runner.data.encode import IGNORE_INDEX
from runner.model.forward import completion_targets, completion_token_losses


def sft_losses(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Supervised fine-tuning: next-token cross-entropy on the completion tokens only (the
    prompt is context, never a target), each token weighted by its row's class weight when
    training.class_balance gives one."""
    losses, rows = completion_token_losses(model, batch)
    if "weight" in batch:
        losses = losses * batch["weight"][rows]
    return losses


def count_targets(batch: dict) -> int:
    """Completion tokens the loss is taken over."""
    return int((completion_targets(batch) != IGNORE_INDEX).sum())


def target_weight(batch: dict) -> float:
    """The batch's loss tokens, each counted with its row's class weight (1 without one)."""
    if "weight" not in batch:
        return float(count_targets(batch))
    per_row = (completion_targets(batch) != IGNORE_INDEX).sum(1)
    return float((per_row * batch["weight"]).sum())


@dataclass(frozen=True)
class Objective:
    """One training objective: per-unit losses of a batch, and the batch's weight in units."""

    losses: Callable[[torch.nn.Module, dict], torch.Tensor]
    weight: Callable[[dict], float]


# training.objective -> how a batch is scored for training (the schema's enum names the same;
# a test keeps them in step). Preference objectives (DPO, ORPO) are entries here.
OBJECTIVES = {"sft": Objective(losses=sft_losses, weight=target_weight)}
