"""The typed spec: frozen dataclasses everything downstream reads instead of dicts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from runner.limits import Limits

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # runner/, installed or in the repo
PROJECT_ROOT = PACKAGE_DIR.parent  # the repo, when runner runs from its source tree


def bundled(folder: str) -> Path:
    """The repo's schemas/ or templates/: a built runner carries a copy inside its package (setup.py
    copies them into the wheel); a source tree or an editable install reads the repo's own."""
    inside = PACKAGE_DIR / folder
    return inside if inside.is_dir() else PROJECT_ROOT / folder


SCHEMA_PATH = bundled("schemas") / "experiment.schema.json"
REPORT_SCHEMA_PATH = bundled("schemas") / "report.schema.json"
TEMPLATE_DIR = bundled("templates")


DATA_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "text",
}


SUITES_DIR = PACKAGE_DIR / "suites"  # package data (pyproject.toml)


BUILTIN_REPLAY = ("general",)  # runner/suites/replay/<name>.jsonl, rendered by <name>.jinja


@dataclass(frozen=True)
class ModelSpec:
    source: str
    max_length: int
    chat_template: bool
    truncation: str = "fields"
    tokenizer: str | None = None  # the tokenizer's source when not model.source's


@dataclass(frozen=True)
class DataSource:
    path: Path | None = None
    format: str = "auto"
    hub: str | None = None
    config: str | None = None
    split: str = "train"
    stratify_by: str | None = None
    group_by: str | None = None
    glob: str | None = None  # a pattern of local files (absolute), read in sorted order as one source

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.glob is not None:
            return self.glob
        return f"hub:{self.hub}" + (f"/{self.config}" if self.config else "") + f"[{self.split}]"

    def key(self) -> tuple:
        """What makes two tasks read the same rows (and so share one split)."""
        if self.path is not None:
            return ("file", str(self.path))
        if self.glob is not None:
            return ("glob", self.glob)
        return ("hub", self.hub, self.config, self.split)


@dataclass(frozen=True)
class SplitFiles:
    """Data that ships its own splits: a train file, a test file and optionally a val file."""

    train: DataSource
    test: DataSource
    val: DataSource | None = None
    stratify_by: str | None = None
    group_by: str | None = None

    def describe(self) -> str:
        parts = [f"train={self.train.describe()}"]
        if self.val is not None:
            parts.append(f"val={self.val.describe()}")
        return ", ".join([*parts, f"test={self.test.describe()}"])

    def key(self) -> tuple:
        return ("split_files", self.train.key(), self.val.key() if self.val else None, self.test.key())


@dataclass(frozen=True)
class SplitSpec:
    train: float
    val: float
    test: float


@dataclass(frozen=True)
class TaskSpec:
    name: str
    data: DataSource | SplitFiles
    template: Path
    split: SplitSpec
    labels: tuple[str, ...] | None = None
    label_map: dict[str, str] | None = None
    id_field: str | None = None
    weight: float | None = None
    max_rows: int | None = None

    @property
    def is_classification(self) -> bool:
        return self.labels is not None


@dataclass(frozen=True)
class MethodSpec:
    kind: str  # a key of runner.model.methods.METHODS
    settings: Mapping[str, Any]  # the spec's method.<kind> section, defaults filled


@dataclass(frozen=True)
class EarlyStoppingSpec:
    enabled: bool
    patience: int
    min_delta: float


@dataclass(frozen=True)
class TrainingSpec:
    epochs: int
    max_steps: int | None
    batch_size: int
    gradient_accumulation: int
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    lr_schedule: str
    gradient_clip: float | None
    early_stopping: EarlyStoppingSpec
    num_workers: int
    group_by_length: bool = True
    max_batch_tokens: int | None = 1024
    activation_checkpointing: bool | str = "auto"
    max_time: float | None = None  # seconds (the spec gives minutes or "[DD:]HH:MM:SS")
    seed: int | None = None  # resolved: the spec's seed when null
    train_rows: int | None = None
    monitor: str = "loss"  # of the primary task's val split: loss, accuracy or macro_f1
    class_balance: str = "none"
    objective: str = "sft"  # the loss: an entry of runner.training.objectives.OBJECTIVES


@dataclass(frozen=True)
class CheckpointingSpec:
    every_n_steps: int | None = None
    every_n_minutes: float | None = 10


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    kind: str
    data: DataSource
    template: Path | None = None
    choices: str | None = None
    match: str = "exact"
    max_items: int | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class EvaluationSpec:
    batch_size: int
    max_new_tokens: int
    sample_predictions: int
    baselines: tuple[str, ...]
    few_shot_k: int
    bootstrap_samples: int
    cache: bool
    forgetting: tuple[ProbeSpec, ...]
    test_rows: int | None = None  # score only this many test rows per task


@dataclass(frozen=True)
class DataChecksSpec:
    on_issue: str
    duplicates: str
    near_duplicates: str
    leaks: str
    conflicts: str
    imbalance: str
    truncation: str
    short_completions: str
    empty_fields: str
    imbalance_ratio: float
    truncation_share: float

    def severity(self, check: str) -> str:
        """'off', 'warn' or 'fail' for a check, after on_issue."""
        own = getattr(self, check)
        return own if own == "off" or self.on_issue == "default" else self.on_issue


@dataclass(frozen=True)
class TrainerSpec:
    accelerator: str
    devices: int | str | tuple[int, ...]
    strategy: str
    num_nodes: int
    precision: str
    log_every_n_steps: int
    collective_timeout: float = 30.0  # minutes


@dataclass(frozen=True)
class ReplaySpec:
    share: float
    of: str
    data: Path  # the file (the built-in set's for `general`)
    template: Path


@dataclass(frozen=True)
class VariantSpec:
    name: str
    description: str
    set: dict
    add_tasks: tuple[dict, ...]


@dataclass(frozen=True)
class CurveSpec:
    train_rows: tuple[int | str, ...]


@dataclass(frozen=True)
class ComparisonSpec:
    margin: float


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    seed: int
    output_dir: Path
    model: ModelSpec
    tasks: tuple[TaskSpec, ...]
    primary_task: str
    data_checks: DataChecksSpec
    method: MethodSpec
    training: TrainingSpec
    checkpointing: CheckpointingSpec
    evaluation: EvaluationSpec
    trainer: TrainerSpec
    replay: ReplaySpec | None = None
    variants: tuple[VariantSpec, ...] = ()
    seeds: tuple[int, ...] | None = None
    curve: CurveSpec | None = None
    comparison: ComparisonSpec = ComparisonSpec(margin=0.02)
    limits: Limits = Limits()
    source_path: Path | None = None
    # The spec as the user would write it, defaults filled and paths absolute: what a run
    # folder's spec.yaml and `runner validate` show, and what re-runs this run (see written_spec).
    written: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    smoke: tuple[str, ...] = ()  # a smoke run (runner run --smoke): what it leaves out
    # An experiment's runs (variants x seeds, curve points), each a whole spec with `run` set;
    # empty for a single run.
    runs: tuple[Spec, ...] = dataclasses.field(default=(), compare=False, repr=False)
    run: Run | None = None  # which of its experiment's runs this spec is, if any

    @property
    def is_experiment(self) -> bool:
        return bool(self.runs)


@dataclass(frozen=True)
class Run:
    """One run of an experiment: a variant (or curve point) trained with one seed."""

    name: str  # its folder under variants/: the variant, with -seed<n> when there are several seeds
    variant: str
    seed: int
    description: str = ""
    train_rows: int | str | None = None  # a curve point's rows ("all" for the whole split)


EXPERIMENT_KEYS = ("variants", "seeds", "curve", "comparison")


@cache
def schema() -> dict:
    """The experiment JSON Schema (the single definition of the spec)."""
    return json.loads(SCHEMA_PATH.read_text())
