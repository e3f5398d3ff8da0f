"""The road of a task's data: read its rows, render them, split them (or read the user's
split files), cap and sample — the TaskData every later stage reads."""

from __future__ import annotations

from collections import defaultdict

from runner.data.examples import Example, TaskData, build_examples
from runner.data.read import read_rows
from runner.data.split import row_groups, row_strata, sample_indices, split_fractions, split_indices
from runner.errors import DataError, collect, raise_all
from runner.limits import DEFAULT_LIMITS, Limits
from runner.spec.types import DATA_EXTENSIONS, DataSource, ReplaySpec, Spec, SplitFiles, SplitSpec, TaskSpec


def prepare_data(spec: Spec) -> list[TaskData]:
    """Every task's data, read, templated, sampled and split once per source."""
    readers: dict[tuple, list[TaskSpec]] = defaultdict(list)
    for task in spec.tasks:
        readers[task.data.key()].append(task)
    prepared, errors = {}, []
    for tasks in readers.values():  # every source is read: one bad file does not hide another's problems
        for data in collect(errors, prepare_source, tasks, spec.seed, spec.limits) or []:
            prepared[data.task.name] = data
    raise_all(errors)
    return [prepared[task.name] for task in spec.tasks]


def prepare_source(tasks: list[TaskSpec], seed: int, limits: Limits = DEFAULT_LIMITS) -> list[TaskData]:
    """Read one source, template it for every task reading it, sample and split it once."""
    first = tasks[0]
    data = first.data
    files = (
        {name: source for name, source in (("train", data.train), ("val", data.val), ("test", data.test)) if source}
        if isinstance(data, SplitFiles)
        else {"all": data}
    )
    chosen: dict[str, dict[str, list[int]]] = {}  # part -> split -> row indices of that part
    examples: dict[str, dict[str, list[Example]]] = {}  # part -> task -> examples (aligned with rows)
    rows_read = 0
    for part, source in files.items():
        rows = read_rows(source, limits)
        rows_read += len(rows)
        numbered = list(enumerate(rows, 1))
        examples[part] = {t.name: build_examples(t, numbered, source.describe(), limits) for t in tasks}
        strata = row_strata(tasks, data.stratify_by, rows, examples[part], source)
        groups = row_groups(data.group_by, rows, source)
        keep = list(range(len(rows)))
        if first.max_rows is not None:
            keep = sample_indices(len(rows), first.max_rows, seed, strata)
        fractions = split_fractions(first, part, has_val_file="val" in files)
        if fractions is None:  # a split file used whole
            chosen[part] = {part: keep}
            continue
        kept_strata = [strata[i] for i in keep] if strata is not None else None
        kept_groups = [groups[i] for i in keep] if groups is not None else None
        train, val, test = split_indices(len(keep), fractions, seed, kept_strata, kept_groups)
        chosen[part] = {
            name: [keep[i] for i in idx]
            for name, idx in (("train", train), ("val", val), ("test", test))
            if idx or part == "all"
        }
    out = []
    for task in tasks:
        splits = {"train": [], "val": [], "test": []}
        origin = {}
        for part, by_split in chosen.items():
            for name, idx in by_split.items():
                splits[name] += [examples[part][task.name][i] for i in idx]
                origin[name] = files[part].describe()
        empty = [name for name, rows in splits.items() if not rows]
        if empty:
            raise DataError(
                data.describe(),
                [
                    f"task {task.name!r} has {rows_read} rows, too few to give every split a row "
                    f"(empty: {', '.join(empty)}); add rows or change tasks[].split."
                ],
            )
        out.append(TaskData(task, splits["train"], splits["val"], splits["test"], rows_read=rows_read, files=origin))
    return out


def prepare_replay(replay: ReplaySpec, limits: Limits = DEFAULT_LIMITS) -> list[Example]:
    """Replay rows (the built-in general set or the user's file) as prompt-completion examples."""
    source = DataSource(path=replay.data, format=DATA_EXTENSIONS.get(replay.data.suffix.lower(), "jsonl"))
    task = TaskSpec(name="replay", data=source, template=replay.template, split=SplitSpec(1.0, 0.0, 0.0))
    return build_examples(task, list(enumerate(read_rows(source, limits), 1)), limits=limits)
