"""The spec as written into a run folder: a file that re-runs the same run from there."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from runner.spec.checks import absolute_pattern, find_template, model_source
from runner.spec.types import BUILTIN_REPLAY, EXPERIMENT_KEYS, Spec, schema


def written_dict(filled: dict, base_dir: Path) -> dict:
    """The filled spec as a user would write it, valid against the schema, with every path made
    absolute (so it re-runs from the run folder), the primary task named and only the chosen
    method's section kept. The built-in forgetting suite stays a name and max_time keeps the
    unit it was given in; written_spec adds a run's learning rate and training seed."""
    out = copy.deepcopy(filled)
    out.pop("$schema", None)
    out["output_dir"] = str((base_dir / filled["output_dir"]).resolve())
    out["model"]["source"] = model_source(filled["model"]["source"], base_dir)
    if out["model"].get("tokenizer"):
        out["model"]["tokenizer"] = model_source(out["model"]["tokenizer"], base_dir)
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


def to_jsonable(spec: Spec) -> dict:
    """The resolved spec as plain data (paths as strings), for the run folder."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {
                f.name: plain(getattr(v, f.name))
                for f in dataclasses.fields(v)
                if f.name not in ("written", "runs", "smoke")
            }
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    out = plain(spec)
    out["source_path"] = str(spec.source_path) if spec.source_path else None
    return out
