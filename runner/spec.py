"""The spec: the only code that touches raw dicts.

parse YAML/JSON -> apply `--set` overrides -> validate against the JSON Schema -> fill the
schema's defaults -> semantic checks (files exist, labels fit) -> frozen dataclasses.
Everything downstream takes `Spec`, never a dict.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import glob
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from runner.errors import SpecError
from runner.limits import SPEC_MAX_BYTES, SPEC_MAX_DEPTH, SPEC_MAX_VALUES, Limits
from runner.methods import METHODS
from runner.sources import DEFAULT_MODEL, RANDOM_TINY

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = PROJECT_ROOT / "schemas" / "experiment.schema.json"
TEMPLATE_DIR = PROJECT_ROOT / "templates"
DATA_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "text",
}
SUITES_DIR = Path(__file__).resolve().parent / "suites"
BUILTIN_SUITES = ("general",)
BUILTIN_REPLAY = ("general",)  # runner/suites/replay/<name>.jsonl, rendered by <name>.jinja
TEXT_PROBES = ("perplexity", "drift")


# --- typed spec -------------------------------------------------------------------------
# Field names mirror the schema's properties one to one (a test keeps them in step);
# user-facing documentation of each field lives once, in the schema's `description`.


@dataclass(frozen=True)
class ModelSpec:
    source: str
    max_length: int
    chat_template: bool
    truncation: str = "fields"


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
    kind: str  # a key of runner.methods.METHODS
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


# --- loading ----------------------------------------------------------------------------


@cache
def schema() -> dict:
    """The experiment JSON Schema (the single definition of the spec)."""
    return json.loads(SCHEMA_PATH.read_text())


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read, validate and resolve a spec file; raise `SpecError` listing every problem."""
    path = Path(path)
    raw = read_spec_file(path)
    raw = apply_overrides(raw, overrides, source=str(path))
    return resolve_spec(raw, base_dir=path.resolve().parent, source=str(path), source_path=path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: YAML keeps the
    last silently, so a second `training:` block would drop the first without a word."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}); keep one", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _reject_duplicate_json_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate key {duplicates[0]!r}; keep one")
    return dict(pairs)


def read_spec_file(path: Path) -> dict:
    """A spec file as a dict, read under fixed bounds (size, nesting, values after YAML aliases)."""
    if not path.is_file():
        raise SpecError(str(path), ["file not found; give the path to a .yaml, .yml or .json spec."])
    if path.stat().st_size > SPEC_MAX_BYTES:
        raise SpecError(
            str(path), [f"the file is {path.stat().st_size:,} bytes; a spec is at most {SPEC_MAX_BYTES:,} bytes."]
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            str(path), [f"line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8."]
        ) from None
    data = parse_spec_text(text, json_text=path.suffix == ".json", source=str(path))
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SpecError(str(path), [f"$: got {got}, expected a mapping of keys such as name, model, tasks."])
    return data


def parse_spec_text(text: str, json_text: bool, source: str, where: str = "$") -> Any:
    """YAML (or JSON) text as plain data, bounded: duplicate keys, nesting deeper than
    SPEC_MAX_DEPTH and more than SPEC_MAX_VALUES values once aliases are expanded (a "billion
    laughs" bomb expands a few lines into billions) are errors, not a hang or a traceback."""
    try:
        if json_text:
            data = json.loads(text, object_pairs_hook=_reject_duplicate_json_keys)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, ValueError) as exc:
        raise SpecError(source, [f"cannot be parsed: {_one_line(exc)}"]) from None
    except RecursionError:  # both parsers recurse per nesting level
        raise SpecError(
            source, [f"{where}: nested too deeply; a spec is at most {SPEC_MAX_DEPTH} levels deep."]
        ) from None
    problem = _size_problem(data, where)
    if problem:
        raise SpecError(source, [problem])
    return data


def _size_problem(value: Any, where: str) -> str | None:
    """Count values and depth without recursion, stopping at the first bound passed: walking an
    alias bomb's expanded tree (as validation and error formatting would) never ends."""
    stack, count = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > SPEC_MAX_VALUES:
            return (
                f"{where}: more than {SPEC_MAX_VALUES:,} values once YAML aliases (*name) are expanded; "
                "a spec is a few hundred values: write the repeated parts out, without nested aliases."
            )
        if depth > SPEC_MAX_DEPTH:
            return f"{where}: nested more than {SPEC_MAX_DEPTH} levels deep; a spec is a few levels deep."
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
    return None


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], source: str) -> dict:
    """Apply `KEY=VALUE` overrides (dotted path; list items by index; value parsed as YAML)."""
    raw = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.epochs=2.")
            continue
        try:
            value = parse_spec_text(text, json_text=False, source=source, where=f"--set {key}")
        except SpecError as exc:
            problems += [f"--set {_show(item)}: {p.removeprefix(f'--set {key}: ')}" for p in exc.problems]
            continue
        try:
            _set_path(raw, key.split("."), value)
        except (KeyError, IndexError, TypeError) as exc:
            problems.append(f"--set {_show(item)}: {exc.args[0]}")
    if problems:
        raise SpecError(source, problems)
    problem = _size_problem(raw, "$")
    if problem:
        raise SpecError(source, [problem])
    return raw


def _set_path(node: Any, parts: list[str], value: Any) -> None:
    *parents, last = parts
    for i, part in enumerate(parents):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise TypeError(f"{where} is a {type(node).__name__}, it has no key {parts[i + 1]!r}.")
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(parts))] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise TypeError(f"{'.'.join(parents)} is a {type(node).__name__}, it has no key {last!r}.")


def _list_index(items: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise IndexError(f"{where}: expected a list index from 0 to {len(items) - 1}.")
    return int(part)


def resolve_spec(raw: dict, base_dir: Path, source: str = "spec", source_path: Path | None = None) -> Spec:
    """Validate a raw spec dict and build the typed `Spec`."""
    problems = schema_problems(raw) + _non_finite(raw)
    if problems:
        raise SpecError(source, problems)
    filled = fill_defaults(schema(), copy.deepcopy(raw))
    problems = semantic_problems(filled, base_dir)
    if problems:
        raise SpecError(source, problems)
    spec = _build_spec(filled, base_dir, source_path)
    if spec.variants or spec.seeds or spec.curve:
        spec = dataclasses.replace(spec, runs=_experiment_runs(raw, spec, base_dir, source, source_path))
    return spec


def _non_finite(value, path: str = "$") -> list[str]:
    """NaN and infinities pass JSON Schema's number checks (YAML writes them .nan, .inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: got {value}, expected a finite number."]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{path}[{i}]")]
    return []


# --- experiments: variants x seeds, curve points ----------------------------------------

EXPERIMENT_KEYS = ("variants", "seeds", "curve", "comparison")
# What a variant may change: everything that is training, not what fixes the base scores
# (model, evaluation, seed, the primary task's rows and template) or the experiment itself.
VARIANT_ROOTS = ("method", "training", "replay")
VARIANT_TRAINER_KEYS = ("devices", "strategy", "num_nodes", "log_every_n_steps")


def _experiment_runs(raw: dict, spec: Spec, base_dir: Path, source: str, source_path: Path | None) -> tuple:
    """Every run of an experiment, each resolved and validated like a spec of its own; one
    SpecError lists the problems of all of them."""
    variants = [(f"$.variants[{i}]", v) for i, v in enumerate(spec.variants)]
    for i, n in enumerate(spec.curve.train_rows if spec.curve else ()):
        rows = None if n == "all" else n
        about = "the whole train split" if rows is None else f"{n} rows of the train split"
        variants.append(
            (f"$.curve.train_rows[{i}]", VariantSpec(f"rows-{n}", about, {"training.train_rows": rows}, ()))
        )
    if not variants:  # seeds alone: the spec itself, once per seed
        variants = [("$", VariantSpec(spec.method.kind, "", {}, ()))]
    problems = []
    seen: dict[str, str] = {}
    for where, v in variants:
        if v.name in seen:
            problems.append(f"{where}.name: {v.name!r} is also the name of {seen[v.name]}; give each run its own name.")
        seen.setdefault(v.name, where)
    primary_index = [t.name for t in spec.tasks].index(spec.primary_task)
    base_raw = {k: v for k, v in raw.items() if k not in EXPERIMENT_KEYS}
    seeds = spec.seeds or (None,)
    runs = []
    for where, variant in variants:
        key_problems = [f"{where}.set[{k!r}]: {p}" for k, p in _variant_key_problems(variant.set, primary_index)]
        variant_raw = copy.deepcopy(base_raw)
        for key, value in variant.set.items():
            try:
                _set_path(variant_raw, key.split("."), copy.deepcopy(value))
            except (KeyError, IndexError, TypeError) as exc:
                key_problems.append(f"{where}.set[{key!r}]: {exc.args[0]}")
        if key_problems:
            problems += key_problems
            continue
        variant_raw["tasks"] = [*variant_raw["tasks"], *copy.deepcopy(list(variant.add_tasks))]
        for seed in seeds:
            if seed is not None:
                variant_raw.setdefault("training", {})["seed"] = seed
            try:
                run_spec = resolve_spec(copy.deepcopy(variant_raw), base_dir, source, source_path)
            except SpecError as exc:
                problems += [f"{where} ({variant.name}): {p}" for p in exc.problems]
                break
            name = variant.name if len(seeds) == 1 else f"{variant.name}-seed{run_spec.training.seed}"
            curve_point = where.startswith("$.curve")
            train_rows = (run_spec.training.train_rows or "all") if curve_point else None
            run = Run(name, variant.name, run_spec.training.seed, variant.description, train_rows)
            # One process, one device: `auto` would start a multi-process strategy on a machine
            # with several GPUs, and each of its processes would run the whole experiment.
            trainer = dataclasses.replace(run_spec.trainer, devices=1)
            written = {**run_spec.written, "trainer": {**run_spec.written["trainer"], "devices": 1}}
            runs.append(dataclasses.replace(run_spec, run=run, trainer=trainer, written=written))
    if spec.trainer.num_nodes > 1 or (isinstance(spec.trainer.devices, int) and spec.trainer.devices > 1):
        problems.append(
            "$.trainer: an experiment's runs train one after another in one process, on one device; set "
            "trainer.devices: 1 and num_nodes: 1, or train each variant as its own spec under your launcher "
            "and put them side by side with `runner compare`."
        )
    if problems:
        raise SpecError(source, problems)
    return tuple(runs)


def _variant_key_problems(changes: dict, primary_index: int) -> list[tuple[str, str]]:
    """(key, problem) for every `set` key a variant may not change."""
    problems = []
    for key in changes:
        parts = key.split(".")
        root = parts[0]
        if root in VARIANT_ROOTS:
            continue
        if root == "trainer" and len(parts) == 2 and parts[1] in VARIANT_TRAINER_KEYS:
            continue
        if root == "tasks" and len(parts) >= 3 and parts[1].isdigit():
            if int(parts[1]) != primary_index or parts[2] == "weight":
                continue
            problems.append(
                (
                    key,
                    f"the primary task (tasks.{primary_index}) keeps its data, template, split and labels in every "
                    "variant, because they fix the base scores and the paired comparison; a variant may change its "
                    f"weight (tasks.{primary_index}.weight), the other tasks, or add tasks with add_tasks.",
                )
            )
            continue
        problems.append(
            (
                key,
                "a variant may change method.*, training.*, replay.*, trainer.devices/strategy/num_nodes/"
                "log_every_n_steps and the task mixture (tasks.<i>.<key> of other tasks, the primary task's weight, "
                "add_tasks); the model, evaluation, seed, data checks and the primary task fix the base scores and the "
                "paired comparison, so compare those in separate experiments.",
            )
        )
    return problems


# --- schema validation with messages a user can act on ----------------------------------


def schema_problems(raw: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
    return [_describe(e) for e in errors]


def json_path(parts) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _describe(err: jsonschema.ValidationError) -> str:
    where = json_path(err.absolute_path)
    got = _show(err.instance)
    kind, expected = err.validator, err.validator_value
    if kind == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        lines = []
        for key in sorted(set(err.instance) - set(allowed)):
            hint = difflib.get_close_matches(key, allowed, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"allowed keys: {', '.join(allowed)}."
            lines.append(f"{json_path([*err.absolute_path, key])}: unknown key {key!r}; {fix}")
        return "\n  ".join(lines)
    if kind == "required":
        missing = err.message.split("'")[1]
        return f"{where}: missing required key {missing!r}; {_field_help(err.schema, missing)}"
    if kind == "type":
        return f"{where}: got {got}, expected {_type_words(expected)}."
    if kind == "enum":
        hint = difflib.get_close_matches(str(err.instance), [str(v) for v in expected], n=1)
        fix = f"; did you mean {hint[0]!r}?" if hint else "."
        return f"{where}: got {got}, expected one of: {', '.join(map(str, expected))}{fix}"
    if kind == "const":
        return f"{where}: got {got}, expected {_show(expected)}."
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        return f"{where}: got {got}, expected a value {op} {expected}."
    if kind in ("minItems", "maxItems"):
        word = "at least" if kind == "minItems" else "at most"
        return f"{where}: got {len(err.instance)} items, expected {word} {expected}."
    if kind == "uniqueItems":
        return f"{where}: got {got}, expected no repeated items."
    if kind in ("minLength", "maxLength"):
        return f"{where}: got {got}, expected {'at least' if kind == 'minLength' else 'at most'} {expected} characters."
    if kind == "pattern":
        return f"{where}: got {got}, expected letters, digits, '_', '.' or '-' (starting with a letter or digit)."
    if kind in ("oneOf", "anyOf"):
        return _describe_alternatives(err, where, got)
    return f"{where}: {err.message}."


def _describe_alternatives(err: jsonschema.ValidationError, where: str, got: str) -> str:
    # A data source is a path string or an object with exactly one of path/hub.
    if isinstance(err.instance, dict) and "properties" in err.schema:
        has = [k for k in ("path", "glob", "hub") if k in err.instance]
        if len(has) >= 2:
            return f"{where}: got {' and '.join(map(repr, has))}, expected exactly one of path, glob, hub."
        if not has and set(err.instance) <= set(_resolve_ref("#/$defs/data_source")["properties"]):
            return (
                f"{where}: got none of 'path', 'glob', 'hub', expected one: a local file, a pattern of local files "
                "or a Hugging Face dataset id."
            )
    # An object that fits no object branch (task data: a data_source or split_files): report
    # the problems of the branch whose keys it shares most.
    if isinstance(err.instance, dict):
        branches = {}
        for e in err.context:
            branches.setdefault(e.relative_schema_path[0], []).append(e)
        objects = {
            i: errs
            for i, errs in branches.items()
            if not any(list(e.relative_schema_path) == [i, "type"] for e in errs)
            and _branch_schema(err.validator_value[i]).get("type") == "object"
        }
        if objects:
            keys = set(err.instance)
            best = max(
                objects, key=lambda i: len(keys & set(_branch_schema(err.validator_value[i]).get("properties", {})))
            )
            shallow = [e for e in objects[best] if len(e.relative_schema_path) <= 3 or e.validator == "oneOf"]
            return "\n  ".join(dict.fromkeys(_describe(e) for e in (shallow or objects[best])))
    # Otherwise report the branch whose type matches the value, if exactly one does.
    wrong_type = {e.relative_schema_path[0] for e in err.context if list(e.relative_schema_path)[1:] == ["type"]}
    same_type = [
        e
        for e in err.context
        if e.validator != "type" and len(e.relative_schema_path) <= 2 and e.relative_schema_path[0] not in wrong_type
    ]
    if len(same_type) == 1:
        return _describe(same_type[0])
    shapes = [_branch_words(branch) for branch in err.validator_value]
    return f"{where}: got {got}, expected {' or '.join(shapes)}."


def _branch_schema(branch: dict) -> dict:
    return _resolve_ref(branch["$ref"]) if "$ref" in branch else branch


def _branch_words(branch: dict) -> str:
    if "const" in branch:
        return _show(branch["const"])
    if "$ref" in branch:
        return "an object"
    if branch.get("type") == "array":
        return "a list"
    return _type_words(branch.get("type", "a value"))


def _type_words(expected) -> str:
    words = {
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "object": "a mapping",
        "array": "a list",
        "null": "null",
    }
    if isinstance(expected, list):
        return " or ".join(words.get(t, t) for t in expected)
    return words.get(expected, str(expected))


def _field_help(node_schema: dict, key: str) -> str:
    prop = node_schema.get("properties", {}).get(key, {})
    if "$ref" in prop:
        prop = _resolve_ref(prop["$ref"])
    return prop.get("description", "add it.")


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _resolve_ref(ref: str) -> dict:
    node = schema()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def fill_defaults(node_schema: dict, value: Any) -> Any:
    """Fill every missing property that has a `default` in the schema, recursively."""
    if "$ref" in node_schema:
        node_schema = _resolve_ref(node_schema["$ref"])
    if isinstance(value, dict) and "properties" in node_schema:
        for key, sub in node_schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = fill_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in node_schema:
        return [fill_defaults(node_schema["items"], v) for v in value]
    return value


# --- semantic checks --------------------------------------------------------------------


def semantic_problems(spec: dict, base_dir: Path) -> list[str]:
    """Rules the schema cannot express: files exist, names unique, shares add up, shared
    sources split alike."""
    problems = _name_problems(spec)
    seen = set()
    readers: dict[tuple, list[int]] = {}  # data source -> the tasks reading it
    for i, task in enumerate(spec["tasks"]):
        where = f"$.tasks[{i}]"
        if task["name"] in seen:
            problems.append(f"{where}.name: {task['name']!r} is used by an earlier task; give each task its own name.")
        seen.add(task["name"])
        data_problems = [
            problem
            for source_where, source in _task_sources(task["data"], f"{where}.data")
            for problem in _data_problems(source, base_dir, source_where)
        ]
        problems += data_problems
        template = find_template(task["template"], base_dir)
        if template is None:
            available = ", ".join(p.name for p in _template_dirs_listing(base_dir)) or "none"
            problems.append(f"{where}.template: {task['template']!r} not found in templates/; available: {available}.")
        if not data_problems and any(
            _data_format(source, base_dir) == "text" for _, source in _task_sources(task["data"], where)
        ):
            problems.append(f"{where}.data: a task needs rows (.jsonl, .json, .csv, .tsv, .parquet), not a .txt file.")
        split = task["split"]
        total = split["train"] + split["val"] + split["test"]
        if abs(total - 1.0) > 1e-6:
            problems.append(
                f"{where}.split: train + val + test = {total:g}, expected 1; e.g. train: 0.7, val: 0.2, test: 0.1."
            )
        problems += _label_map_problems(task, where)
        readers.setdefault(_source_key(task["data"], base_dir), []).append(i)
    for indices in readers.values():
        problems += _shared_source_problems([spec["tasks"][i] for i in indices], indices)
    for i, probe in enumerate(spec["evaluation"]["forgetting"]):
        if isinstance(probe, dict):
            problems += probe_problems(probe, base_dir, f"$.evaluation.forgetting[{i}]")
    problems += _model_source_problems(spec["model"]["source"], base_dir)
    if str(spec["trainer"]["strategy"]).startswith("deepspeed"):
        problems.append(
            f"$.trainer.strategy: {spec['trainer']['strategy']!r} is not supported: DeepSpeed saves checkpoints as "
            "folders of shards that runner's scoring, --resume and export do not load. Use 'ddp' (the model fits "
            "on each device) or 'fsdp' (sharded; saved as one full checkpoint)."
        )
    names = [t["name"] for t in spec["tasks"]]
    if spec["primary_task"] is not None and spec["primary_task"] not in names:
        problems.append(f"$.primary_task: {spec['primary_task']!r} is not a task; tasks: {', '.join(names)}.")
    if spec["replay"] is not None:
        problems += _replay_problems(spec["replay"], base_dir)
    primary = next((t for t in spec["tasks"] if t["name"] == (spec["primary_task"] or names[0])), None)
    if primary is not None and not primary.get("labels") and not primary.get("label_map"):
        training = spec["training"]
        for key, default in (("monitor", "loss"), ("class_balance", "none")):
            if training[key] != default:
                problems.append(
                    f"$.training.{key}: {training[key]!r} needs a classification primary task (labels), "
                    f"and {primary['name']!r} has none; use {default!r} or give the task labels."
                )
    return problems


def _name_problems(spec: dict) -> list[str]:
    """Names become folder names and report headings: no control characters (JSON Schema's `$`
    lets a trailing newline through the name pattern), and max_time within a year."""
    named = [("$.name", spec["name"])]
    named += [(f"$.tasks[{i}].name", t["name"]) for i, t in enumerate(spec["tasks"])]
    named += [(f"$.variants[{i}].name", v["name"]) for i, v in enumerate(spec.get("variants") or [])]
    named += [
        (f"$.evaluation.forgetting[{i}].name", p["name"])
        for i, p in enumerate(spec["evaluation"]["forgetting"])
        if isinstance(p, dict)
    ]
    problems = [
        f"{where}: got {_show(name)}, which holds a control character (a newline, tab, ...); use letters, "
        "digits, '_', '.' or '-'."
        for where, name in named
        if any(ord(c) < 32 or ord(c) == 127 for c in name)
    ]
    max_time = spec["training"].get("max_time")
    if isinstance(max_time, str) and _seconds(max_time.strip()) > 366 * 86400:
        problems.append(f'$.training.max_time: got {max_time!r}, expected at most a year ("365:00:00:00").')
    return problems


def _model_source_problems(source: str, base_dir: Path) -> list[str]:
    """A source written as a path (./, ../, /, ~, or a .gguf file) must exist; anything else not
    found as a folder is taken as a hub id, checked when the model loads."""
    if source in (DEFAULT_MODEL, RANDOM_TINY):
        return []
    path = resolve_model_path(source, base_dir)
    looks_like_path = source.startswith((".", "/", "~")) or source.endswith(".gguf")
    kinds = f"'{DEFAULT_MODEL}', '{RANDOM_TINY}', a Hugging Face model folder, a .gguf file or a hub id"
    if source.endswith(".gguf"):
        return (
            [] if path.is_file() else [f"$.model.source: file {source!r} not found (looked at {path}); give {kinds}."]
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            return [f"$.model.source: folder {source!r} holds no config.json; expected a Hugging Face model folder."]
        return []
    if looks_like_path:
        return [f"$.model.source: folder {source!r} not found (looked at {path}); give {kinds}."]
    return []


def _model_source(source: str, base_dir: Path) -> str:
    """A local model path made absolute (relative to the spec's folder); names and hub ids as given."""
    if source in (DEFAULT_MODEL, RANDOM_TINY):
        return source
    path = resolve_model_path(source, base_dir)
    return str(path) if path.exists() or source.endswith(".gguf") else source


def resolve_model_path(source: str, base_dir: Path) -> Path:
    """A model path as written, relative to the spec's folder like every other path."""
    path = Path(source).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def _replay_problems(replay: dict, base_dir: Path) -> list[str]:
    if replay["data"] in BUILTIN_REPLAY:
        return []
    problems = _data_problems(replay["data"], base_dir, "$.replay.data")
    if not problems and _data_format(replay["data"], base_dir) == "text":
        problems.append("$.replay.data: replay needs rows (.jsonl, .json, .csv, .tsv, .parquet), not a .txt file.")
    if replay["template"] is not None and find_template(replay["template"], base_dir) is None:
        available = ", ".join(p.name for p in _template_dirs_listing(base_dir)) or "none"
        problems.append(f"$.replay.template: {replay['template']!r} not found in templates/; available: {available}.")
    return problems


def _task_sources(data: str | dict, where: str) -> list[tuple[str, str | dict]]:
    """(JSON path, source) of every file or hub split a task's data names."""
    if isinstance(data, dict) and "train" in data:
        return [(f"{where}.{name}", data[name]) for name in ("train", "val", "test") if name in data]
    return [(where, data)]


def _source_key(data: str | dict, base_dir: Path) -> tuple:
    def one(source):
        if isinstance(source, str):
            source = {"path": source}
        if "path" in source:
            return ("file", str((base_dir / source["path"]).resolve()))
        if "glob" in source:
            return ("glob", absolute_pattern(source["glob"], base_dir))
        return ("hub", source["hub"], source.get("config"), source.get("split", "train"))

    if isinstance(data, dict) and "train" in data:
        return ("split_files", *(one(data[n]) if n in data else None for n in ("train", "val", "test")))
    return one(data)


# Settings that decide which rows a source's split holds: tasks sharing the source must agree.
SHARED_SETTINGS = {
    "split": "split shares",
    "max_rows": "max_rows sample",
}


def _shared_source_problems(tasks: list[dict], indices: list[int]) -> list[str]:
    if len(tasks) < 2:
        return []
    problems = []
    names = ", ".join(repr(t["name"]) for t in tasks)
    first = tasks[0]
    for task, i in zip(tasks[1:], indices[1:]):
        for key, words in SHARED_SETTINGS.items():
            if task[key] != first[key]:
                problems.append(
                    f"$.tasks[{i}].{key}: tasks {names} read the same data, so they share one split of its rows and "
                    f"need the same {words}; got {_show(task[key])} here and {_show(first[key])} in "
                    f"task {first['name']!r}."
                )
        for key in ("stratify_by", "group_by"):
            mine = task["data"].get(key) if isinstance(task["data"], dict) else None
            theirs = first["data"].get(key) if isinstance(first["data"], dict) else None
            if mine != theirs:
                problems.append(
                    f"$.tasks[{i}].data.{key}: tasks {names} read the same data and share one split; give them the "
                    f"same {key} (got {_show(mine)} here, {_show(theirs)} in task {first['name']!r})."
                )
    return problems


def _label_map_problems(task: dict, where: str) -> list[str]:
    label_map, labels = task.get("label_map"), task.get("labels")
    if not label_map or labels is None:
        return []
    unknown = sorted({v for v in label_map.values() if v not in labels})
    if unknown:
        return [
            f"{where}.label_map: maps to {', '.join(map(repr, unknown))}, not among labels "
            f"({', '.join(labels)}); add them to labels or fix the map."
        ]
    return []


def probe_problems(probe: dict, base_dir: Path, where: str) -> list[str]:
    problems = _data_problems(probe["data"], base_dir, f"{where}.data")
    text = probe["kind"] in TEXT_PROBES
    if not problems and (_data_format(probe["data"], base_dir) == "text") != text:
        wanted = "a .txt file" if text else "rows (.jsonl, .json, .csv, .parquet)"
        problems.append(f"{where}.data: a {probe['kind']} probe reads {wanted}.")
    if not text:
        if "template" not in probe:
            problems.append(
                f"{where}: a {probe['kind']} probe needs 'template' (a Jinja file rendering '<prompt> ||| <answer>')."
            )
        elif find_template(probe["template"], base_dir) is None:
            available = ", ".join(p.name for p in _template_dirs_listing(base_dir)) or "none"
            problems.append(f"{where}.template: {probe['template']!r} not found in templates/; available: {available}.")
    if probe["kind"] == "multiple_choice" and "choices" not in probe:
        problems.append(
            f"{where}: a multiple_choice probe needs 'choices', a Jinja expression giving the list of choice texts."
        )
    return problems


def _data_format(data: str | dict, base_dir: Path) -> str:
    if isinstance(data, str):
        data = {"path": data}
    if "glob" in data and data.get("format", "auto") == "auto":
        return DATA_EXTENSIONS.get(Path(data["glob"]).suffix.lower(), "auto")
    if "path" not in data:
        return data.get("format", "auto")
    if data.get("format", "auto") != "auto":
        return data["format"]
    return DATA_EXTENSIONS.get(Path(data["path"]).suffix.lower(), "auto")


def builtin_suite(name: str) -> list[dict]:
    """The probe definitions of a built-in suite (runner/suites/<name>/suite.yaml)."""
    return yaml.safe_load((SUITES_DIR / name / "suite.yaml").read_text())


def _data_problems(data: str | dict, base_dir: Path, where: str) -> list[str]:
    if isinstance(data, str):
        data = {"path": data, "format": "auto"}
    elif "glob" in data:
        matches = [p for p in glob.glob(absolute_pattern(data["glob"], base_dir), recursive=True) if Path(p).is_file()]
        if not matches:
            return [
                f"{where}.glob: {data['glob']!r} matches no file (relative to {base_dir.name}/); check the pattern."
            ]
        unknown = sorted({Path(p).suffix for p in matches if Path(p).suffix.lower() not in DATA_EXTENSIONS})
        if data.get("format", "auto") == "auto" and unknown:
            return [f"{where}.glob: matches files of unknown format ({', '.join(unknown)}); narrow it or set format."]
        return []
    elif "path" in data:
        where = f"{where}.path"
    else:
        return []
    path = (base_dir / data["path"]).resolve()
    if not path.is_file():
        return [f"{where}: file {data['path']!r} not found (relative to {base_dir.name}/); check the path."]
    if data.get("format", "auto") == "auto" and path.suffix.lower() not in DATA_EXTENSIONS:
        known = ", ".join(DATA_EXTENSIONS)
        return [f"{where}: cannot tell the format of {path.name!r} from its extension ({known}); set data.format."]
    return []


def template_dirs(base_dir: Path) -> list[Path]:
    """Where template names are looked up: next to the spec, its templates/, then the project's."""
    dirs = [base_dir, base_dir / "templates", base_dir.parent / "templates", TEMPLATE_DIR]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def find_template(name: str, base_dir: Path) -> Path | None:
    for d in template_dirs(base_dir):
        candidate = (d / name).resolve()
        if candidate.is_file():
            return candidate
    return None


def _template_dirs_listing(base_dir: Path) -> list[Path]:
    found = {}
    for d in template_dirs(base_dir):
        for p in sorted(d.glob("*.jinja")):
            found.setdefault(p.name, p)
    return list(found.values())


# --- building the typed spec ------------------------------------------------------------


def _build_spec(filled: dict, base_dir: Path, source_path: Path | None) -> Spec:
    written = _written(filled, base_dir)
    tasks = [
        {
            **t,
            "data": _task_data(t["data"], base_dir),
            "template": find_template(t["template"], base_dir),
            **_labels_and_map(t),
        }
        for t in filled["tasks"]
    ]
    probes = []
    for probe in filled["evaluation"]["forgetting"]:
        if isinstance(probe, str):  # a built-in suite: its probes resolve in its own folder
            suite_dir = SUITES_DIR / probe
            probes += [_probe(fill_defaults(_resolve_ref("#/$defs/probe"), p), suite_dir) for p in builtin_suite(probe)]
        else:
            probes.append(_probe(probe, base_dir))
    filled = {**filled, "evaluation": {**filled["evaluation"], "forgetting": probes}}
    kind = filled["method"]["kind"]
    method = {"kind": kind, "settings": filled["method"].get(kind, {})}
    training = dict(filled["training"])
    if training["learning_rate"] is None:
        training["learning_rate"] = METHODS[kind].learning_rate
    training["max_time"] = _seconds(training.get("max_time"))
    if training["seed"] is None:
        training["seed"] = filled["seed"]
    values = {
        **filled,
        "tasks": tasks,
        "method": method,
        "primary_task": filled["primary_task"] or filled["tasks"][0]["name"],
        "replay": _replay(filled["replay"], base_dir),
        "training": training,
        "output_dir": (base_dir / filled["output_dir"]).resolve(),
        "model": {**filled["model"], "source": _model_source(filled["model"]["source"], base_dir)},
        "source_path": source_path,
        "written": written,
    }
    values.pop("$schema", None)
    return _build(Spec, values)


def _written(filled: dict, base_dir: Path) -> dict:
    """The filled spec as a user would write it, valid against the schema, with every path made
    absolute (so it re-runs from the run folder), the primary task named and only the chosen
    method's section kept. The built-in forgetting suite stays a name and max_time keeps the
    unit it was given in; written_spec adds a run's learning rate and training seed."""
    out = copy.deepcopy(filled)
    out.pop("$schema", None)
    out["output_dir"] = str((base_dir / filled["output_dir"]).resolve())
    out["model"]["source"] = _model_source(filled["model"]["source"], base_dir)
    out["primary_task"] = filled["primary_task"] or filled["tasks"][0]["name"]
    kind = filled["method"]["kind"]
    out["method"] = {"kind": kind, **({kind: out["method"][kind]} if kind in out["method"] else {})}
    out["tasks"] = [_written_task(t, base_dir) for t in filled["tasks"]]
    out["evaluation"]["forgetting"] = [
        p if isinstance(p, str) else _written_paths(p, base_dir, ("data", "template"))
        for p in filled["evaluation"]["forgetting"]
    ]
    if filled["replay"] is not None and filled["replay"]["data"] not in BUILTIN_REPLAY:
        out["replay"] = _written_paths(filled["replay"], base_dir, ("data", "template"))
    for variant in out.get("variants") or []:
        variant["add_tasks"] = [_written_task(t, base_dir) for t in variant.get("add_tasks", [])]
        for key, value in variant.get("set", {}).items():
            last = key.split(".")[-1]
            if key == "replay" and isinstance(value, dict) and value.get("data") not in BUILTIN_REPLAY:
                variant["set"][key] = _written_paths(value, base_dir, ("data", "template"))
            elif last in ("data", "template", "path", "glob") and not (
                key == "replay.data" and value in BUILTIN_REPLAY
            ):
                variant["set"][key] = _written_paths({last: value}, base_dir, (last,))[last]
    return out


def _written_task(task: dict, base_dir: Path) -> dict:
    return _written_paths(task, base_dir, ("data", "template"))


def _written_paths(node: dict, base_dir: Path, keys: tuple[str, ...]) -> dict:
    """`node` with its data sources and template names made absolute."""
    out = dict(node)
    for key in keys:
        value = out.get(key)
        if value is None:
            continue
        if key == "template":
            found = find_template(value, base_dir)
            out[key] = str(found) if found is not None else value
        elif key == "path" or (key == "data" and isinstance(value, str)):
            out[key] = str((base_dir / value).resolve())
        elif key == "glob":
            out[key] = absolute_pattern(value, base_dir)
        elif isinstance(value, dict) and "train" in value:  # split files
            out[key] = {k: _written_paths({"data": v}, base_dir, ("data",))["data"] if k in ("train", "val", "test")
                        else v for k, v in value.items()}  # fmt: skip
        elif isinstance(value, dict):
            out[key] = _written_paths(value, base_dir, ("path", "glob"))
    return out


def written_spec(spec: Spec) -> dict:
    """What a run folder's spec.yaml holds and `runner validate` prints: a valid spec that re-runs
    this run (for an experiment's run: that run alone)."""
    out = {k: copy.deepcopy(spec.written[k]) for k in schema()["properties"] if k in spec.written}
    if not spec.is_experiment:  # a single run (or one run of an experiment): no experiment keys
        for key in EXPERIMENT_KEYS:
            out.pop(key, None)
        # What defaults to something computed is written out; in an experiment it stays null,
        # since each variant resolves its own (a `full` variant its own learning rate).
        out["training"]["learning_rate"] = spec.training.learning_rate
        out["training"]["seed"] = spec.training.seed
    return out


def _replay(replay: dict | None, base_dir: Path) -> dict | None:
    """The replay file and the template that renders its rows."""
    if replay is None:
        return None
    if replay["data"] in BUILTIN_REPLAY:
        folder = SUITES_DIR / "replay"
        return {**replay, "data": folder / f"{replay['data']}.jsonl", "template": folder / f"{replay['data']}.jinja"}
    template = (
        find_template(replay["template"], base_dir) if replay["template"] else SUITES_DIR / "replay" / "rows.jinja"
    )
    return {**replay, "data": (base_dir / replay["data"]).resolve(), "template": template}


def _seconds(value: float | str | None) -> float | None:
    """training.max_time as seconds: a number of minutes, or "HH:MM:SS" / "DD:HH:MM:SS"."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value) * 60
    parts = [int(p) for p in value.split(":")]
    days, hours, minutes, seconds = [0] * (4 - len(parts)) + parts
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _task_data(data: str | dict, base_dir: Path) -> DataSource | SplitFiles:
    if isinstance(data, dict) and "train" in data:
        files = {
            name: _build(DataSource, _data_source(data[name], base_dir))
            for name in ("train", "val", "test")
            if name in data
        }
        return SplitFiles(**files, stratify_by=data.get("stratify_by"), group_by=data.get("group_by"))
    return _build(DataSource, _data_source(data, base_dir))


def _labels_and_map(task: dict) -> dict:
    """label_map keys as the strings a template renders (YAML reads `0:` as an integer); labels
    default to the map's values in order."""
    if not task.get("label_map"):
        return {"label_map": None}
    label_map = {str(k): v for k, v in task["label_map"].items()}
    labels = task.get("labels") or list(dict.fromkeys(label_map.values()))
    return {"label_map": label_map, "labels": labels}


def _data_source(data: str | dict, base_dir: Path) -> dict:
    data = {"path": data} if isinstance(data, str) else dict(data)
    if "path" in data:
        data["path"] = (base_dir / data["path"]).resolve()
        if data.get("format", "auto") == "auto":
            data["format"] = DATA_EXTENSIONS[data["path"].suffix.lower()]
    if "glob" in data:
        data["glob"] = absolute_pattern(data["glob"], base_dir)
    return data


def absolute_pattern(pattern: str, base_dir: Path) -> str:
    """A glob pattern relative to the spec's folder, made absolute with the folder's own name
    escaped (a spec in `runs[1]/` must not make `[1]` a character class)."""
    if Path(pattern).expanduser().is_absolute():
        return str(Path(pattern).expanduser())
    return str(Path(glob.escape(str(base_dir.resolve()))) / pattern)


def _probe(probe: dict, base_dir: Path) -> dict:
    template = find_template(probe["template"], base_dir) if "template" in probe else None
    return {**probe, "data": _data_source(probe["data"], base_dir), "template": template}


def _build(cls, values: dict):
    """Build a (nested) frozen dataclass from a dict whose keys match its fields."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        kwargs[field.name] = _convert(hints[field.name], values[field.name])
    return cls(**kwargs)


def _convert(hint, value):
    if dataclasses.is_dataclass(value):  # built already (task data)
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _build(hint, value)
    if origin is tuple and isinstance(value, list):
        return tuple(_convert(args[0], v) for v in value)
    if args and origin is not tuple:  # a union: take the first member the value fits
        for member in args:
            if member is type(None) and value is None:
                return None
            if dataclasses.is_dataclass(member) and isinstance(value, dict):
                return _build(member, value)
            if typing.get_origin(member) is tuple and isinstance(value, list):
                return _convert(member, value)
    return value


def to_jsonable(spec: Spec) -> dict:
    """The resolved spec as plain data (paths as strings), for the run folder."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {
                f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.name not in ("written", "runs")
            }
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    out = plain(spec)
    out["source_path"] = str(spec.source_path) if spec.source_path else None
    return out
