"""Seeded, stratified, grouped splits and their record in splits.json."""

from __future__ import annotations

import random
from collections import defaultdict

from runner.data.examples import Example, TaskData, rows_text
from runner.errors import DataError
from runner.spec.types import TaskSpec


def split_indices(
    n: int,
    fractions: tuple[float, float, float],
    seed: int,
    strata: list | None = None,
    groups: list | None = None,
) -> tuple[list[int], list[int], list[int]]:
    """Seeded train/val/test index lists; stratified by `strata`, and keeping rows that share a
    `groups` value together, when given.

    Each stratum's units (rows, or groups of rows) are shuffled with their own seeded generator
    and cut by the fractions, so the same seed and data give the same split on every machine.
    """
    if groups is None:
        units = [[i] for i in range(n)]
    else:
        together: dict = {}
        for i in range(n):
            together.setdefault(groups[i], []).append(i)
        units = list(together.values())
    buckets: dict = defaultdict(list)
    for u, members in enumerate(units):
        buckets[strata[members[0]] if strata is not None else 0].append(u)
    train, val, test = [], [], []
    _, val_share, test_share = fractions
    for key in sorted(buckets):
        members = buckets[key]
        random.Random(f"{seed}:{key}").shuffle(members)
        n_test = round(len(members) * test_share)
        n_val = round(len(members) * val_share)
        test += [i for u in members[:n_test] for i in units[u]]
        val += [i for u in members[n_test : n_test + n_val] for i in units[u]]
        train += [i for u in members[n_test + n_val :] for i in units[u]]
    return sorted(train), sorted(val), sorted(test)


def sample_indices(n: int, k: int, seed: int, strata: list | None = None) -> list[int]:
    """A seeded random sample of k of n rows, stratified (largest remainder) when strata are given;
    not the first k rows, which in a sorted file are a biased sample."""
    if k >= n:
        return list(range(n))
    buckets: dict = defaultdict(list)
    for i in range(n):
        buckets[strata[i] if strata is not None else 0].append(i)
    keys = sorted(buckets)
    exact = {key: k * len(buckets[key]) / n for key in keys}
    take = {key: int(exact[key]) for key in keys}
    for key in sorted(keys, key=lambda key: exact[key] - take[key], reverse=True)[: k - sum(take.values())]:
        take[key] += 1
    picked = []
    for key in keys:
        members = list(buckets[key])
        random.Random(f"{seed}:sample:{key}").shuffle(members)
        picked += members[: take[key]]
    return sorted(picked)


def split_fractions(task: TaskSpec, part: str, has_val_file: bool) -> tuple[float, float, float] | None:
    """Shares for one part of a source: the task's split for a single source; for split files,
    val carved from the train file by val / (train + val), other files used whole."""
    split = task.split
    if part == "all":
        return (split.train, split.val, split.test)
    if part == "train" and not has_val_file:
        return (split.train / (split.train + split.val), split.val / (split.train + split.val), 0.0)
    return None


def row_strata(
    tasks: list[TaskSpec], field_name: str | None, rows: list[dict], examples: dict[str, list[Example]], source
) -> list | None:
    """What the split is stratified by: the source's stratify_by field, else the label of the
    one classification task reading the source, else nothing."""
    if field_name is not None:
        missing = [i + 1 for i, row in enumerate(rows) if row.get(field_name) is None]
        if missing:
            raise DataError(
                source.describe(),
                [f"rows {rows_text(missing)} have no {field_name!r} field to stratify by (data.stratify_by)."],
            )
        return [str(row[field_name]) for row in rows]
    classifiers = [t for t in tasks if t.is_classification]
    if len(classifiers) == 1:
        return [e.label for e in examples[classifiers[0].name]]
    return None


def row_groups(field_name: str | None, rows: list[dict], source) -> list | None:
    """Each row's `group_by` value as a string (rows of one group stay in one split); None without group_by.

    Raises:
        DataError: naming the rows that lack the field.
    """
    if field_name is None:
        return None
    missing = [i + 1 for i, row in enumerate(rows) if row.get(field_name) is None]
    if missing:
        raise DataError(
            source.describe(), [f"rows {rows_text(missing)} have no {field_name!r} field to group by (data.group_by)."]
        )
    return [str(row[field_name]) for row in rows]


def splits_record(tasks: list[TaskData], seed: int) -> dict:
    """splits.json: per task, where its rows came from and the 1-based row numbers of each split
    (numbers of the source file, also after sampling; with split files, of that split's file)."""
    return {
        "seed": seed,
        "tasks": {
            t.task.name: {
                "source": t.task.data.describe(),
                "files": t.files,
                "stratify_by": t.task.data.stratify_by,
                "group_by": t.task.data.group_by,
                "max_rows": t.task.max_rows,
                **{name: [e.row for e in rows] for name, rows in t.splits().items()},
                **(
                    {"ids": {name: [e.id for e in rows] for name, rows in t.splits().items()}}
                    if t.task.id_field
                    else {}
                ),
            }
            for t in tasks
        },
    }
