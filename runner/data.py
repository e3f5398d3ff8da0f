"""Data prep: rows -> (prompt, completion) examples -> seeded splits -> token ids with a loss mask.

Templates are Jinja files rendered in a sandbox. A template renders one row to
`<prompt> ||| <completion>` (the PromptSource convention): the text before the first `|||` is
the prompt, the text after it the completion; both are stripped of surrounding whitespace.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import jinja2
import torch

from runner.errors import DataError, collect, raise_all
from runner.limits import DEFAULT_LIMITS, Limits
from runner.reading import read_rows
from runner.spec import DATA_EXTENSIONS, DataSource, ReplaySpec, Spec, SplitFiles, SplitSpec, TaskSpec
from runner.templating import TemplateProblem, load_template, render

SEPARATOR = "|||"
IGNORE_INDEX = -100
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class Example:
    """One templated row. `row` is its 1-based number in its source file (also after
    sampling); `fields` is the row itself, kept so that truncation can re-render it."""

    task: str
    row: int
    prompt: str
    completion: str
    label: int | None = None
    id: str | None = None
    fields: dict = field(default_factory=dict, compare=False, repr=False)
    truncated: bool = False


@dataclass
class TaskData:
    """A task's examples, split into train/val/test, and where each split's rows came from."""

    task: TaskSpec
    train: list[Example]
    val: list[Example]
    test: list[Example]
    rows_read: int = 0
    files: dict[str, str] = field(default_factory=dict)  # split -> the file its row numbers refer to
    label_eos: bool = False  # labels end with the end token (set when one label's tokens begin another's)

    def splits(self) -> dict[str, list[Example]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Rows per split and label (classification tasks)."""
        if not self.task.is_classification:
            return {}
        return {
            name: {label: sum(e.label == i for e in rows) for i, label in enumerate(self.task.labels)}
            for name, rows in self.splits().items()
        }

    def examples(self) -> list[Example]:
        """Every example of the task: train, val, then test."""
        return self.train + self.val + self.test

    @property
    def completion_eos(self) -> bool:
        """Whether completions end with the end token: free text (generation learns to stop), and
        labels of a set where one label's tokens begin another's."""
        return self.label_eos or not self.task.is_classification

    def truncated_counts(self) -> dict[str, int]:
        return {name: sum(e.truncated for e in rows) for name, rows in self.splits().items()}


# --- templating --------------------------------------------------------------------------


def render_example(template: jinja2.Template, row: dict, limits: Limits = DEFAULT_LIMITS) -> tuple[str, str]:
    """Render a row to (prompt, completion); raise TemplateProblem (a ValueError) with a
    user-facing reason. Null fields count as missing (`{{ x | default('') }}` shows them empty),
    and the render is bounded in time and size (runner.templating)."""
    text = render(template, row, limits)
    prompt, sep, completion = text.partition(SEPARATOR)
    if not sep:
        raise TemplateProblem(f"the template rendered no '{SEPARATOR}' between prompt and completion.")
    prompt, completion = prompt.strip(), completion.strip()
    if not completion:
        empty = [k for k, v in row.items() if v == ""]
        hint = f" (empty cells in this row: {', '.join(map(repr, empty[:5]))})" if empty else ""
        raise TemplateProblem(f"the completion is empty{hint}; check the completion field of this row.")
    if not prompt:
        raise TemplateProblem("the prompt is empty.")
    return prompt, completion


def grouped_rows(problems: list[tuple[int, str]], shown: int = 5) -> list[str]:
    """One line per distinct problem, naming its rows: a template error on every row is one line
    ("rows 1, 2, 3, 4, 5 and 35 more: ...") rather than forty."""
    rows: dict[str, list[int]] = {}
    for number, message in problems:
        rows.setdefault(message, []).append(number)
    lines = []
    for message, numbers in rows.items():
        if len(numbers) == 1:
            lines.append(f"row {numbers[0]}: {message}")
            continue
        more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
        lines.append(f"rows {', '.join(map(str, numbers[:shown]))}{more}: {message}")
    return lines


def prompt_fields(template: jinja2.Template, row: dict) -> list[str]:
    """The row fields a template shows in the prompt and not in the completion: each field is
    replaced by a marker and the row rendered to see where the marker lands."""
    marker = "\x00runner-field\x00"
    found = []
    for name in sorted(row):
        try:
            prompt, completion = render_example(template, {**row, name: marker})
        except (ValueError, TypeError):  # a field the template computes with: not plain input text
            continue
        if marker in prompt and marker not in completion:
            found.append(name)
    return found


def build_examples(
    task: TaskSpec, rows: list[tuple[int, dict]], where: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> list[Example]:
    """Template every (row number, row); collect every bad row and raise once, naming file, row and reason.
    A row past a resource limit (time, size, recursion) stops at once: every row would pay it again."""
    template = load_template(task.template, limits)
    examples, problems = [], []
    labels = {label: i for i, label in enumerate(task.labels or ())}
    for number, row in rows:
        try:
            prompt, completion = render_example(template, row, limits)
        except TemplateProblem as exc:
            problems.append((number, str(exc)))
            if exc.fatal:
                break
            continue
        if task.label_map is not None:
            completion = task.label_map.get(completion, completion)
        label = None
        if task.is_classification:
            if completion not in labels:
                fix = "add it to tasks[].label_map" if task.label_map is not None else "add the label to tasks[].labels"
                fix = f"fix the row or {fix}"
                near = [label for label in labels if label.casefold() == completion.strip().casefold()]
                if near:
                    fix = f"did you mean {near[0]!r}? Labels match exactly, case included; {fix}"
                elif completion.strip().lstrip("-").isdigit() and task.label_map is None:
                    fix = f"numeric labels become words with tasks[].label_map, e.g. {{{completion}: {task.labels[0]}}}"
                problems.append(
                    (
                        number,
                        f"completion {completion!r} is not one of the task's labels ({', '.join(task.labels)}); {fix}.",
                    )
                )
                continue
            label = labels[completion]
        row_id = None
        if task.id_field is not None:
            if row.get(task.id_field) is None:
                problems.append((number, f"no {task.id_field!r} field (tasks[].id_field); every row needs one."))
                continue
            row_id = str(row[task.id_field])
        examples.append(Example(task.name, number, prompt, completion, label, row_id, row))
    if problems:
        lines = grouped_rows(problems)
        shown = lines[:MAX_PROBLEMS_SHOWN]
        if len(lines) > len(shown):
            shown.append(f"... and {len(lines) - len(shown)} more problems.")
        raise DataError(
            f"{where or task.data.describe()} (task {task.name!r}, template {task.template.name})",
            shown,
            total=len(problems),
        )
    return examples


# --- splitting ---------------------------------------------------------------------------
# A data source (a file, a hub split, or a set of split files) is read, sampled and split once;
# every task that reads it gets the same rows in the same split, so no task trains on another
# task's test rows.


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


def prepare_task(task: TaskSpec, seed: int) -> TaskData:
    """One task alone (its source not shared)."""
    return prepare_source([task], seed)[0]


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
        strata = _strata(tasks, data.stratify_by, rows, examples[part], source)
        groups = _groups(data.group_by, rows, source)
        keep = list(range(len(rows)))
        if first.max_rows is not None:
            keep = sample_indices(len(rows), first.max_rows, seed, strata)
        fractions = _fractions(first, part, has_val_file="val" in files)
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


def _fractions(task: TaskSpec, part: str, has_val_file: bool) -> tuple[float, float, float] | None:
    """Shares for one part of a source: the task's split for a single source; for split files,
    val carved from the train file by val / (train + val), other files used whole."""
    split = task.split
    if part == "all":
        return (split.train, split.val, split.test)
    if part == "train" and not has_val_file:
        return (split.train / (split.train + split.val), split.val / (split.train + split.val), 0.0)
    return None


def _strata(
    tasks: list[TaskSpec], field_name: str | None, rows: list[dict], examples: dict[str, list[Example]], source
) -> list | None:
    """What the split is stratified by: the source's stratify_by field, else the label of the
    one classification task reading the source, else nothing."""
    if field_name is not None:
        missing = [i + 1 for i, row in enumerate(rows) if row.get(field_name) is None]
        if missing:
            raise DataError(
                source.describe(),
                [f"rows {_rows_text(missing)} have no {field_name!r} field to stratify by (data.stratify_by)."],
            )
        return [str(row[field_name]) for row in rows]
    classifiers = [t for t in tasks if t.is_classification]
    if len(classifiers) == 1:
        return [e.label for e in examples[classifiers[0].name]]
    return None


def _groups(field_name: str | None, rows: list[dict], source) -> list | None:
    if field_name is None:
        return None
    missing = [i + 1 for i, row in enumerate(rows) if row.get(field_name) is None]
    if missing:
        raise DataError(
            source.describe(), [f"rows {_rows_text(missing)} have no {field_name!r} field to group by (data.group_by)."]
        )
    return [str(row[field_name]) for row in rows]


def _rows_text(numbers: list[int], shown: int = 10) -> str:
    text = ", ".join(map(str, numbers[:shown]))
    return text + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")


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


# --- tokenising --------------------------------------------------------------------------


@dataclass
class Encoder:
    """Turns an example into token ids with the prompt masked out of the loss.

    Prompt and completion are tokenised separately and concatenated, so the boundary is exact
    and training and scoring see the same completion tokens. Classification completions carry
    no end-of-sequence token (they are scored, not generated) unless one label's tokens begin
    another's; free-text completions end with one, so that generation learns to stop.
    Examples arrive fitted to max_length (runner.truncation); `join` still cuts what does not
    fit (policy `left`), the start of the prompt first, and counts it in `cuts`.
    """

    tokenizer: object
    max_length: int
    chat_template: bool
    cuts: int = 0

    def __post_init__(self) -> None:
        self.use_chat = self.chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_ids(self, prompt: str, shots: list[Example] = ()) -> list[int]:
        """Token ids of a prompt, after `shots` solved examples (few-shot) if given.

        With a chat template, each shot is a user turn and an assistant reply; without one,
        shots are "prompt completion" blocks separated by blank lines.
        """
        if self.use_chat:
            messages = []
            for shot in shots:
                messages += [
                    {"role": "user", "content": shot.prompt},
                    {"role": "assistant", "content": shot.completion},
                ]
            messages.append({"role": "user", "content": prompt})
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        context = "".join(f"{shot.prompt} {shot.completion}\n\n" for shot in shots)
        return self.tokenizer(context + prompt)["input_ids"]

    def completion_ids(self, completion: str, add_eos: bool) -> list[int]:
        text = completion if self.use_chat else " " + completion
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id] if add_eos else ids

    def label_room(self, labels: tuple[str, ...], add_eos: bool) -> int:
        """Tokens after the prompt that every label needs: the longest label's."""
        return max(len(self.completion_ids(label, add_eos)) for label in labels)

    def encode(self, example: Example, add_eos: bool) -> dict:
        prompt = self.prompt_ids(example.prompt)
        completion = self.completion_ids(example.completion, add_eos)
        return self.join(prompt, completion, add_eos)

    def join(self, prompt: list[int], completion: list[int], add_eos: bool = False) -> dict:
        """Concatenate; what still does not fit loses the start of the prompt, and a completion
        longer than max_length its end (keeping its end token, so generation learns to stop)."""
        overflow = len(prompt) + len(completion) - self.max_length
        if overflow > 0:
            self.cuts += 1
            if len(completion) > self.max_length - 1:
                end = completion[-1:] if add_eos else []
                completion = completion[: self.max_length - 1 - len(end)] + end
            prompt = prompt[max(0, len(prompt) - (self.max_length - len(completion))) :]
        return {
            "input_ids": prompt + completion,
            "labels": [IGNORE_INDEX] * len(prompt) + completion,
        }


def collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad a batch to its longest row (dynamic padding). Every row ends in the last column,
    so its completion does too: one `logits_to_keep` window covers all rows' targets."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.full((len(features), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
        "task_index": torch.tensor([f.get("task_index", 0) for f in features], dtype=torch.long),
    }
    if any("weight" in f for f in features):  # class_balance 'loss': each row's loss weight
        batch["weight"] = torch.tensor([f.get("weight", 1.0) for f in features], dtype=torch.float)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        batch["input_ids"][i, width - n :] = torch.tensor(f["input_ids"])
        batch["labels"][i, width - n :] = torch.tensor(f["labels"])
        batch["attention_mask"][i, width - n :] = 1
    return batch


class Collator:
    """Picklable collate function (data-loader workers need one)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_id)
