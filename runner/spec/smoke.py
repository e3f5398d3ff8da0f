"""`runner run --smoke`: the spec's own data, templates, method and report through the whole road
in about a minute, by changing only what makes a run long.

The model becomes random-tiny sized to the spec model's own tokenizer (so every row is as long as
the real model sees it, and max_length fits as it will), each data file is sampled, training stops
after a few steps, each test split is cut to a seeded sample of its rows, and few-shot scoring and the
forgetting probes are left out.
The run gets its own name (`<name>-smoke`), so it is never taken for a real one.
"""

from __future__ import annotations

import copy

from runner.model.sources import RANDOM_TINY
from runner.spec.types import schema

SMOKE_STEPS = 4  # optimizer steps: enough to pass through fit, checkpoints and the best-model reload
SMOKE_TEST_ROWS = 40  # test rows scored per task: every rung and the report's tables, quickly
SMOKE_RUNS = 2  # an experiment's runs: two carry it through the comparison
SMOKE_ROWS = 600  # rows sampled from each data file: enough for every label, quick to split, check and fit
SMOKE_BLOCKS = 2  # the tiny model's blocks: method.freeze trains at most these


def smoke_spec(raw: dict) -> tuple[dict, tuple[str, ...]]:
    """A valid raw spec made a smoke run, and what the smoke run leaves out (printed before it starts)."""
    raw = copy.deepcopy(raw)
    defaults = schema()["properties"]
    model = raw.setdefault("model", {})
    source = model.get("source", defaults["model"]["properties"]["source"]["default"])
    skipped = []
    if source != RANDOM_TINY:
        model["tokenizer"] = model.get("tokenizer") or source
        model["source"] = RANDOM_TINY
        skipped.append(f"the model's weights: a random 2-layer model with {model['tokenizer']}'s tokenizer")
    training = raw.setdefault("training", {})
    training["max_steps"] = min(training.get("max_steps") or SMOKE_STEPS, SMOKE_STEPS)
    training["epochs"] = 1
    skipped.append(f"training after {training['max_steps']} optimizer steps")
    for variant in raw.get("variants", []):  # a variant's own length of training would undo it
        for key in ("training.max_steps", "training.epochs"):
            variant.get("set", {}).pop(key, None)
    _fit_freeze(raw, skipped)
    # One value for every task: tasks sharing a source must sample it alike.
    tasks = raw["tasks"] + [t for v in raw.get("variants", []) for t in v.get("add_tasks", [])]
    rows = min([SMOKE_ROWS, *(t["max_rows"] for t in tasks if t.get("max_rows"))])
    for task in tasks:
        task["max_rows"] = rows
    skipped.append(f"rows past a seeded sample of {rows} from each data file")
    evaluation = raw.setdefault("evaluation", {})
    baselines = evaluation.get("baselines", defaults["evaluation"]["properties"]["baselines"]["default"])
    if "base_few_shot" in baselines:
        evaluation["baselines"] = [b for b in baselines if b != "base_few_shot"]
        skipped.append("few-shot scoring of the base model")
    if evaluation.get("forgetting", defaults["evaluation"]["properties"]["forgetting"]["default"]):
        evaluation["forgetting"] = []
        skipped.append("the forgetting probes")
    evaluation["test_rows"] = min(evaluation.get("test_rows") or SMOKE_TEST_ROWS, SMOKE_TEST_ROWS)
    skipped.append(f"test rows beyond a seeded sample of {evaluation['test_rows']} per task")
    raw["name"] = f"{raw['name']}-smoke"
    return raw, tuple(skipped)


def smoke_runs_note(runs: int) -> tuple[str, ...]:
    """What a smoke run of an experiment of `runs` runs leaves out (flows/experiment keeps the first two)."""
    return (
        (f"runs past the first {SMOKE_RUNS} of the experiment's {runs} (--only NAME picks others)",)
        if runs > SMOKE_RUNS
        else ()
    )


def _fit_freeze(raw: dict, skipped: list[str]) -> None:
    """method.freeze.blocks (default 4) on the tiny model's 2 blocks: at most 2, here and in variants."""
    default = schema()["properties"]["method"]["properties"]["freeze"]["properties"]["blocks"]["default"]
    freeze = raw.setdefault("method", {}).setdefault("freeze", {})
    if freeze.get("blocks", default) > SMOKE_BLOCKS:
        freeze["blocks"] = SMOKE_BLOCKS
        if raw["method"].get("kind") == "freeze" or any(
            v.get("set", {}).get("method.kind") == "freeze" for v in raw.get("variants", [])
        ):
            skipped.append(f"blocks past the tiny model's {SMOKE_BLOCKS} in method.freeze")
    for variant in raw.get("variants", []):
        if variant.get("set", {}).get("method.freeze.blocks", 0) > SMOKE_BLOCKS:
            variant["set"]["method.freeze.blocks"] = SMOKE_BLOCKS
