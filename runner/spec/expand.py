"""One spec, many runs: variants, seeds and learning-curve points expanded into named runs."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from runner.errors import SpecError
from runner.spec.build import resolve_run
from runner.spec.parse import set_path
from runner.spec.types import EXPERIMENT_KEYS, Run, Spec, VariantSpec

# What a variant may change: everything that is training, not what fixes the base scores
# (model, evaluation, seed, the primary task's rows and template) or the experiment itself.
VARIANT_ROOTS = ("method", "training", "replay")


VARIANT_TRAINER_KEYS = ("devices", "strategy", "num_nodes", "log_every_n_steps")


def experiment_runs(raw: dict, spec: Spec, base_dir: Path, source: str, source_path: Path | None) -> tuple:
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
                set_path(variant_raw, key.split("."), copy.deepcopy(value))
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
                run_spec = resolve_run(copy.deepcopy(variant_raw), base_dir, source, source_path)
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
