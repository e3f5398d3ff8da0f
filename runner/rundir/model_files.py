"""A run folder's model files: the exported weights (model/) and inference.json with the task
templates, everything `runner predict` and `runner export` need to use the run without its spec."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from runner.errors import RunnerError
from runner.model.load import load_model
from runner.rundir.folder import write_json
from runner.spec.types import Spec


def export_model(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """Best weights as safetensors: an adapter alone (lora, ia3, prompt tuning), else the whole model."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


INFERENCE_FILE = "inference.json"


def write_inference_files(run_dir: Path, spec: Spec, tasks: list, precision: str) -> None:
    """What `runner predict` and `runner export` need besides model/: each task's template
    (copied into templates/) and how rows become prompts and answers, so that the run folder
    alone turns new rows into predictions exactly as the run scored its test split."""
    (run_dir / "templates").mkdir(exist_ok=True)
    entries = {}
    for data in tasks:
        task = data.task
        template = run_dir / "templates" / f"{task.name}.jinja"
        template.write_text(task.template.read_text())
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
    """A finished run's inference.json, or a clear error naming what is missing."""
    path = run_dir / INFERENCE_FILE
    if not run_dir.is_dir():
        raise RunnerError(f"{run_dir}: not a folder; give a run folder (<output_dir>/<name>/<timestamp>/).")
    if not path.is_file() or not (run_dir / "model").is_dir():
        status = run_status(run_dir)
        why = f" (its report says {status!r})" if status else ""
        raise RunnerError(
            f"{run_dir}: no {INFERENCE_FILE} and model/ here{why}: give the folder of a run that finished "
            "training (an experiment's runs are in its variants/<name>/)."
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunnerError(
            f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); the run folder is damaged."
        ) from None


def run_status(folder: Path) -> str | None:
    """A run folder's report.json status (None when it has none)."""
    try:
        return json.loads((folder / "report.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def load_run_model(run_dir: Path, inference: dict) -> tuple[torch.nn.Module, object]:
    """The run's trained model from model/ (an adapter goes on the base model that
    model.source names) and the tokenizer saved with it."""
    from transformers import AutoTokenizer

    folder = run_dir / "model"
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base, _ = load_model(inference["model_source"], inference["seed"])
        model = PeftModel.from_pretrained(base, folder)
    else:
        model, _ = load_model(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
