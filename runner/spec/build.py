"""From a checked, defaults-filled dict to the frozen typed spec."""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path

from runner.errors import SpecError
from runner.model.methods import METHODS
from runner.spec.checks import (
    absolute_pattern,
    builtin_suite,
    find_template,
    max_time_seconds,
    model_source,
    semantic_problems,
)
from runner.spec.messages import resolve_ref, schema_problems
from runner.spec.parse import fill_defaults, non_finite
from runner.spec.types import BUILTIN_REPLAY, DATA_EXTENSIONS, SUITES_DIR, DataSource, Spec, SplitFiles, schema
from runner.spec.written import written_dict


def build_spec(filled: dict, base_dir: Path, source_path: Path | None) -> Spec:
    """The typed Spec from a dict that has passed the schema and semantic checks (resolve_run's job).

    Paths become absolute, built-in suites expand into their probes, and unset values that depend
    on others (learning rate by method, training seed, primary task) are filled in.
    """
    written = written_dict(filled, base_dir)
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
            probes += [_probe(fill_defaults(resolve_ref("#/$defs/probe"), p), suite_dir) for p in builtin_suite(probe)]
        else:
            probes.append(_probe(probe, base_dir))
    filled = {**filled, "evaluation": {**filled["evaluation"], "forgetting": probes}}
    kind = filled["method"]["kind"]
    method = {"kind": kind, "settings": filled["method"].get(kind, {})}
    training = dict(filled["training"])
    if training["learning_rate"] is None:
        training["learning_rate"] = METHODS[kind].learning_rate
    training["max_time"] = max_time_seconds(training.get("max_time"))
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
        "model": {
            **filled["model"],
            "source": model_source(filled["model"]["source"], base_dir),
            "tokenizer": model_source(filled["model"]["tokenizer"], base_dir) if filled["model"]["tokenizer"] else None,
        },
        "source_path": source_path,
        "written": written,
    }
    values.pop("$schema", None)
    return _build(Spec, values)


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


def resolve_run(raw: dict, base_dir: Path, source: str = "spec", source_path: Path | None = None) -> Spec:
    """One run's raw spec (no variants, seeds or curve): validated against the schema, filled with
    defaults, checked, and built; every problem of a stage raised at once."""
    problems = schema_problems(raw) + non_finite(raw)
    if problems:
        raise SpecError(source, problems)
    filled = fill_defaults(schema(), copy.deepcopy(raw))
    problems = semantic_problems(filled, base_dir)
    if problems:
        raise SpecError(source, problems)
    return build_spec(filled, base_dir, source_path)
