"""The LightningModule that fine-tunes: one optimizer step per global batch, the loss looked
up in the objectives table."""

from __future__ import annotations

import contextlib
import random

import lightning as L
import torch
from lightning.pytorch.strategies import ParallelStrategy
from torchmetrics.aggregation import MeanMetric
from transformers import get_scheduler

from runner.errors import RunnerError
from runner.model.forward import completion_token_losses
from runner.spec.types import TrainingSpec
from runner.training.objectives import OBJECTIVES, count_targets


def rng_states() -> dict:
    """The random number generators training draws from (dropout, the data loader's seed)."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore rng_states() on resume, so dropout and sampling continue as if never stopped."""
    torch.set_rng_state(states["torch"])
    random.setstate(_as_tuples(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def monitor_key(training: TrainingSpec, primary: str) -> tuple[str, str]:
    """The logged value that picks the best checkpoint and stops early, and its mode: always the
    primary task's own validation score (a mixture's loss would let other sets decide)."""
    return f"val/{primary}/{training.monitor}", "min" if training.monitor == "loss" else "max"


class FineTuner(L.LightningModule):
    """Trains the wrapped model on completion tokens; logs train/val loss per task."""

    def __init__(
        self,
        model: torch.nn.Module,
        training: TrainingSpec,
        task_names: list[str],
        save_frozen: bool,
        primary: str | None = None,
        val_scorer=None,
    ) -> None:
        super().__init__()
        # Manual optimisation: a batch above training.max_batch_tokens is split into
        # micro-batches whose gradients add up to the whole batch's before one optimizer step.
        self.automatic_optimization = False
        self.model = model
        self.training_spec = training
        self.objective = OBJECTIVES[training.objective]  # what a batch's loss is
        self.task_names = task_names
        self.save_frozen = save_frozen
        self.primary = primary or task_names[0]
        # monitor accuracy / macro_f1: (model, device) -> the primary task's val metrics
        self.val_scorer = val_scorer
        # Checkpoints of adapter runs hold only the trainable weights; the frozen base comes
        # from model.source again, so loading must not demand the missing keys.
        self.strict_loading = save_frozen
        self.train_loss = MeanMetric()
        self.train_loss.persistent(True)  # a resumed epoch's mean includes the batches before the stop
        self.val_loss = MeanMetric()
        self.val_task_loss = torch.nn.ModuleList(MeanMetric() for _ in task_names)
        self.history: dict[int, dict[str, float]] = {}
        self._rng_to_restore: dict | None = None
        self.resumed_from_step: int | None = None
        self.held_frozen: dict = {}  # frozen linear layers held in the autocast dtype (setup.frozen_weights_dtype)
        self.micro_batch_counts: list[int] = []  # per training batch on this rank (tests show ranks differ)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Restored here, not on load: creating the data loader's iterator draws from the
        # generator, as it did before this epoch's first batch in the run that was stopped.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        spec = self.training_spec
        strategy = self.trainer.strategy
        targets = count_targets(batch)
        # The loss is a mean over the (weighted) completion tokens of the whole global batch:
        # every rank divides by the sum over ranks, and scales by the world size, since DDP
        # averages the ranks' gradients. A rank with more target tokens weighs more, exactly as
        # in one process with the global batch. One collective, reached by every rank each step.
        weight = float(strategy.reduce(torch.tensor(self.objective.weight(batch), device=self.device), reduce_op="sum"))
        scale = self.trainer.world_size / max(weight, 1e-9) / spec.gradient_accumulation
        steps_now = (batch_idx + 1) % spec.gradient_accumulation == 0 or self.trainer.is_last_batch
        parts = micro_batches(batch, spec.max_batch_tokens)
        total = torch.zeros((), device=batch["input_ids"].device)
        for i, part in enumerate(parts):
            losses = self.objective.losses(self.model, part)
            # Gradients are synchronised once per optimizer step, on the step's last backward:
            # ranks split their batches into different numbers of micro-batches (by their own
            # token counts), and a sync per backward would pair one rank's second micro-batch
            # with another's next step and hang. Lightning's block_backward_sync is DDP's no_sync.
            with backward_sync(strategy, enabled=steps_now and i == len(parts) - 1):
                self.manual_backward(losses.sum() * scale)
            total += losses.detach().sum()
        # The global mean loss: every rank sees the same value, so a NaN stops all ranks at
        # the same step instead of one rank raising while the others wait in the next collective.
        loss = strategy.reduce(total, reduce_op="sum") / max(weight, 1e-9)
        if not torch.isfinite(loss):
            # Before the optimizer step: the weights are still those of the last good step.
            raise RunnerError(
                f"training stopped: the loss became {float(loss)} at step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}); the weights before it are kept, and "
                "checkpoints/last.ckpt is the last good checkpoint. Lower training.learning_rate or set "
                "training.gradient_clip (with bf16, try trainer.precision: 32-true)."
            )
        if steps_now:
            optimizer = self.optimizers()
            self.clip_gradients(optimizer, gradient_clip_val=spec.gradient_clip, gradient_clip_algorithm="norm")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self.lr_schedulers().step()
        self.micro_batch_counts.append(len(parts))
        self.train_loss.update(loss, weight=targets)
        # The progress bar's; TensorBoard's step curve is callbacks.TrainingCurves', which also
        # writes the epochs' last steps that trainer.log_every_n_steps would skip.
        self.log("train/loss", loss, prog_bar=True, logger=False, batch_size=batch["input_ids"].shape[0])
        if self.trainer.is_last_batch:
            # The epoch's mean, recorded here rather than at the epoch's end: the checkpoint
            # saved then (by LastCheckpoint, before this module's hook runs) must hold it.
            self._record_train_loss()
        return loss

    def _record_train_loss(self) -> None:
        """The epoch's mean training loss into the log and the history; the metric restarts."""
        if self.train_loss.update_count:
            value = float(self.train_loss.compute())
            # Logged for the epoch, not the step: a step value is dropped unless trainer.log_every_n_steps
            # falls on this step. Every rank holds the same value (the metric syncs in compute()).
            self.log("train/epoch_loss", value, on_step=False, on_epoch=True, batch_size=1)
            self.history.setdefault(self.current_epoch, {})["train_loss"] = value
        self.train_loss.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses, rows = completion_token_losses(self.model, batch)
        token_task = batch["task_index"][rows]
        self.val_loss.update(losses.mean(), weight=losses.numel())
        for index, metric in enumerate(self.val_task_loss):
            picked = losses[token_task == index]
            if picked.numel():
                metric.update(picked.mean(), weight=picked.numel())

    def on_validation_epoch_end(self) -> None:
        value = self.val_loss.compute()
        self.log("val/loss", value, prog_bar=True, sync_dist=False)
        logged = {}
        for name, metric in zip(self.task_names, self.val_task_loss):
            if metric.update_count:
                logged[f"val/{name}/loss"] = metric.compute()
            metric.reset()
        self.val_loss.reset()
        if self.val_scorer is not None:
            scores = self.val_scorer(self.model, self.device)
            for metric in ("accuracy", "macro_f1"):
                logged[f"val/{self.primary}/{metric}"] = torch.tensor(float(scores[metric]))
        for key, metric_value in logged.items():
            self.log(key, metric_value, sync_dist=False)
        if not self.trainer.sanity_checking:
            key, _ = monitor_key(self.training_spec, self.primary)
            entry = self.history.setdefault(self.current_epoch, {})
            entry["val_loss"] = float(value)
            entry["monitor"] = float(logged[key]) if key in logged else None

    def on_train_epoch_end(self) -> None:
        self._record_train_loss()  # an epoch cut short (max_steps, max_time); else already done

    def configure_optimizers(self):
        spec = self.training_spec
        decay, no_decay = [], []
        for param in self.model.parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 else decay).append(param)  # biases and norms
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=spec.learning_rate,
        )
        # Optimizer steps: with manual optimisation Lightning counts batches, not steps.
        total = max(1, -(-int(self.trainer.estimated_stepping_batches) // spec.gradient_accumulation))
        if spec.max_steps is not None:
            total = min(total, spec.max_steps)
        name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[spec.lr_schedule]
        scheduler = get_scheduler(
            name, optimizer, num_warmup_steps=round(spec.warmup_ratio * total), num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("runner", {})
        saved = state.get("world_size", 1)
        if saved != self.trainer.world_size:
            # The data position is per rank (each rank's share of the epoch): resumed with another
            # number of ranks, rows would be skipped or trained twice without a word.
            raise RunnerError(
                f"--resume: this run trained on {saved} rank(s), and this resume has {self.trainer.world_size}; "
                f"resume with the same trainer.devices x trainer.num_nodes ({saved} processes)."
            )
        self.history = {int(k): dict(v) for k, v in state.get("history", {}).items()}
        self._rng_to_restore = state.get("rng")
        self.resumed_from_step = checkpoint.get("global_step")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What exact resumption needs besides Lightning's own state: every epoch's losses (the
        # report covers them all) and the random generators at this step.
        checkpoint["runner"] = {"history": self.history, "rng": rng_states(), "world_size": self.trainer.world_size}
        if not self.save_frozen:
            trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if k in trainable or not k.startswith("model.")
            }


def backward_sync(strategy, enabled: bool):
    """A context in which a backward pass synchronises gradients across ranks (`enabled`) or
    only accumulates them locally (Lightning's block_backward_sync, DDP's no_sync); strategies
    without ranks always just accumulate."""
    if enabled or not isinstance(strategy, ParallelStrategy):
        return contextlib.nullcontext()
    # DDP and FSDP (every strategy runner accepts; DeepSpeed is refused) wrap the module in a
    # class with no_sync(); Lightning's block_backward_sync covers DDP alone.
    model = strategy.model
    if not hasattr(model, "no_sync"):
        raise RunnerError(
            f"trainer.strategy {type(strategy).__name__}: its model has no no_sync(), so gradients cannot be "
            "accumulated over micro-batches without a sync per backward; use 'ddp' or 'fsdp'."
        )
    return model.no_sync()


def micro_batches(batch: dict, max_tokens: int | None) -> list[dict]:
    """Split a left-padded batch into runs of rows whose padded size (rows x longest) stays
    within max_tokens; each part is cut to its own longest row. Rows are kept in order."""
    rows, width = batch["input_ids"].shape
    if max_tokens is None or rows * width <= max_tokens or rows == 1:
        return [batch]
    lengths = batch["attention_mask"].sum(-1).tolist()
    parts, start = [], 0
    while start < rows:
        end, longest = start, 0
        while end < rows and max(longest, lengths[end]) * (end - start + 1) <= max_tokens:
            longest = max(longest, lengths[end])
            end += 1
        end = max(end, start + 1)  # a single row longer than max_tokens still trains, alone
        longest = max(lengths[start:end])
        parts.append({k: v[start:end, width - longest :] if v.dim() == 2 else v[start:end] for k, v in batch.items()})
        start = end
    return parts
