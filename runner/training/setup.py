"""Building what a run trains: the model with its method, the data module, the trainable
module — in that order, since the method changes which parameters the optimizer sees."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import warnings
from pathlib import Path

import torch

from runner.data.examples import TaskData
from runner.data.mixture import FineTuneData
from runner.errors import RunnerError
from runner.evaluation.evaluator import Evaluator
from runner.inputs import Inputs
from runner.model.load import load_model
from runner.model.methods import METHODS, apply_method
from runner.model.precision import autocast_dtype, hold_frozen_weights, resolve_precision, restore_frozen_weights
from runner.spec.types import Spec
from runner.training.memory import use_activation_checkpointing
from runner.training.module import FineTuner
from runner.training.trainer import load_weights


def quiet_libraries() -> None:
    """Keep the terminal for runner's own output and Lightning's progress bar; `runner -v`
    (RUNNER_VERBOSE) leaves the libraries as they are, `runner -q` (RUNNER_QUIET) only their errors."""
    if os.environ.get("RUNNER_VERBOSE"):
        return
    import transformers

    transformers.logging.set_verbosity_error()
    for pattern in (
        ".*does not have many workers.*",
        ".*is_gradient_checkpointing.*",
        ".*torch_dtype.*",
        ".*The number of training batches.*",
        ".*Checkpoint directory.*exists and is not empty.*",
        ".*isinstance.treespec, LeafSpec.*",
        ".*Unmerge result can be inaccurate.*",  # (IA)^3 after scoring merged: a rounding-level change
        # Mid-epoch resumption is exact: the data module's state holds the epoch's position.
        ".*your dataloader is not resumable.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    quiet = logging.ERROR if os.environ.get("RUNNER_QUIET") else logging.WARNING
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(quiet)


def prepared_model(spec: Spec) -> tuple[torch.nn.Module, object]:
    """The model as a run trains and scores it, and its tokenizer."""
    return load_model(spec.model.source, spec.seed, spec.model.tokenizer)


def make_datamodule(inputs: Inputs, spec: Spec) -> FineTuneData:
    """Training data: every task's rows (the primary task's cut to training.train_rows, sampled
    with the split seed so that every training seed sees the same rows) and replay rows."""
    training = spec.training
    return FineTuneData(
        inputs.tasks,
        inputs.encoder,
        training.batch_size,
        training.num_workers,
        training.seed,
        training.group_by_length,
        replay=inputs.replay,
        replay_spec=spec.replay,
        train_rows={spec.primary_task: training.train_rows} if training.train_rows else None,
        sample_seed=spec.seed,
        primary=spec.primary_task,
        class_balance=training.class_balance,
    )


def trainable_module(
    model: torch.nn.Module, spec: Spec, tasks: list[TaskData], evaluator: Evaluator | None = None
) -> FineTuner:
    """The LightningModule; `evaluator` scores the primary task's val split when the best
    epoch is chosen on its accuracy or macro-F1 (training.monitor)."""
    longest = max((len(e.prompt) for t in tasks for e in t.train), default=0)  # characters >= tokens
    use_activation_checkpointing(model, spec.training, min(longest, spec.model.max_length))
    scorer = None
    if spec.training.monitor != "loss" and evaluator is not None:
        primary = next(t for t in tasks if t.task.name == spec.primary_task)
        scorer = functools.partial(score_val_split, evaluator, dataclasses.replace(primary, test=primary.val))
    # Checkpoints hold only the trained weights, unless every weight trains.
    module = FineTuner(
        model,
        spec.training,
        [t.task.name for t in tasks],
        save_frozen=spec.method.kind == "full",
        primary=spec.primary_task,
        val_scorer=scorer,
    )
    module.train()  # from_pretrained returns eval mode, and Lightning keeps the modes it finds
    dtype = frozen_weights_dtype(spec)
    module.held_frozen = hold_frozen_weights(model, dtype) if dtype is not None else {}
    return module


def frozen_weights_dtype(spec: Spec) -> torch.dtype | None:
    """The dtype the frozen linear weights are held in while training (precision.hold_frozen_weights):
    the autocast dtype, for adapter methods, where that leaves every number the same. Not for
    methods that train base weights (their checkpoints hold the frozen ones too, and the best
    one is loaded after the exact weights are back), not with DoRA (it adds the frozen weight to
    the adapter's outside any matmul, so its dtype enters the numbers), not under FSDP or
    DeepSpeed (they flatten parameters of one dtype)."""
    dtype = autocast_dtype(run_precision(spec))
    method = spec.method
    if dtype is None or not METHODS[method.kind].adapter or method.settings.get("use_dora"):
        return None
    if "fsdp" in spec.trainer.strategy or "deepspeed" in spec.trainer.strategy:
        return None
    return dtype


def restore_weights(module: FineTuner, spec: Spec) -> None:
    """The exact frozen weights back after training, from the model's source (see
    frozen_weights_dtype), before anything is exported or scored."""
    if module.held_frozen:
        with torch.random.fork_rng(devices=[]):  # a generated model (random-tiny) seeds torch
            original, _ = prepared_model(spec)
        restore_frozen_weights(module.held_frozen, original)
        module.held_frozen = {}


def score_val_split(evaluator: Evaluator, val: TaskData, model: torch.nn.Module, device: torch.device) -> dict:
    """The primary task's accuracy and macro-F1 on its val split (label scoring, no shots)."""
    with evaluator.describing("validation labels"):
        metrics, _ = dataclasses.replace(evaluator, model=model, device=device).evaluate(val)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["f1_macro"]}


def load_checkpoint_model(model: torch.nn.Module, tokenizer, spec: Spec, checkpoint: Path) -> torch.nn.Module:
    """A run's `.ckpt` (tensors only, weights_only=True) or its exported `model/` folder."""
    import pickle

    from runner.terminal import printable

    if not checkpoint.exists() or (checkpoint.suffix != ".ckpt" and not checkpoint.is_dir()):
        raise RunnerError(f"--checkpoint {checkpoint}: expected a run's checkpoints/*.ckpt file or its model/ folder.")
    try:
        if checkpoint.is_dir() and (checkpoint / "adapter_config.json").is_file():
            from peft import PeftModel

            return PeftModel.from_pretrained(model, checkpoint)
        if checkpoint.is_dir():
            return load_model(str(checkpoint))[0]
        module = FineTuner(
            apply_method(model, spec.method, tokenizer), spec.training, [t.name for t in spec.tasks], save_frozen=True
        )
        load_weights(module, checkpoint)
    except (RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        reason = printable(" ".join(str(exc).split()), 300)
        raise RunnerError(f"--checkpoint {checkpoint} does not fit this spec's model and method: {reason}") from None
    return module.model


def step_counts(spec: Spec, batches_per_epoch: int) -> tuple[int, int, int]:
    """(batches per epoch, optimizer steps per epoch, optimizer steps at most)."""
    steps_per_epoch = math.ceil(batches_per_epoch / spec.training.gradient_accumulation)
    steps = spec.training.epochs * steps_per_epoch
    if spec.training.max_steps is not None:
        steps = min(steps, spec.training.max_steps)
    return batches_per_epoch, steps_per_epoch, steps


def run_header(spec: Spec, batches_per_epoch: int, trainable: int, total: int, run_dir: Path) -> str:
    """The plan's first line, printed by `runner run` before training (no timed steps)."""
    _, per_epoch, steps = step_counts(spec, batches_per_epoch)
    return (
        f"Training: {steps} optimizer steps at most ({per_epoch} per epoch, {spec.training.epochs} epochs), "
        f"{trainable:,} trainable of {total:,} parameters, {run_precision(spec)}. "
        f"Time and memory estimate: runner plan {run_dir / 'spec.yaml'}"
    )


def run_precision(spec: Spec) -> str:
    """The precision the run trains and scores at (`auto` resolved for this machine)."""
    return resolve_precision(spec.trainer.precision, spec.trainer.accelerator)
