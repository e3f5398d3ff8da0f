"""A run folder's model files: the exported weights (model/) and inference.json with the task
templates, everything `runner predict` and `runner export` need to use the run without its spec."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from runner.errors import RunFolderError
from runner.model.load import load_model
from runner.model.methods import METHODS, Method
from runner.rundir.folder import CHANGED, checkpoint_problems, inside, write_json, write_text, writing
from runner.spec.types import Spec, schema
from runner.terminal import printable, quoted


def export_model(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """Best weights as safetensors: an adapter alone (lora, ia3, prompt tuning), else the whole model."""
    with writing(folder):
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)


INFERENCE_FILE = "inference.json"


def write_inference_files(run_dir: Path, spec: Spec, tasks: list, precision: str) -> None:
    """What `runner predict` and `runner export` need besides model/: each task's template
    (copied into templates/) and how rows become prompts and answers, so that the run folder
    alone turns new rows into predictions exactly as the run scored its test split."""
    with writing(run_dir / "templates"):
        (run_dir / "templates").mkdir(exist_ok=True)
    entries = {}
    for data in tasks:
        task = data.task
        template = run_dir / "templates" / f"{task.name}.jinja"
        write_text(template, task.template.read_text())
        entries[task.name] = {
            "template": str(template.relative_to(run_dir)),
            "labels": list(task.labels) if task.labels else None,
            "label_map": task.label_map,
            "id_field": task.id_field,
            "label_eos": data.label_eos,
        }
    write_json(
        run_dir / INFERENCE_FILE,
        {
            "model_source": spec.model.source,
            "seed": spec.seed,  # random-tiny's weights come from it
            "tokenizer_source": spec.model.tokenizer,  # random-tiny is sized to it (smoke runs)
            "method": spec.method.kind,
            "max_length": spec.model.max_length,
            "chat_template": spec.model.chat_template,
            "truncation": spec.model.truncation,
            "precision": precision,
            "batch_size": spec.evaluation.batch_size,
            "max_new_tokens": spec.evaluation.max_new_tokens,
            "primary_task": spec.primary_task,
            "limits": dataclasses.asdict(spec.limits),
            "tasks": entries,
        },
    )


def read_inference(run_dir: Path) -> dict:
    """A finished run's inference.json, checked with everything `runner predict` and `runner
    export` read from the run folder before any work: its keys and types, a known method, task
    templates inside the folder (links leading out refused), and model/ (see model_folder_problems).
    Each task's template comes back as its resolved path.

    Raises:
        RunFolderError: not a finished run's folder, or a file in it damaged or changed (exit 2).
    """
    path = run_dir / INFERENCE_FILE
    if not run_dir.is_dir():
        raise RunFolderError(str(run_dir), ["not a folder; give a run folder (<output_dir>/<name>/<timestamp>/)."])
    if not path.is_file() or not (run_dir / "model").is_dir():
        status = run_status(run_dir)
        why = f" (its report says {quoted(status, 40)})" if status else ""
        raise RunFolderError(
            str(run_dir),
            [
                f"no {INFERENCE_FILE} and model/ here{why}: give the folder of a run that finished training "
                "(an experiment's runs are in its variants/<name>/)."
            ],
        )
    inference, problems = read_object(path, INFERENCE_FILE, INFERENCE_MAX_BYTES)
    method = None
    if inference is not None:
        problems += inference_problems(run_dir, inference)
        method = METHODS.get(inference["method"]) if isinstance(inference.get("method"), str) else None
    problems += model_folder_problems(run_dir / "model", "model/", method)
    if problems:
        raise RunFolderError(str(run_dir), problems, footer=CHANGED)
    return inference


INFERENCE_MAX_BYTES = 16 * 2**20  # runner writes a few KB
REPORT_MAX_BYTES = 64 * 2**20  # report.json: runner writes a few hundred KB at most
JSON_MAX_BYTES = 256 * 2**20  # a model folder's JSON: tokenizer.json of a large vocabulary is tens of MB


def read_object(path: Path, name: str, limit: int) -> tuple[dict | None, list[str]]:
    """A JSON object from a run folder, or (None, the problem naming `name`)."""
    try:
        if path.stat().st_size > limit:
            return None, [f"{name}: {path.stat().st_size:,} bytes, more than runner writes ({limit:,} at most)."]
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return None, [f"{name}: cannot be read ({exc.strerror or exc})."]
    except (ValueError, RecursionError) as exc:
        return None, [f"{name}: not valid JSON ({printable(exc, 120)})."]
    if not isinstance(data, dict):
        return None, [f"{name}: got a JSON {type(data).__name__}, expected an object."]
    return data, []


def _integer(low: int, high: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _one_of(values) -> object:
    return lambda v: isinstance(v, str) and v in values


def _fields() -> dict:
    """inference.json's keys: (the test a value must pass, what it must be)."""
    model, trainer = schema()["properties"]["model"]["properties"], schema()["properties"]["trainer"]["properties"]
    truncation, precision = model["truncation"]["enum"], trainer["precision"]["enum"]
    return {
        "model_source": (lambda v: isinstance(v, str) and v != "", "the base model's source (a string)"),
        "seed": (_integer(-(2**63), 2**64), "an integer"),
        "method": (_one_of(METHODS), f"one of: {', '.join(METHODS)}"),
        "max_length": (_integer(16, 1048576), "an integer from 16 to 1048576"),
        "chat_template": (lambda v: isinstance(v, bool), "true or false"),
        "truncation": (_one_of(truncation), f"one of: {', '.join(truncation)}"),
        "precision": (_one_of(precision), f"one of: {', '.join(precision)}"),
        "batch_size": (_integer(1, 65536), "an integer from 1 to 65536"),
        "max_new_tokens": (_integer(1, 65536), "an integer from 1 to 65536"),
        "primary_task": (lambda v: isinstance(v, str), "a task name"),
        "tasks": (lambda v: isinstance(v, dict) and bool(v), "an object of task entries"),
    }


OPTIONAL_FIELDS = {  # written by newer runs; an older inference.json lacks them
    "tokenizer_source": (lambda v: v is None or (isinstance(v, str) and v != ""), "null or a model source (a string)"),
}


def _strings(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v)


TASK_FIELDS = {
    "template": (lambda v: isinstance(v, str) and v != "", "a path in the run folder (a string)"),
    "labels": (lambda v: v is None or _strings(v), "null or a list of label strings"),
    "label_map": (
        lambda v: v is None or isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "null or an object of strings",
    ),
    "id_field": (lambda v: v is None or isinstance(v, str), "null or a field name"),
    "label_eos": (lambda v: isinstance(v, bool), "true or false"),
}


def _field_problems(data: dict, fields: dict, where: str) -> list[str]:
    problems = []
    for key, (test, expected) in fields.items():
        if key not in data:
            problems.append(f"{INFERENCE_FILE}: {where}.{key}: missing; expected {expected}.")
        elif not test(data[key]):
            problems.append(f"{INFERENCE_FILE}: {where}.{key}: got {quoted(data[key], 60)}, expected {expected}.")
    return problems


def inference_problems(run_dir: Path, inference: dict) -> list[str]:
    """Every key of inference.json that is missing or has a wrong type or value, located; each
    task's template must be a file inside the run folder (resolved there for the caller)."""
    problems = _field_problems(inference, _fields(), "$")
    present = {key: field for key, field in OPTIONAL_FIELDS.items() if key in inference}
    problems += _field_problems(inference, present, "$")
    limits = inference.get("limits")
    if limits is not None and not isinstance(limits, dict):
        problems.append(f"{INFERENCE_FILE}: $.limits: got {quoted(limits, 60)}, expected an object of limits.")
    tasks = inference.get("tasks")
    if not isinstance(tasks, dict):
        return problems
    primary = inference.get("primary_task")
    if isinstance(primary, str) and tasks and primary not in tasks:
        problems.append(f"{INFERENCE_FILE}: $.primary_task: {quoted(primary, 60)} is not one of its tasks.")
    root = run_dir.resolve()
    for name, entry in tasks.items():
        where = f"$.tasks.{printable(name, 60)}"
        if not isinstance(entry, dict):
            problems.append(f"{INFERENCE_FILE}: {where}: got {quoted(entry, 60)}, expected an object.")
            continue
        problems += _field_problems(entry, TASK_FIELDS, where)
        if TASK_FIELDS["template"][0](entry.get("template")):
            template = run_dir / entry["template"]
            if not inside(template, root):
                problems.append(
                    f"{INFERENCE_FILE}: {where}.template: {quoted(entry['template'], 80)} leads outside the run "
                    "folder; a run's templates are its own copies in templates/."
                )
            elif not template.is_file():
                problems.append(f"{INFERENCE_FILE}: {where}.template: {quoted(entry['template'], 80)}: no such file.")
            else:
                entry["template"] = str(template.resolve())
    return problems


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".pyc", ".py")


def model_folder_problems(folder: Path, label: str, method: Method | None) -> list[str]:
    """What keeps `folder` from being the model/ runner exported (empty: nothing): plain files
    only (no links, no folders), no pickle or code files, every .safetensors file whole (its
    header read and checked against the file's size), every JSON file an object that names no
    custom code (auto_map), and an adapter or a full model as `method` says. `label` prefixes
    each file's name."""
    if not folder.is_dir():
        return [f"{label}: not a folder."]
    problems, tensors = [], []
    for entry in sorted(folder.iterdir()):
        name = label + printable(entry.name, 60)
        if entry.is_symlink() or not entry.is_file():
            problems.append(f"{name}: a link or folder; runner writes plain files into model/.")
        elif entry.suffix.lower() in PICKLE_SUFFIXES:
            problems.append(
                f"{name}: a pickle or code file; runner writes weights as safetensors only and never loads these."
            )
        elif entry.suffix == ".safetensors":
            tensors.append(entry.name)
            problems += _safetensors_problems(entry, name)
        elif entry.suffix == ".json":
            problems += _json_problems(entry, name, tensors_in=folder)
    if not tensors:
        problems.append(f"{label}: no .safetensors weights.")
    adapter = (folder / "adapter_config.json").is_file()
    needed = "adapter_model.safetensors" if adapter else "config.json"
    if not (folder / needed).is_file():
        problems.append(f"{label}{needed}: missing.")
    if method is not None and method.adapter != adapter:
        has = "an adapter (adapter_config.json)" if adapter else "a whole model, no adapter"
        problems.append(
            f"{label}: holds {has}, but {INFERENCE_FILE} names a method that trains {'an adapter' if method.adapter else 'the whole model'}."
        )
    return problems


def _safetensors_problems(path: Path, name: str) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # SafetensorError and OSError, as the file is cut short or not one
        return [f"{name}: not a whole safetensors file ({printable(exc, 120)})."]
    return [] if keys else [f"{name}: holds no tensors."]


def _json_problems(path: Path, name: str, tensors_in: Path) -> list[str]:
    """A model folder's JSON file: an object, naming no custom code, a known model or adapter
    type, and (a shard index) only weight files of this folder."""
    data, problems = read_object(path, name, JSON_MAX_BYTES)
    if data is None:
        return problems
    if "auto_map" in data:
        return [f"{name}: names custom code (auto_map); runner never runs code from a run folder."]
    if path.name == "config.json":
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if not _one_of(CONFIG_MAPPING_NAMES)(data.get("model_type")):
            return [f"{name}: model_type {quoted(data.get('model_type'), 40)} is not a model transformers knows."]
    if path.name == "adapter_config.json":
        from peft import PeftType

        if not _one_of({t.value for t in PeftType})(data.get("peft_type")):
            return [f"{name}: peft_type {quoted(data.get('peft_type'), 40)} is not an adapter peft knows."]
    if path.name.endswith(".index.json"):
        shards = data.get("weight_map")
        names = set(shards.values()) if isinstance(shards, dict) else {None}
        if not all(isinstance(n, str) and "/" not in n and (tensors_in / n).is_file() for n in names):
            return [f"{name}: its weight_map names files that are not this folder's own."]
    return []


def check_checkpoint(checkpoint: Path) -> None:
    """What `runner eval --checkpoint` loads, checked before anything is made or scored: a run's
    checkpoints/*.ckpt (tensors only, weights_only=True) or its exported model/ folder.

    Raises:
        RunFolderError: anything else, or a damaged one (exit 2).
    """
    if checkpoint.is_dir() and (checkpoint / INFERENCE_FILE).is_file():
        problems = [f"{checkpoint}: a run folder; give its model/ folder or one of its checkpoints/*.ckpt."]
    elif checkpoint.is_dir():
        problems = model_folder_problems(checkpoint, f"{checkpoint}/", None)
    elif not checkpoint.exists():
        problems = [f"{checkpoint}: not found."]
    elif checkpoint.suffix != ".ckpt":
        problems = [f"{checkpoint}: expected a run's checkpoints/*.ckpt file or its model/ folder."]
    else:
        problems = checkpoint_problems(checkpoint, str(checkpoint))
    if problems:
        raise RunFolderError(f"--checkpoint {checkpoint}", problems)


def run_status(folder: Path) -> str | None:
    """A run folder's report.json status (None when it has none)."""
    try:
        status = json.loads((folder / "report.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return status if isinstance(status, str) else None


def load_run_model(run_dir: Path, inference: dict) -> tuple[torch.nn.Module, object]:
    """The run's trained model from model/ (an adapter goes on the base model that
    model.source names) and the tokenizer saved with it. read_inference checked the files first;
    what only loading finds (a tensor of the wrong shape, a tokenizer file the library rejects)
    is a located error too, not a traceback.

    Raises:
        RunFolderError: model/ does not load (exit 2).
    """
    from safetensors import SafetensorError

    try:
        return _load_run_model(run_dir / "model", inference)
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        reason = printable(" ".join(str(exc).split()), 300)
        raise RunFolderError(str(run_dir), [f"model/: cannot be loaded ({reason})."], footer=CHANGED) from None


def _load_run_model(folder: Path, inference: dict) -> tuple[torch.nn.Module, object]:
    from transformers import AutoTokenizer

    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base, _ = load_model(inference["model_source"], inference["seed"], inference.get("tokenizer_source"))
        model = PeftModel.from_pretrained(base, folder)
    else:
        model, _ = load_model(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
