"""Callbacks: the last checkpoint for exact resume, step timing, stop requests, and the
training curves (step loss, learning rate) TensorBoard gets whatever log_every_n_steps says."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import (
    Callback,
    Checkpoint,
)

from runner.errors import Interrupted


@dataclass
class StopRequest:
    """A signal that arrived during training: the step in progress finishes, a checkpoint is
    saved, then the run stops (`LastCheckpoint`). Outside training a signal stops at once."""

    training: bool = False
    signum: int | None = None


STOP = StopRequest()


class LastCheckpoint(Checkpoint):
    """checkpoints/last.ckpt, what --resume continues from (weights, optimizer, scheduler,
    early-stopping state, data position, random generators, every epoch's losses): rewritten
    at every epoch's end, on the `checkpointing` schedule within epochs, and after the step in
    progress when Ctrl-C or SIGTERM arrives, which then stops the run. Written to a temporary
    file and renamed, so a kill mid-write leaves the previous one whole.

    A `Checkpoint` subclass: Lightning runs it after the other callbacks, so the early-stopping
    and best-checkpoint state it saves is this epoch's."""

    def __init__(self, path: Path, every_n_steps: int | None, every_n_minutes: float | None) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self.every_seconds = every_n_minutes * 60 if every_n_minutes else None
        self._saved_at = time.monotonic()

    def on_train_start(self, trainer, module) -> None:
        self._saved_at = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        by_steps = self.every_n_steps and trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0
        by_time = self.every_seconds and time.monotonic() - self._saved_at >= self.every_seconds
        # Saving is a collective (a barrier on every rank): every rank must decide alike, but a
        # signal may reach one rank only (or each at another step) and the ranks' clocks differ.
        stop, due = agree(trainer, STOP.signum is not None, bool(by_steps or by_time) and not trainer.is_last_batch)
        if stop:
            self.save(trainer)
            raise Interrupted(STOP.signum or signal.SIGTERM)
        if due:  # the epoch's end saves the last batch's state
            self.save(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        self.save(trainer)

    def save(self, trainer) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        self._saved_at = time.monotonic()


def agree(trainer, *flags: bool) -> tuple[bool, ...]:
    """Flags true on any rank, true on every rank: one small collective that all ranks reach."""
    if trainer.world_size == 1:
        return flags
    values = torch.tensor([float(f) for f in flags], device=trainer.strategy.root_device)
    summed = trainer.strategy.reduce(values, reduce_op="sum")
    return tuple(bool(v > 0) for v in summed.tolist())


class StepTimer(Callback):
    """(seconds, padded tokens, real tokens) of every training batch, optimizer step included."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int, int]] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        seconds = time.perf_counter() - self._started
        self.steps.append((seconds, batch["input_ids"].numel(), int(batch["attention_mask"].sum())))


class TrainingCurves(Callback):
    """train/loss and train/learning_rate in TensorBoard at every step Lightning logs
    (trainer.log_every_n_steps) and at every epoch's last step whatever that says, so a short
    run still has curves. The learning rate is the one the step trained with.

    Rank-safe: it reads values every rank already holds (the step loss is the global batch's,
    reduced in training_step) and runs no collective; only rank 0's logger writes."""

    def __init__(self) -> None:
        self._lr = 0.0
        self._pending: tuple[int, float, torch.Tensor] | None = None  # a step not written yet

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero or trainer.logger is None or not isinstance(outputs, dict):
            return
        # The step Lightning itself logs this batch's metrics at (batches so far, this one excluded).
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        self._pending = (step, self._lr, outputs["loss"])
        every = trainer.log_every_n_steps
        if (every and (step + 1) % every == 0) or trainer.should_stop or trainer.is_last_batch:
            self._write(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        # An epoch cut short (training.max_steps, max_time) ends on a batch that was not its last.
        if self._pending is not None:
            self._write(trainer)

    def _write(self, trainer) -> None:
        step, lr, loss = self._pending
        trainer.logger.log_metrics({"train/loss": float(loss), "train/learning_rate": lr}, step=step)
        self._pending = None
