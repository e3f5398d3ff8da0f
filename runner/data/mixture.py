"""Several tasks (and replay) mixed into one training stream: quotas per epoch, a sampler
that shards across ranks, and the Lightning data module."""

from __future__ import annotations

import hashlib
from collections import Counter

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from runner.data.encode import IGNORE_INDEX, Collator, Encoder
from runner.data.examples import Example, TaskData
from runner.data.split import sample_indices
from runner.spec.types import ReplaySpec


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
