"""Typed results: what a run found, in the shape report.json keeps.

The flows and scoring fill a `RunResult`; the report (Markdown, HTML, TensorBoard, the comparison
of an experiment's runs) reads it and nothing else. `RunResult.to_json()` is report.json and
`RunResult.from_json()` reads one back; `schemas/report.schema.json` is the contract, and the tests
check every report they write against it.

Optional fields that are None are left out of the JSON (a rung that was not scored has no
numbers, not null ones); the fields listed in a class's ALWAYS are written even when None, because
readers of report.json (and older runner versions) expect the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

SCHEMA_VERSION = 3


def to_json(value: Any) -> Any:
    """A result (dataclass, dict, list or plain value) as JSON-ready values, Nones left out but ALWAYS."""
    if dataclasses.is_dataclass(value):
        always = getattr(value, "ALWAYS", ())
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.name not in always:
                continue
            if isinstance(item, (dict, list)) and not item and f.name not in always:
                continue
            out[f.name] = to_json(item)
        return out
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float):
        return rounded(value)
    return value


def rounded(value: float) -> float:
    """A measurement to six significant digits: every number in report.json is a measurement or
    an estimate with an interval far wider than that, and a float32 loss otherwise reads
    0.013000000268220901. Idempotent, so a report read back and written again is unchanged."""
    return float(f"{value:.6g}")


def _known(cls, data: dict) -> dict:
    """The entries of `data` that are fields of `cls` (an older or newer report may hold others)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class Delta:
    """A paired difference between two rungs on the same resampled test rows."""

    delta: float
    ci95: list[float]
    excludes_zero: bool


@dataclass
class RungResult:
    """One rung's scores on one task's test split.

    Classification: accuracy, f1_macro, per_class {label: {precision, recall, recall_ci95, f1,
    support}}, confusion_matrix {labels, rows_are, matrix}; language-model rungs add calibration
    {ece, bins}. Generation: exact_match, token_f1. Every rung: n, prompt_tokens_mean,
    prompts_truncated, ci95 {metric: [low, high]}; base_few_shot: few_shot_k, shots_truncated;
    majority: answer; a base rung from the score cache: cached (its fingerprint); rungs a model
    scored in this run: seconds, ms_per_example."""

    n: int | None = None
    accuracy: float | None = None
    f1_macro: float | None = None
    exact_match: float | None = None
    token_f1: float | None = None
    per_class: dict[str, dict] | None = None
    confusion_matrix: dict | None = None
    calibration: dict | None = None
    prompt_tokens_mean: float | None = None
    prompts_truncated: int | None = None
    few_shot_k: float | None = None
    shots_truncated: int | None = None
    answer: str | None = None
    cached: str | None = None
    seconds: float | None = None
    ms_per_example: float | None = None
    ci95: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict, strict: bool = False) -> RungResult:
        """A rung from report.json, or (`strict`) from a scorer's metrics, where a key this class
        does not know is a bug: it would vanish from the report."""
        known = _known(cls, data)
        if strict and len(known) != len(data):
            raise ValueError(f"metrics {sorted(set(data) - set(known))} are not fields of RungResult")
        return cls(**known)

    def headline(self) -> str:
        """The metric a reader looks at first: accuracy for classification, exact match for generation."""
        return "accuracy" if self.accuracy is not None else "exact_match"

    def value(self, metric: str) -> Any:
        """A metric by name (None when this rung has no such metric)."""
        return getattr(self, metric, None)


# The numbers a rung can carry under ci95 and deltas (the bootstrap's metrics).
METRICS = ("accuracy", "f1_macro", "exact_match", "token_f1")


@dataclass
class TaskResult:
    """One task: its data as prepared, each rung's test scores, paired deltas and samples."""

    kind: str  # "classification" | "generation"
    data: dict
    labels: list[str] | None = None
    test: dict[str, RungResult] = field(default_factory=dict)
    samples: list[dict] | None = None
    deltas: dict[str, dict[str, Delta]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> TaskResult:
        """A task entry of report.json."""
        known = _known(cls, data)
        known["test"] = {rung: RungResult.from_json(m) for rung, m in data.get("test", {}).items()}
        known["deltas"] = {
            pair: {m: Delta(**_known(Delta, d)) for m, d in metrics.items()}
            for pair, metrics in data.get("deltas", {}).items()
        }
        return cls(**known)


@dataclass
class ProbeResult:
    """One forgetting probe. A one-model probe pairs before and after (retention = after / before
    when higher is better, before / after otherwise; 1.0 = unchanged), with a paired interval when
    it scores items; a two-model probe (drift) has one `value` (0 = unchanged)."""

    kind: str
    metric: str
    before: float | None = None
    after: float | None = None
    delta: float | None = None
    retention: float | None = None
    higher_is_better: bool | None = None
    details_before: dict | None = None
    details_after: dict | None = None
    delta_ci95: list[float] | None = None
    excludes_zero: bool | None = None
    value: float | None = None
    tokens: int | None = None
    second: dict | None = None  # {"metric", "value"}: a one-model probe's second number (text: drift)

    PAIRED: ClassVar[tuple[str, ...]] = (
        "before",
        "after",
        "delta",
        "retention",
        "higher_is_better",
        "details_before",
        "details_after",
    )

    @property
    def ALWAYS(self) -> tuple[str, ...]:  # read by to_json like the other classes' constants
        """A one-model probe always writes its before/after fields (retention may be null)."""
        return ("kind", "metric") if self.two_model else ("kind", "metric", *self.PAIRED)

    @property
    def two_model(self) -> bool:
        """Whether this probe compared base and tuned model in one measurement (one value)."""
        return self.value is not None

    @classmethod
    def from_json(cls, data: dict) -> ProbeResult:
        """A forgetting entry of report.json."""
        return cls(**_known(cls, data))


@dataclass
class TrainingResult:
    """How training went: epochs, the best one (by `monitor`, the primary task's validation
    value), why it stopped, and each epoch's losses."""

    epochs_run: int
    best_epoch: int | None
    best_val_loss: float | None
    monitor: str | None
    best_monitor: float | None
    stopped_early: bool
    stopped_by_time: bool
    global_steps: int
    best_checkpoint: str | None
    resumed_from_step: int | None
    epochs: list[dict]

    ALWAYS: ClassVar[tuple[str, ...]] = (
        "best_epoch",
        "best_val_loss",
        "monitor",
        "best_monitor",
        "best_checkpoint",
        "resumed_from_step",
        "epochs",
    )

    @classmethod
    def from_json(cls, data: dict) -> TrainingResult:
        """The training entry of report.json."""
        defaults = {f.name: None for f in dataclasses.fields(cls)}
        return cls(**{**defaults, "epochs": [], **_known(cls, data)})


@dataclass
class Cost:
    """What the run cost: wall time per phase, memory, throughput, parameters and size."""

    prepare_seconds: float | None = None
    load_model_seconds: float | None = None
    score_base_seconds: float | None = None
    score_base_cached: int | None = None
    score_tuned_seconds: float | None = None
    train_seconds: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    peak_rss_mb: float | None = None
    tokens_per_second: float | None = None
    train_tokens: int | None = None
    checkpoint_mb: float | None = None
    # A resumed run: what the stages took before the resume (its own stages are timed afresh, and
    # base scores reloaded from the run folder take seconds where scoring took minutes).
    before_resume: dict[str, float] | None = None

    STAGES: ClassVar[tuple[str, ...]] = (
        "prepare_seconds",
        "load_model_seconds",
        "score_base_seconds",
        "train_seconds",
        "score_tuned_seconds",
    )

    @classmethod
    def from_json(cls, data: dict) -> Cost:
        """The cost entry of report.json."""
        return cls(**_known(cls, data))


@dataclass
class RunResult:
    """Everything one run found; `to_json()` is its report.json.

    `variant` is a run of an experiment ({name, variant, seed, description, train_rows}), None
    otherwise; `model` describes the weights really used; `training_data` what one epoch trained
    on; `probes_base` a base-only evaluation's probe numbers (no 'after')."""

    name: str
    mode: str  # "train" | "eval"
    run_dir: str
    primary_task: str
    model: dict
    description: str = ""
    spec_path: str | None = None
    variant: dict | None = None
    status: str = "running"  # "running" | "complete" | "failed" | "interrupted"
    started_at: str | None = None
    finished_at: str | None = None
    pid: int | None = None
    host: str | None = None
    error: str | None = None
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    training_data: dict | None = None
    training: TrainingResult | None = None
    forgetting: dict[str, ProbeResult] | None = None
    forgetting_summary: str | None = None
    probes_base: dict[str, dict] | None = None
    cost: Cost = field(default_factory=Cost)
    schema_version: int = SCHEMA_VERSION

    ALWAYS: ClassVar[tuple[str, ...]] = (
        "schema_version",
        "status",
        "name",
        "description",
        "run_dir",
        "spec_path",
        "variant",
        "primary_task",
        "started_at",
        "notes",
        "tasks",
        "cost",
    )

    def to_json(self) -> dict:
        """report.json's content."""
        return to_json(self)

    @classmethod
    def from_json(cls, data: dict) -> RunResult:
        """A report.json read back (an older one too: fields it lacks take their defaults)."""
        known = _known(cls, data)
        known.setdefault("model", {})
        known.setdefault("run_dir", "")
        known.setdefault("primary_task", next(iter(data.get("tasks", {})), ""))
        known.setdefault("mode", "train")
        known.setdefault("name", "")
        known["tasks"] = {name: TaskResult.from_json(t) for name, t in data.get("tasks", {}).items()}
        known["cost"] = Cost.from_json(data.get("cost") or {})
        if data.get("training") is not None:
            known["training"] = TrainingResult.from_json(data["training"])
        if data.get("forgetting") is not None:
            known["forgetting"] = {n: ProbeResult.from_json(e) for n, e in data["forgetting"].items()}
        return cls(**known)
