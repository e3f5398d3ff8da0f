"""A run folder's report files: report.json from the start (status "running"), and at the end
report.md, report.html, plots/ and the TensorBoard copy, whatever stopped the run."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

from runner.model.load import describe_weights
from runner.report import figures as plots
from runner.report.document import document
from runner.report.figures import make_figures
from runner.report.html import to_html, to_markdown
from runner.report.tensorboard import log_to_tensorboard
from runner.results import RunResult
from runner.rundir.folder import now, write_json, write_text, writing
from runner.spec.types import Spec


def start_report(spec: Spec, run_dir: Path, mode: str) -> RunResult:
    """A run's result as it starts: who it is, which model, and status "running"."""
    return RunResult(
        name=spec.name,
        mode=mode,
        run_dir=str(run_dir),
        primary_task=spec.primary_task,
        description=spec.description,
        spec_path=str(spec.source_path) if spec.source_path else None,
        variant=dataclasses.asdict(spec.run) if spec.run else None,
        started_at=now(),
        pid=os.getpid(),  # `runner runs` tells a live run from one whose process is gone
        host=socket.gethostname(),
        model={
            "source": spec.model.source,
            **describe_weights(spec.model.source),
            "method": spec.method.kind,
            "chat_template": spec.model.chat_template,
            "max_length": spec.model.max_length,
            "truncation": spec.model.truncation,
        },
    )


def write_report(run_dir: Path, result: RunResult) -> None:
    """report.json as the run stands (written from the start, so a stopped run still has one)."""
    write_json(run_dir / "report.json", result.to_json())


def finish(run_dir: Path, result: RunResult, status: str, error: str | None = None, writer=None, step: int = 0) -> None:
    """Write report.json, report.md (+ plots/*.png) and report.html; log to TensorBoard."""
    result.status = status
    result.finished_at = now()
    if error:
        result.error = error
    write_report(run_dir, result)
    figures = make_figures(result)
    pngs = {key: plots.png_bytes(fig) for key, fig in figures.items()}
    if pngs:
        with writing(run_dir / "plots"):
            (run_dir / "plots").mkdir(exist_ok=True)
        for key, png in pngs.items():
            with writing(run_dir / "plots" / f"{key}.png"):
                (run_dir / "plots" / f"{key}.png").write_bytes(png)
    blocks = document(result, pngs)
    write_text(run_dir / "report.md", to_markdown(blocks, {k: f"plots/{k}.png" for k in pngs}))
    uris = {key: plots.data_uri(png) for key, png in pngs.items()}
    write_text(run_dir / "report.html", to_html(blocks, uris, result.name))
    if writer is not None:
        log_to_tensorboard(writer, result, figures, step)
    for fig in figures.values():
        plots.close(fig)
