"""The score cache: base-model results, scored once and reused by later runs ("score once, reuse").

Scoring the untouched model (zero-shot and few-shot rungs, every probe's "before") takes minutes
and gives the same numbers for the same model, data, settings and code. Each such unit is stored
under a fingerprint of everything it depends on (see `context_parts`, `task_parts`,
`probe_parts`), so a change to any of them (weights, rows, template, few-shot draw, evaluation or
encoder settings, precision, device, library versions, runner's scoring code) is a miss and is
scored afresh. Entries live as JSON files in `scores_dir()`.

A cache must never break a run: an unreadable, corrupt or unwritable entry is a miss, logged.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import runner
from runner.data.examples import Example, TaskData
from runner.model.gguf import cache_dir
from runner.model.load import describe_weights
from runner.model.sources import RANDOM_TINY

if TYPE_CHECKING:
    from runner.evaluation.evaluator import Evaluator
    from runner.evaluation.probes import ProbeData
    from runner.spec.types import Spec


log = logging.getLogger(__name__)


NO_CACHE_ENV = "RUNNER_NO_CACHE"  # set to 1 to neither read nor write the score cache


FOLDER_ENV = "RUNNER_SCORE_CACHE"  # another folder for the score cache (tests use a temporary one)


RUNNER_DIR = Path(__file__).resolve().parents[1]


# Files (paths below runner/, as glob patterns) that only read specs (what a spec resolves to is
# in the fingerprint itself), check, present or compare results. Every other file of runner, in
# any package, a new one too, counts as scoring code: a change to it invalidates every entry.
NOT_SCORING = (
    "__init__.py",
    "*/__init__.py",
    "__main__.py",
    "cli.py",
    "errors.py",
    "data/checks.py",
    "flows/compare.py",
    "flows/experiment.py",
    "flows/preview.py",
    "flows/runs.py",
    "flows/validate.py",
    "report/*",
    "rundir/*",
    "spec/*",
)


def scoring_files(root: Path | None = None) -> list[Path]:
    """runner's scoring source files: every .py file below `root` (runner/), packages included,
    but NOT_SCORING."""
    root = root or RUNNER_DIR
    files = sorted(root.rglob("*.py"))
    return [p for p in files if not any(fnmatch.fnmatch(p.relative_to(root).as_posix(), n) for n in NOT_SCORING)]


def enabled(setting: bool) -> bool:
    """Whether to use the cache: the spec's `evaluation.cache`, unless RUNNER_NO_CACHE is set."""
    return setting and os.environ.get(NO_CACHE_ENV, "") in ("", "0")


def scores_dir() -> Path:
    """$RUNNER_SCORE_CACHE, else `scores/` in runner's cache folder (~/.cache/runner/scores)."""
    if os.environ.get(FOLDER_ENV):
        return Path(os.environ[FOLDER_ENV])
    return cache_dir() / "scores"


def fingerprint(parts: dict) -> str:
    """The first 16 hex digits of the sha256 of `parts` as canonical JSON (sorted keys)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load(key: str, folder: Path | None = None) -> dict | None:
    """The value stored under `key` (in `folder`, default `scores_dir()`), tensors restored;
    None for a miss or an unusable entry."""
    path = (folder or scores_dir()) / f"{key}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entry, dict) or entry.get("fingerprint") != key or not isinstance(entry.get("value"), dict):
            raise ValueError("not a score cache entry")
        return _decode(entry["value"])
    except FileNotFoundError:
        return None
    except Exception as exc:  # whatever is wrong with the file, the run scores afresh
        log.warning("Score cache entry %s is unusable (%s); scoring afresh.", path, exc)
        return None


def store(key: str, value: dict, about: dict | None = None, folder: Path | None = None) -> None:
    """Write `value` (tensors as lists) under `key` (in `folder`, default `scores_dir()`),
    atomically: a temporary file in the same folder, then a rename, so a reader never sees half
    an entry. Failures are logged, not raised."""
    folder = folder or scores_dir()
    entry = {"fingerprint": key, "about": {**(about or {}), "stored_at": time.time()}, "value": _encode(value)}
    tmp = None
    try:
        text = json.dumps(entry)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=f".{key}-", suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
            f.write(text)
        os.replace(tmp, folder / f"{key}.json")
    except Exception as exc:  # a full disk or a read-only home must not stop a run
        log.warning("Could not write score cache entry %s in %s (%s).", key, folder, exc)
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _encode(value):
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value):
    if isinstance(value, dict):
        if "__tensor__" in value:
            return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def context_parts(spec: Spec, evaluator: Evaluator) -> dict:
    """What every base unit of a run shares: the model, encoder and evaluation settings,
    precision and device, library versions and runner's scoring code."""
    from runner.model.precision import resolve_precision

    device = evaluator.device
    return {
        "model": model_parts(spec.model.source, spec.seed, evaluator.model, spec.model.tokenizer),
        "model_settings": {
            "source": spec.model.source,
            "max_length": spec.model.max_length,
            "chat_template": spec.model.chat_template,
            "truncation": spec.model.truncation,
            "uses_chat_template": evaluator.encoder.use_chat,  # off when the tokenizer has none
        },
        # Every setting the evaluator scores with (batch size: padding differs with the batch,
        # and so do the last digits; max_new_tokens; device; autocast dtype; a setting added
        # later too); the objects it holds are covered above or by the code digest.
        "evaluator": {
            f.name: getattr(evaluator, f.name)
            for f in dataclasses.fields(evaluator)
            if f.name not in ("model", "encoder", "fitter", "phase")
        },
        "seed": spec.seed,
        "precision": resolve_precision(spec.trainer.precision, spec.trainer.accelerator),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "peft": _version("peft"),
            "runner": runner.__version__,
        },
        "code": code_digest(),
    }


def model_parts(source: str, seed: int, model: torch.nn.Module, tokenizer: str | None = None) -> dict:
    """What the base weights are: the random model's seed (and the tokenizer it is sized to),
    the GGUF file's sha256, a local folder's files (name, size, mtime), a hub model's commit."""
    if source == RANDOM_TINY:
        return {"source": source, "seed": seed, **({"tokenizer": tokenizer} if tokenizer else {})}
    parts = {"source": source, **describe_weights(source)}
    folder = Path(source).expanduser()
    if folder.is_dir():
        parts["files"] = [
            [str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        ]
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    if commit:
        parts["commit"] = commit
    return parts


def code_digest() -> str:
    """sha256 of the source text of runner's scoring files, each under its path in the package
    (so a file moved between packages changes the digest too)."""
    digest = hashlib.sha256()
    for path in scoring_files(RUNNER_DIR):
        digest.update(path.relative_to(RUNNER_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def task_parts(data: TaskData, rung: str, shots: int) -> dict:
    """One rung on one task: its test rows as the model sees them, and for few-shot the train
    rows the shots are drawn from (and re-rendered with the template when they must be cut)."""
    task = data.task
    return {
        "unit": "task",
        "rung": rung,
        "task": task.name,  # seeds the per-row few-shot draw
        "labels": list(task.labels) if task.labels else None,
        "label_eos": data.label_eos,
        "completion_eos": data.completion_eos,
        "template": hashlib.sha256(task.template.read_bytes()).hexdigest(),
        "few_shot_k": shots,
        "test": [_example(e) for e in data.test],
        "train": [_example(e) for e in data.train] if shots else [],
    }


def probe_parts(data: ProbeData) -> dict:
    """One probe's 'before': its settings and its items as loaded (paths left out: the items
    are what is scored, wherever the files are)."""
    probe = {f.name: getattr(data.probe, f.name) for f in dataclasses.fields(data.probe)}
    probe.pop("data")
    probe.pop("template")
    return {
        "unit": "probe",
        "probe": probe,
        "prompts": data.prompts,
        "answers": data.answers,
        "choices": data.choices,
        "gold": data.gold,
        "checks": data.checks,
        "text": hashlib.sha256(data.text.encode("utf-8")).hexdigest(),
    }


def _example(e: Example) -> list:
    return [e.task, e.row, e.prompt, e.completion, e.label, e.id, e.truncated, e.fields]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
