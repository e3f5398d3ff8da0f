"""Loading a spec: parse, check, build and expand — every problem collected and raised once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from runner.spec.build import resolve_run
from runner.spec.expand import experiment_runs
from runner.spec.parse import apply_overrides, read_spec_file
from runner.spec.smoke import smoke_runs_note, smoke_spec
from runner.spec.types import Spec


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (), smoke: bool = False) -> Spec:
    """Read, validate and resolve a spec file; raise `SpecError` listing every problem.

    `smoke` (runner run --smoke): the spec as written is checked first, so its problems are the
    user's own, then it is made a smoke run (runner.spec.smoke); `Spec.smoke` says what it leaves out."""
    path = Path(path)
    raw = read_spec_file(path)
    raw = apply_overrides(raw, overrides, source=str(path))
    spec = resolve_spec(raw, base_dir=path.resolve().parent, source=str(path), source_path=path)
    if not smoke:
        return spec
    raw, skipped = smoke_spec(raw)
    spec = resolve_spec(raw, base_dir=path.resolve().parent, source=str(path), source_path=path)
    return dataclasses.replace(spec, smoke=skipped + smoke_runs_note(len(spec.runs)))


def resolve_spec(raw: dict, base_dir: Path, source: str = "spec", source_path: Path | None = None) -> Spec:
    """Validate a raw spec dict and build the typed `Spec`, its runs expanded when it is an experiment."""
    spec = resolve_run(raw, base_dir, source, source_path)
    if spec.variants or spec.seeds or spec.curve:
        spec = dataclasses.replace(spec, runs=experiment_runs(raw, spec, base_dir, source, source_path))
    return spec
