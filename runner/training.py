"""Training: a LightningModule around any causal LM, and the Trainer that fits it.

Loss is cross-entropy on completion tokens only, through the model's own forward with the
vocabulary head applied only at completion positions (`runner.forward`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Sampler
from torchmetrics.aggregation import MeanMetric
from transformers import get_scheduler
from transformers.trainer_pt_utils import get_length_grouped_indices

from runner.data import IGNORE_INDEX, Collator, Encoder, Example, TaskData, sample_indices
from runner.errors import Interrupted, RunnerError
from runner.forward import completion_targets, completion_token_losses
from runner.spec import ReplaySpec, Spec, TrainerSpec, TrainingSpec


@dataclass
class StopRequest:
    """A signal that arrived during training: the step in progress finishes, a checkpoint is
    saved, then the run stops (`LastCheckpoint`). Outside training a signal stops at once."""

    training: bool = False
    signum: int | None = None


STOP = StopRequest()


def rng_states() -> dict:
    """The random number generators training draws from (dropout, the data loader's seed)."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
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


class FineTuneData(L.LightningDataModule):
    """Tokenised train/val sets of every task (and replay rows); training mixes them by their
    shares, each epoch drawing every set's quota without replacement (`MixtureSampler`)."""

    def __init__(
        self,
        tasks: list[TaskData],
        encoder: Encoder,
        batch_size: int,
        num_workers: int,
        seed: int,
        group_by_length: bool = False,
        replay: list[Example] = (),
        replay_spec: ReplaySpec | None = None,
        train_rows: dict[str, int] | None = None,
        sample_seed: int = 0,
        primary: str | None = None,
        class_balance: str = "none",
    ) -> None:
        super().__init__()
        self.task_names = [t.task.name for t in tasks]
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.group_by_length = group_by_length
        self.collator = Collator(encoder.tokenizer.pad_token_id)
        self.class_balance = class_balance
        self.primary_index = self.task_names.index(primary) if primary in self.task_names else 0
        self.train_sets, self.val_sets = [], []
        for index, t in enumerate(tasks):
            add_eos = t.completion_eos
            train = t.train
            if train_rows and t.task.name in train_rows:
                train = train_sample(t, train_rows[t.task.name], sample_seed)
            rows = [{**encoder.encode(e, add_eos), "task_index": index} for e in train]
            if index == self.primary_index and class_balance != "none":
                label_rows(rows, train, class_balance)
            self.train_sets.append(rows)
            self.val_sets.append([{**encoder.encode(e, add_eos), "task_index": index} for e in t.val])
        self.weights = [t.task.weight for t in tasks]
        self.replay_spec = replay_spec if replay else None
        if self.replay_spec is not None:  # free text: with an end token, like generation tasks
            self.train_sets.append([{**encoder.encode(e, True), "task_index": len(tasks)} for e in replay])
        self.quotas = epoch_quotas(self.train_sets, self.weights, self.replay_spec)
        self.resume_at: dict | None = None  # {epoch, batches}: where a resumed run's epoch continues

    @property
    def train_rows(self) -> list[dict]:
        return [row for rows in self.train_sets for row in rows]

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the epoch and how many of its batches were trained, so a
        resumed run continues the same epoch order after them (the order itself depends only
        on the seed and the epoch number)."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        self.resume_at = state or None

    def pools(self) -> tuple[list[list[int]], list[int]]:
        """Index pools into `train_rows` and the rows each gives per epoch: one pool per set,
        or with class_balance 'sample' the primary task's rows as one pool per label, each
        giving an equal part of the task's quota."""
        pools, quotas, offset = [], [], 0
        for index, (rows, quota) in enumerate(zip(self.train_sets, self.quotas)):
            indices = list(range(offset, offset + len(rows)))
            offset += len(rows)
            if index == self.primary_index and self.class_balance == "sample":
                by_label: dict[int, list[int]] = {}
                for i, row in zip(indices, rows):
                    by_label.setdefault(row["class_index"], []).append(i)
                parts = [quota * (k + 1) // len(by_label) - quota * k // len(by_label) for k in range(len(by_label))]
                pools += [by_label[label] for label in sorted(by_label)]
                quotas += parts
            else:
                pools.append(indices)
                quotas.append(quota)
        return pools, quotas

    def train_dataloader(self) -> DataLoader:
        rows = self.train_rows
        pools, quotas = self.pools()
        sampler = MixtureSampler(
            pools,
            quotas,
            self.seed,
            lengths=[len(r["input_ids"]) for r in rows] if self.group_by_length else None,
            batch_size=self.batch_size,
        )
        # Each rank draws its own share of every epoch's order (runner shards, not Lightning:
        # Lightning's wrapper would reshuffle the order and undo the length grouping), so the
        # ranks' batches together are the one-process run's batches of batch_size x ranks.
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler.shard(self.trainer.global_rank, self.trainer.world_size)
        if self.resume_at:
            sampler.skip = (self.resume_at["epoch"], self.resume_at["batches"] * self.batch_size)
            self.resume_at = None
        return DataLoader(
            rows,
            sampler=sampler,
            batch_size=self.batch_size,
            collate_fn=self.collator,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        rows = [row for rows in self.val_sets for row in rows]
        return DataLoader(rows, batch_size=self.batch_size, collate_fn=self.collator, num_workers=self.num_workers)

    def mixture(self) -> dict:
        """Per epoch: rows and loss tokens of every task and of replay, and their shares."""
        names = [*self.task_names, *(["replay"] if self.replay_spec is not None else [])]
        rows = dict(zip(names, self.quotas))
        tokens = {
            name: round(quota * mean_targets(rows_of_set))
            for name, quota, rows_of_set in zip(names, self.quotas, self.train_sets)
        }
        total_rows, total_tokens = sum(rows.values()), sum(tokens.values())
        return {
            name: {
                "rows": rows[name],
                "available": len(s),
                "loss_tokens": tokens[name],
                "row_share": round(rows[name] / total_rows, 4) if total_rows else 0.0,
                "token_share": round(tokens[name] / total_tokens, 4) if total_tokens else 0.0,
            }
            for name, s in zip(names, self.train_sets)
        }


def label_rows(rows: list[dict], examples: list[Example], class_balance: str) -> None:
    """Give the primary task's encoded train rows their label, and with class_balance 'loss' the
    weight n / (k * n_label) (the rows of every label then weigh the same in total)."""
    counts = Counter(e.label for e in examples)
    for row, example in zip(rows, examples):
        row["class_index"] = example.label
        if class_balance == "loss":
            row["weight"] = len(examples) / (len(counts) * counts[example.label])


def train_sample(data: TaskData, rows: int, seed: int) -> list[Example]:
    """A seeded sample of a task's train split, stratified by label; samples of one seed are
    nested (each label's rows are taken in one shuffled order), so a learning curve adds rows."""
    strata = [e.label for e in data.train] if data.task.is_classification else None
    return [data.train[i] for i in sample_indices(len(data.train), rows, seed, strata)]


def mean_targets(rows: list[dict]) -> float:
    """Mean number of loss tokens (completion tokens) per row."""
    return sum(sum(label != IGNORE_INDEX for label in r["labels"]) for r in rows) / max(len(rows), 1)


def epoch_quotas(sets: list[list[dict]], weights: list[float | None], replay: ReplaySpec | None) -> list[int]:
    """Rows each set contributes to one epoch.

    Tasks: every row once when no task has a weight; else an epoch as long as all tasks' rows,
    task t taking share w_t (unweighted tasks keep their size share). Replay (the last set):
    `share` of the epoch's rows, or of its loss tokens, counting each set's mean completion
    length, because the loss is a mean over tokens."""
    task_sets = sets[: len(weights)]
    total = sum(len(s) for s in task_sets)
    if all(w is None for w in weights):
        quotas = [len(s) for s in task_sets]
    else:
        shares = [w if w is not None else len(s) / total for w, s in zip(weights, task_sets)]
        quotas = [max(1, round(share / sum(shares) * total)) for share in shares]
    if replay is not None:
        factor = replay.share / (1 - replay.share)
        if replay.of == "rows":
            extra = factor * sum(quotas)
        else:
            task_tokens = sum(q * mean_targets(s) for q, s in zip(quotas, task_sets))
            extra = factor * task_tokens / max(mean_targets(sets[-1]), 1e-9)
        quotas.append(max(1, round(extra)))
    return quotas


class MixtureSampler(Sampler[int]):
    """Indices into the concatenated sets: each epoch, pool s (a set's indices, or one label's)
    gives `quotas[s]` rows drawn without replacement from a seeded stream of its shuffled rows
    (a quota above the pool's size wraps into a fresh shuffle), so every row is seen about
    equally often, and a replay pool larger than its quota yields different rows each epoch.
    Length grouping (transformers' megabatches) or a plain shuffle then orders the epoch. Reseeded per epoch by `set_epoch`
    (Lightning calls it), so an epoch's order depends only on the seed and its number."""

    def __init__(
        self,
        pools: list[list[int]],
        quotas: list[int],
        seed: int,
        lengths: list[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        self.pools, self.quotas, self.seed = [list(p) for p in pools], quotas, seed
        self.lengths, self.batch_size = lengths, batch_size
        self.epoch = 0
        self.skip: tuple[int, int] | None = None  # (epoch, rows): once, where a resumed epoch continues
        self.rank, self.ranks = 0, 1

    def shard(self, rank: int, ranks: int) -> None:
        """Yield only rank `rank`'s share of each epoch: every `ranks`-th row of the order,
        padded (from its start) to a multiple of `ranks` so that every rank runs as many batches."""
        self.rank, self.ranks = rank, ranks

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-sum(self.quotas) // self.ranks)

    def __iter__(self):
        chosen: list[int] = []
        for s, (pool, quota) in enumerate(zip(self.pools, self.quotas)):
            shuffles: dict[int, list[int]] = {}
            start = self.epoch * quota  # this epoch's slice of the pool's stream
            for position in range(start, start + quota):
                number, index = divmod(position, len(pool))
                if number not in shuffles:
                    generator = torch.Generator().manual_seed(self._seed("set", s, number))
                    shuffles[number] = torch.randperm(len(pool), generator=generator).tolist()
                chosen.append(pool[shuffles[number][index]])
        generator = torch.Generator().manual_seed(self._seed("order", self.epoch))
        if self.lengths is not None:
            order = get_length_grouped_indices([self.lengths[i] for i in chosen], self.batch_size, generator=generator)
        else:
            order = torch.randperm(len(chosen), generator=generator).tolist()
        rows = [chosen[i] for i in order]
        if self.ranks > 1:
            rows += rows[: -len(rows) % self.ranks]  # every rank the same number of rows
            rows = rows[self.rank :: self.ranks]
        if self.skip is not None and self.skip[0] == self.epoch:
            rows = rows[self.skip[1] :]  # already trained before the run was stopped
        self.skip = None
        return iter(rows)

    def _seed(self, *parts) -> int:
        text = ":".join(map(str, (self.seed, *parts)))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


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
        weight = float(strategy.reduce(torch.tensor(target_weight(batch), device=self.device), reduce_op="sum"))
        scale = self.trainer.world_size / max(weight, 1e-9) / spec.gradient_accumulation
        steps_now = (batch_idx + 1) % spec.gradient_accumulation == 0 or self.trainer.is_last_batch
        parts = micro_batches(batch, spec.max_batch_tokens)
        total = torch.zeros((), device=batch["input_ids"].device)
        for i, part in enumerate(parts):
            losses, rows = completion_token_losses(self.model, part)
            if "weight" in part:
                losses = losses * part["weight"][rows]
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
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        if self.trainer.is_last_batch:
            # The epoch's mean, recorded here rather than at the epoch's end: the checkpoint
            # saved then (by LastCheckpoint, before this module's hook runs) must hold it.
            self._record_train_loss()
        return loss

    def _record_train_loss(self) -> None:
        """The epoch's mean training loss into the log and the history; the metric restarts."""
        if self.train_loss.update_count:
            value = float(self.train_loss.compute())
            self.log("train/epoch_loss", value)
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


def make_strategy(trainer: TrainerSpec):
    """The Lightning strategy by name, with trainer.collective_timeout where the strategy takes
    a process-group timeout (DDP, FSDP): a rank that never arrives then fails the run instead
    of hanging it."""
    from lightning.pytorch.strategies import StrategyRegistry

    name = trainer.strategy
    if name == "auto" or name not in StrategyRegistry:
        return name
    entry = StrategyRegistry[name]
    if "timeout" not in inspect.signature(entry["strategy"].__init__).parameters:
        return name
    return entry["strategy"](**entry["init_params"], timeout=timedelta(minutes=trainer.collective_timeout))


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


def timed_steps(module: FineTuner, datamodule: FineTuneData, spec: Spec, steps: int) -> list[tuple[float, int, int]]:
    """Train `steps` batches with the run's precision, data order and step (no validation,
    no checkpoints, nothing written) and return each batch's (seconds, padded, real tokens)."""
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=spec.trainer.accelerator,
        devices=1,
        precision=resolve_precision(spec.trainer.precision, spec.trainer.accelerator),
        max_steps=-(-steps // spec.training.gradient_accumulation),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.steps


ACTIVATION_BYTES_PER_TOKEN = 120  # x hidden size x layers: measured ~2 MB/token on SmolLM2-135M + LoRA, bf16


def use_activation_checkpointing(model: torch.nn.Module, training: TrainingSpec, longest_row: int) -> bool:
    """Turn activation checkpointing on when asked, or ("auto") when one forward/backward pass
    of activations would take more than half the memory available; returns whether it is on."""
    setting = training.activation_checkpointing
    if setting == "auto":
        config = getattr(model, "config", None)
        layers = getattr(config, "num_hidden_layers", 0) or 0
        hidden = getattr(config, "hidden_size", 0) or 0
        tokens = training.max_batch_tokens or training.batch_size * longest_row
        setting = tokens * ACTIVATION_BYTES_PER_TOKEN * hidden * layers > 0.5 * available_memory()
    if setting:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) and with Lightning.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return bool(setting)


def available_memory() -> float:
    """Bytes the system can still give this process (MemAvailable; unbounded if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


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


def target_weight(batch: dict) -> float:
    """The batch's loss tokens, each counted with its row's class weight (1 without one)."""
    if "weight" not in batch:
        return float(count_targets(batch))
    per_row = (completion_targets(batch) != IGNORE_INDEX).sum(1)
    return float((per_row * batch["weight"]).sum())


def count_targets(batch: dict) -> int:
    """Completion tokens the loss is taken over."""
    return int((completion_targets(batch) != IGNORE_INDEX).sum())


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


@dataclass
class FitResult:
    """What the report needs from training."""

    seconds: float
    epochs_run: int
    best_epoch: int | None
    best_val_loss: float | None
    monitor: str
    best_monitor: float | None
    stopped_early: bool
    stopped_by_time: bool
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    history: list[dict] = field(default_factory=list)
    tokens: int = 0
    step_seconds: float = 0.0
    global_steps: int = 0


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved Lightning precision (None: no autocast)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def resolve_precision(precision: str, accelerator: str) -> str:
    """'auto' -> bf16 autocast where the hardware computes bfloat16 natively, else fp32.

    On a CPU with AVX512-BF16 or AMX, bf16 autocast about doubles training speed; on one
    without (AVX2 only), bf16 matmuls are emulated and run hundreds of times slower.
    """
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_has_fast_bf16():
        return "bf16-mixed"
    return "32-true"


def cpu_has_fast_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def build_trainer(
    spec: Spec, run_dir: Path, steps_per_epoch: int
) -> tuple[L.Trainer, ModelCheckpoint, EarlyStopping | None]:
    training = spec.training
    monitor, mode = monitor_key(training, spec.primary_task)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-epoch{epoch}-step{step}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=False,  # LastCheckpoint writes last.ckpt
        auto_insert_metric_name=False,
    )
    # Rich draws a live bar on a terminal; in a log file (CI, nohup) tqdm's plain lines read better.
    progress = RichProgressBar() if sys.stdout.isatty() else TQDMProgressBar(refresh_rate=10)
    callbacks = [checkpoint, LearningRateMonitor(logging_interval="step"), progress, StepTimer()]
    every = spec.checkpointing
    callbacks.append(LastCheckpoint(run_dir / "checkpoints" / "last.ckpt", every.every_n_steps, every.every_n_minutes))
    early = None
    if training.early_stopping.enabled:
        early = EarlyStopping(
            monitor=monitor,
            mode=mode,
            patience=training.early_stopping.patience,
            min_delta=training.early_stopping.min_delta,
        )
        callbacks.append(early)
    # Validation runs every epoch; when max_steps ends training inside the first epoch,
    # validate at that step instead so that a best checkpoint exists.
    val_every = None
    batches_needed = (training.max_steps or 0) * training.gradient_accumulation
    if training.max_steps is not None and batches_needed < steps_per_epoch:
        val_every = batches_needed
    trainer = L.Trainer(
        accelerator=spec.trainer.accelerator,
        devices=list(spec.trainer.devices) if isinstance(spec.trainer.devices, tuple) else spec.trainer.devices,
        strategy=make_strategy(spec.trainer),
        num_nodes=spec.trainer.num_nodes,
        precision=resolve_precision(spec.trainer.precision, spec.trainer.accelerator),
        max_epochs=training.epochs,
        max_steps=training.max_steps if training.max_steps is not None else -1,
        max_time=None if training.max_time is None else timedelta(seconds=training.max_time),
        val_check_interval=val_every,
        check_val_every_n_epoch=1 if val_every is None else None,
        num_sanity_val_steps=0,
        log_every_n_steps=spec.trainer.log_every_n_steps,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False),
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_model_summary=False,
        # Training rows are sharded by runner's own sampler (see FineTuneData.train_dataloader);
        # validation runs whole on every rank, so every rank computes the same monitor value.
        use_distributed_sampler=False,
    )
    return trainer, checkpoint, early


def fit(
    module: FineTuner, datamodule: FineTuneData, spec: Spec, run_dir: Path, resume_from: Path | None = None
) -> tuple[FitResult, L.Trainer]:
    """Train with validation every epoch, early stopping, best/last checkpoints."""
    steps_per_epoch = -(-len(datamodule.train_rows) // spec.training.batch_size)
    trainer, checkpoint, early = build_trainer(spec, run_dir, steps_per_epoch)
    started = time.perf_counter()
    STOP.training, STOP.signum = True, None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True if resume_from else None)
    except SIGTERMException:  # Lightning's own exit on SIGTERM (a SystemExit, code 0): a stop
        raise Interrupted(signal.SIGTERM) from None
    except Exception as exc:
        if trainer.world_size > 1 and is_timeout(exc):
            raise collective_timeout_error(spec, trainer, run_dir) from None
        raise
    finally:
        STOP.training = False
    seconds = time.perf_counter() - started
    timer = next(c for c in trainer.callbacks if isinstance(c, StepTimer))
    last_path = next(c for c in trainer.callbacks if isinstance(c, LastCheckpoint)).path
    history = [{"epoch": e, **v} for e, v in sorted(module.history.items())]
    scored = [h for h in history if h.get("monitor") is not None]
    monitor, mode = monitor_key(spec.training, spec.primary_task)
    # The epoch the checkpoint callback kept: first of equals, as its strict comparison keeps.
    pick = min if mode == "min" else max
    best = pick(scored, key=lambda h: h["monitor"]) if scored else None
    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None

    result = FitResult(
        seconds=seconds,
        epochs_run=len({h["epoch"] for h in history if "train_loss" in h}) or trainer.current_epoch,
        best_epoch=best["epoch"] if best else None,
        best_val_loss=best["val_loss"] if best else None,
        monitor=monitor,
        best_monitor=best["monitor"] if best else None,
        stopped_early=bool(early is not None and early.stopped_epoch > 0),
        stopped_by_time=spec.training.max_time is not None and seconds >= spec.training.max_time,
        best_checkpoint=best_path,
        last_checkpoint=last_path if last_path.is_file() else None,
        history=history,
        tokens=sum(real for _, _, real in timer.steps) * trainer.world_size,  # each rank counts its own share
        step_seconds=sum(seconds for seconds, _, _ in timer.steps),
        global_steps=trainer.global_step,
    )
    return result, trainer


def is_timeout(exc: BaseException) -> bool:
    """A collective that waited past the process group's timeout (gloo and NCCL word it alike)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return "timed out" in text or "timeout" in text or "watchdog" in text


def collective_timeout_error(spec: Spec, trainer: L.Trainer, run_dir: Path) -> RunnerError:
    """What a hang became: where, the likely causes, and how to continue."""
    source = spec.source_path or "SPEC"
    return RunnerError(
        f"training stopped: rank {trainer.global_rank} waited more than trainer.collective_timeout "
        f"({spec.trainer.collective_timeout:g} min) for the other ranks at step {trainer.global_step} (epoch "
        f"{trainer.current_epoch}). Likely another rank died, hung or ran out of memory (see its log), or the "
        "ranks run different code or data. checkpoints/last.ckpt is the last saved state; continue with: "
        f"runner run {source} --resume {run_dir}"
    )


def load_weights(module: FineTuner, checkpoint: Path) -> None:
    """Load a checkpoint's weights into the module (tensors only: no pickled code runs)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    trainable = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise RuntimeError(
            f"checkpoint {checkpoint} does not fit this model (missing {sorted(trainable & set(missing))[:3]}, unexpected {unexpected[:3]})"
        )
