"""`runner eval`: score a trained checkpoint against the base model without training."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from runner.evaluation.scoring import (
    Scoring,
    base_evaluator,
    make_evaluator,
    needs_base_copy,
    score_base,
    score_tuned,
    summarize,
    timed,
)
from runner.inputs import Inputs, print_findings
from runner.preflight import preflight
from runner.report.tensorboard import hparam_metrics, hparams
from runner.results import RunResult
from runner.rundir.folder import new_run_dir
from runner.rundir.lifecycle import guarded
from runner.rundir.model_files import check_checkpoint
from runner.rundir.report_files import finish
from runner.spec.types import Spec
from runner.training.setup import load_checkpoint_model, prepared_model, quiet_libraries


def evaluate_spec(spec: Spec, checkpoint: Path | None, output_dir: Path | None = None) -> Path:
    """Evaluate without training: the base model, and a checkpoint's model if given (checked
    first: a damaged or foreign file stops before a run folder is made or anything is scored)."""
    quiet_libraries()
    if checkpoint is not None:
        check_checkpoint(checkpoint)
    (inputs,) = preflight(spec, output_dir=output_dir, writes=True)
    print_findings(inputs.findings)
    run_dir = new_run_dir(output_dir or spec.output_dir, spec.name)
    return guarded(spec, run_dir, "eval", inputs, lambda result: evaluate(spec, run_dir, result, inputs, checkpoint))


def evaluate(spec: Spec, run_dir: Path, result: RunResult, inputs: Inputs, checkpoint: Path | None) -> None:
    """The base model scored, then the checkpoint's model if given, against it; the report written."""
    from runner.training.trainer import RunLogger

    torch.manual_seed(spec.seed)
    with timed(result, "load_model_seconds"):
        model, tokenizer = prepared_model(spec)
    scoring = Scoring(spec, inputs.tasks, inputs.probes, result, run_dir)
    evaluator = make_evaluator(model, inputs.encoder, spec, inputs.fitter)
    with timed(result, "score_base_seconds"):
        score_base(evaluator, scoring)
    if checkpoint is not None:
        result.checkpoint = str(checkpoint)
        base_copy = copy.deepcopy(model) if needs_base_copy(spec) else None
        tuned = load_checkpoint_model(model, tokenizer, spec, checkpoint)
        evaluator.model = tuned.to(evaluator.device)
        score_tuned(evaluator, base_evaluator(evaluator, base_copy), scoring)
    summarize(scoring)
    logger = RunLogger(run_dir)  # its HParams entry points at the report's scalars, no copies
    logger.log_hyperparams(hparams(spec), hparam_metrics(result))
    finish(run_dir, result, "complete", writer=logger.experiment, step=0)
