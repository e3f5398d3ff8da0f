"""Data prep: rows -> (prompt, completion) examples -> seeded splits -> token ids with a loss mask.

Templates are Jinja files rendered in a sandbox. A template renders one row to
`<prompt> ||| <completion>` (the PromptSource convention): the text before the first `|||` is
the prompt, the text after it the completion; both are stripped of surrounding whitespace.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import lightning as L
import torch
from jinja2.sandbox import SandboxedEnvironment
from torch.utils.data import DataLoader, WeightedRandomSampler

from runner.errors import DataError
from runner.spec import DataSource, Spec, TaskSpec

SEPARATOR = "|||"
IGNORE_INDEX = -100
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class Example:
    """One templated row: `row` is its 1-based number in the source, for error messages."""

    task: str
    row: int
    prompt: str
    completion: str
    label: int | None = None


@dataclass
class TaskData:
    """A task's examples, split into train/val/test."""

    task: TaskSpec
    train: list[Example]
    val: list[Example]
    test: list[Example]
    rows_read: int = 0

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


# --- reading ---------------------------------------------------------------------------


def read_rows(source: DataSource) -> list[dict]:
    """Read a local file (jsonl/json/csv/parquet) or a hub dataset through `datasets`."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    where = source.describe()
    try:
        if source.path is not None:
            builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}[source.format]
            ds = datasets.load_dataset(builder, data_files=str(source.path), split="train")
        else:
            ds = datasets.load_dataset(source.hub, source.config, split=source.split)
    except Exception as exc:  # datasets/pyarrow raise many types for unreadable files
        problems = _jsonl_problems(source.path) if source.format == "jsonl" and source.path else []
        reason = " ".join(str(exc).split())[:300]
        raise DataError(where, problems or [f"cannot be read as {source.format}: {reason}"]) from None
    return ds.to_list()


def _jsonl_problems(path: Path) -> list[str]:
    """Name the broken lines of a JSONL file (datasets' own error does not say which)."""
    problems = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.strip())
            except json.JSONDecodeError as exc:
                problems.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno}).")
                continue
            if not isinstance(value, dict):
                problems.append(f"line {number}: got a {type(value).__name__}, expected a JSON object.")
    return problems


# --- templating --------------------------------------------------------------------------


def template_environment() -> SandboxedEnvironment:
    """A sandbox (no attribute tricks, no file access) where an undefined variable is an error."""
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


def load_template(path: Path) -> jinja2.Template:
    try:
        return template_environment().from_string(path.read_text())
    except jinja2.TemplateSyntaxError as exc:
        raise DataError(str(path), [f"line {exc.lineno}: Jinja syntax error: {exc.message}."]) from None


def render_example(template: jinja2.Template, row: dict) -> tuple[str, str]:
    """Render a row to (prompt, completion); raise ValueError with a user-facing reason.

    Null fields count as missing (columnar readers fill absent keys with null), so a template
    that uses one fails instead of rendering the word 'None'.
    """
    row = {k: v for k, v in row.items() if v is not None}
    try:
        text = template.render(**row)
    except jinja2.UndefinedError as exc:
        fields = ", ".join(sorted(row)) or "none"
        raise ValueError(f"{exc.message}; the row's fields are: {fields}.") from None
    except jinja2.TemplateError as exc:
        raise ValueError(f"template error: {exc}.") from None
    prompt, sep, completion = text.partition(SEPARATOR)
    if not sep:
        raise ValueError(f"the template rendered no '{SEPARATOR}' between prompt and completion.")
    prompt, completion = prompt.strip(), completion.strip()
    if not completion:
        raise ValueError("the completion is empty; check the completion field of this row.")
    if not prompt:
        raise ValueError("the prompt is empty.")
    return prompt, completion


def build_examples(task: TaskSpec, rows: list[dict]) -> list[Example]:
    """Template every row; collect every bad row and raise once, naming file, row and reason."""
    template = load_template(task.template)
    examples, problems = [], []
    labels = {label: i for i, label in enumerate(task.labels or ())}
    for number, row in enumerate(rows, 1):
        try:
            prompt, completion = render_example(template, row)
        except ValueError as exc:
            problems.append(f"row {number}: {exc}")
            continue
        label = None
        if task.is_classification:
            if completion not in labels:
                problems.append(
                    f"row {number}: completion {completion!r} is not one of the task's labels "
                    f"({', '.join(task.labels)}); fix the row or add the label to tasks[].labels."
                )
                continue
            label = labels[completion]
        examples.append(Example(task.name, number, prompt, completion, label))
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more bad rows.")
        raise DataError(f"{task.data.describe()} (task {task.name!r}, template {task.template.name})", shown)
    return examples


# --- splitting ---------------------------------------------------------------------------


def split_indices(
    n: int, fractions: tuple[float, float, float], seed: int, strata: list[int] | None = None
) -> tuple[list[int], list[int], list[int]]:
    """Seeded train/val/test index lists; stratified by `strata` when given.

    Each stratum is shuffled with its own seeded generator and cut by the fractions, so the
    same seed and data give the same split on every machine.
    """
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[strata[i] if strata is not None else 0].append(i)
    train, val, test = [], [], []
    _, val_share, test_share = fractions
    for key in sorted(groups):
        members = groups[key]
        random.Random(f"{seed}:{key}").shuffle(members)
        n_test = round(len(members) * test_share)
        n_val = round(len(members) * val_share)
        test += members[:n_test]
        val += members[n_test : n_test + n_val]
        train += members[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)


def prepare_task(task: TaskSpec, seed: int) -> TaskData:
    """Read, template, validate and split one task's data."""
    rows = read_rows(task.data)
    if task.max_rows is not None:
        rows = rows[: task.max_rows]
    examples = build_examples(task, rows)
    strata = [e.label for e in examples] if task.is_classification else None
    fractions = (task.split.train, task.split.val, task.split.test)
    train, val, test = split_indices(len(examples), fractions, seed, strata)
    empty = [name for name, idx in (("train", train), ("val", val), ("test", test)) if not idx]
    if empty:
        raise DataError(
            task.data.describe(),
            [
                f"task {task.name!r} has {len(examples)} rows, too few to give every split a row "
                f"(empty: {', '.join(empty)}); add rows or change tasks[].split."
            ],
        )
    pick = lambda idx: [examples[i] for i in idx]  # noqa: E731
    return TaskData(task, pick(train), pick(val), pick(test), rows_read=len(rows))


def prepare_data(spec: Spec) -> list[TaskData]:
    return [prepare_task(task, spec.seed) for task in spec.tasks]


# --- tokenising --------------------------------------------------------------------------


@dataclass
class Encoder:
    """Turns an example into token ids with the prompt masked out of the loss.

    Prompt and completion are tokenised separately and concatenated, so the boundary is exact
    and training and scoring see the same completion tokens. Classification completions carry
    no end-of-sequence token (they are scored, not generated); free-text completions end with
    one, so that generation learns to stop.
    """

    tokenizer: object
    max_length: int
    chat_template: bool
    truncated: Counter = field(default_factory=Counter)

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

    def encode(self, example: Example, add_eos: bool) -> dict:
        prompt = self.prompt_ids(example.prompt)
        completion = self.completion_ids(example.completion, add_eos)
        return self.join(prompt, completion, example.task)

    def join(self, prompt: list[int], completion: list[int], task: str | None = None) -> dict:
        """Concatenate, cutting the start of the prompt (then the end of the completion) to fit."""
        overflow = len(prompt) + len(completion) - self.max_length
        if overflow > 0:
            if task is not None:
                self.truncated[task] += 1
            completion = completion[: self.max_length - 1]
            prompt = prompt[max(0, len(prompt) - (self.max_length - len(completion))) :]
        return {
            "input_ids": prompt + completion,
            "labels": [IGNORE_INDEX] * len(prompt) + completion,
        }


def collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest row (dynamic padding)."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.full((len(features), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
        "task_index": torch.tensor([f.get("task_index", 0) for f in features], dtype=torch.long),
    }
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(f["input_ids"])
        batch["labels"][i, :n] = torch.tensor(f["labels"])
        batch["attention_mask"][i, :n] = 1
    return batch


class Collator:
    """Picklable collate function (data-loader workers need one)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_id)


class FineTuneData(L.LightningDataModule):
    """Tokenised train/val sets of every task; training mixes tasks by their weights."""

    def __init__(self, tasks: list[TaskData], encoder: Encoder, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        self.task_names = [t.task.name for t in tasks]
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.collator = Collator(encoder.tokenizer.pad_token_id)
        self.train_sets, self.val_sets = [], []
        for index, t in enumerate(tasks):
            add_eos = not t.task.is_classification
            self.train_sets.append([{**encoder.encode(e, add_eos), "task_index": index} for e in t.train])
            self.val_sets.append([{**encoder.encode(e, add_eos), "task_index": index} for e in t.val])
        self.weights = [t.task.weight for t in tasks]

    @property
    def train_rows(self) -> list[dict]:
        return [row for rows in self.train_sets for row in rows]

    def train_dataloader(self) -> DataLoader:
        rows = self.train_rows
        generator = torch.Generator().manual_seed(self.seed)
        common = dict(batch_size=self.batch_size, collate_fn=self.collator, num_workers=self.num_workers)
        if all(w is None for w in self.weights):
            return DataLoader(rows, shuffle=True, generator=generator, **common)
        # Mixture: task t gets share w_t of the samples; unweighted tasks keep their size share.
        total = len(rows)
        shares = [w if w is not None else len(s) / total for w, s in zip(self.weights, self.train_sets)]
        per_row = [share / sum(shares) / len(s) for share, s in zip(shares, self.train_sets) for _ in s]
        sampler = WeightedRandomSampler(per_row, num_samples=total, replacement=True, generator=generator)
        return DataLoader(rows, sampler=sampler, **common)

    def val_dataloader(self) -> DataLoader:
        rows = [row for rows in self.val_sets for row in rows]
        return DataLoader(rows, batch_size=self.batch_size, collate_fn=self.collator, num_workers=self.num_workers)
