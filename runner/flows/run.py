"""`runner run`: one spec -> a run folder with checkpoints, predictions and the report.

The `run` flow, top to bottom: prepare the inputs (data read, templated and split once per
source; the tokenizer; rows fitted to max_length; data checks; probes) — any problem stops here,
before a run folder exists — -> create the run folder -> load the model -> score the untouched
model (majority, zero-shot, few-shot, probes "before") -> train -> load the best checkpoint ->
score it (fine-tuned, probes "after", drift) -> write the report.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from runner.data.mixture import FineTuneData
from runner.errors import Interrupted, SpecError
from runner.evaluation.evaluator import Evaluator
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
from runner.inputs import Inputs, prepare_inputs, print_findings
from runner.model.load import count_parameters
from runner.model.methods import METHODS, apply_method
from runner.model.precision import resolve_precision
from runner.preflight import preflight
from runner.report.tensorboard import hparam_metrics, hparams
from runner.results import Cost, RunResult, TrainingResult
from runner.rundir.folder import (
    folder_mb,
    input_fingerprints,
    last_checkpoint,
    new_run_dir,
    resume_problems,
)
from runner.rundir.lifecycle import guarded
from runner.rundir.model_files import export_model, write_inference_files
from runner.rundir.ranks import (
    RUN_DIR_ENV,
    agreed_run_dir,
    claim_run_dir,
    is_rank_zero,
    launched_externally,
    wait_for_header,
)
from runner.rundir.report_files import finish, write_report
from runner.spec.types import Spec
from runner.training.memory import peak_rss_mb, training_allocator, trim_allocator
from runner.training.module import FineTuner
from runner.training.setup import (
    make_datamodule,
    prepared_model,
    quiet_libraries,
    restore_weights,
    run_header,
    trainable_module,
)
from runner.training.trainer import FitResult, fit, load_weights


def run_spec(
    spec: Spec, output_dir: Path | None = None, resume: Path | None = None, run_dir: Path | None = None
) -> Path:
    """Train and evaluate one run; returns the run folder (`run_dir`: use this one, the same on every rank).

    Every rank runs this flow. Rank 0 checks every input first (any problem stops before a run
    folder exists) and creates the folder; another rank (started by Lightning's launcher, torchrun,
    srun, ...) joins that folder once rank 0 has written its header, with the same data but not
    the probes, which only rank 0 scores."""
    quiet_libraries()
    resume_from = last_checkpoint(resume) if resume is not None else None
    if is_rank_zero():
        (inputs,) = preflight(spec, output_dir=output_dir, writes=resume is None)
        print_findings(inputs.findings)
        if resume is not None:
            check_resumable(resume, spec, inputs)
        run_dir = rank_zero_run_dir(spec, output_dir, resume, run_dir)
    else:
        run_dir = agreed_run_dir(spec, output_dir, resume, run_dir)
        wait_for_header(run_dir)
        inputs = prepare_inputs(spec, with_probes=False)
    # Under a launcher that started every rank at once, the others are already waiting to form
    # the process group: rank 0 scores the base model after training, not while they wait.
    base_later = launched_externally()
    with passed_down(run_dir):
        # The base model's scores are kept in the run folder: a resumed run does not score it again.
        return train_run(spec, run_dir, inputs, resume_from, shared=run_dir / "base_scores", base_later=base_later)


def rank_zero_run_dir(spec: Spec, output_dir: Path | None, resume: Path | None, run_dir: Path | None) -> Path:
    """The folder rank 0 writes: --resume's, the one every rank can name (created here), or a new
    timestamped one."""
    agreed = agreed_run_dir(spec, output_dir, resume, run_dir)
    if agreed is not None and agreed != resume:
        return claim_run_dir(agreed)
    return resume if resume is not None else new_run_dir(output_dir or spec.output_dir, spec.name)


@contextmanager
def passed_down(run_dir: Path):
    """RUNNER_RUN_DIR names the folder to the processes a strategy launches, and is not left
    behind for a later run in the same process (or its subprocesses)."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


def check_resumable(run_dir: Path, spec: Spec, inputs: Inputs) -> None:
    """--resume continues the training the folder holds: the same settings, rows and model."""
    problems, allowed = resume_problems(run_dir, spec, input_fingerprints(spec, inputs.tasks))
    if problems:
        raise SpecError(
            f"--resume {run_dir}",
            problems,
            footer="Resuming would mix two trainings. Put the spec back as it was, or start a new run (drop --resume).",
        )
    for line in allowed:
        print(f"resume: {line} (allowed: does not change training)", file=sys.stderr)


def train_run(
    spec: Spec,
    run_dir: Path,
    inputs: Inputs,
    resume_from: Path | None,
    shared: Path | None = None,
    base_later: bool = False,
) -> Path:
    """Train and score one run into an existing folder (`shared`: an experiment's base_scores/;
    `base_later`: score the base model after training, see launched_externally). Rank 0 keeps the
    report and handles signals; the other ranks only train."""
    if not is_rank_zero():
        train(spec, run_dir, None, inputs, resume_from, shared, base_later)
        return run_dir
    return guarded(
        spec,
        run_dir,
        "train",
        inputs,
        lambda result: train(spec, run_dir, result, inputs, resume_from, shared, base_later),
    )


def describe_training_data(datamodule: FineTuneData, spec: Spec) -> dict:
    """What one epoch trains on: rows and loss tokens per task and replay, and their shares."""
    out = {
        "per_epoch": datamodule.mixture(),
        "train_rows": spec.training.train_rows,
        "seed": spec.training.seed,
        "class_balance": spec.training.class_balance,
    }
    if spec.replay is not None:
        out["replay"] = {"share": spec.replay.share, "of": spec.replay.of, "data": str(spec.replay.data)}
    return out


def train(
    spec: Spec,
    run_dir: Path,
    result: RunResult | None,
    inputs: Inputs,
    resume_from: Path | None,
    shared: Path | None,
    base_later: bool,
) -> None:
    """The run on one rank, top to bottom; `result` is rank 0's (None on the others, which train
    and leave scoring and writing to rank 0)."""
    import lightning as L

    rank_zero = result is not None
    L.seed_everything(spec.training.seed, verbose=False)
    # The model first, untouched: its base scores are taken before the method changes it.
    with timed(result, "load_model_seconds"):
        model, tokenizer = prepared_model(spec)
    datamodule = make_datamodule(inputs, spec)
    evaluator = make_evaluator(model, inputs.encoder, spec, inputs.fitter)
    scoring = Scoring(spec, inputs.tasks, inputs.probes, result, run_dir, shared=shared) if rank_zero else None
    # The base copy (drift, or base scoring after training) is taken before the model moves to
    # the accelerator: it stays in CPU memory.
    base_copy = copy.deepcopy(model) if rank_zero and keeps_base_copy(spec, base_later) else None
    if rank_zero:
        result.training_data = describe_training_data(datamodule, spec)
        (run_dir / "predictions.jsonl").unlink(missing_ok=True)  # a resumed run scores everything again
        if not base_later:
            with timed(result, "score_base_seconds"):
                score_base(evaluator, scoring)
            write_report(run_dir, result)
            trim_allocator()  # scoring's freed buffers back to the system before training's activations

    # Then the method (which parameters train), then the module that hands the optimizer
    # exactly those parameters, then fit.
    model = apply_method(model, spec.method, tokenizer)
    module = trainable_module(model, spec, inputs.tasks, evaluator)
    if rank_zero:
        record_parameters(result.cost, spec, model, len(datamodule.train_dataloader()), run_dir)
    with training_allocator():  # activations mapped apart and freed back to the system
        fitted, trainer = fit(module, datamodule, spec, run_dir, resume_from)
    if not trainer.is_global_zero:
        return  # evaluation and the report are rank 0's
    if trainer.received_sigterm:  # Lightning stopped fit on SIGTERM; the run did not finish
        raise Interrupted(signal.SIGTERM)

    # The best checkpoint's weights are what is exported and scored, with the exact frozen weights.
    restore_weights(module, spec)
    if fitted.best_checkpoint is not None:
        load_weights(module, fitted.best_checkpoint)
    export_model(module.model, tokenizer, run_dir / "model")
    precision = resolve_precision(spec.trainer.precision, spec.trainer.accelerator)
    write_inference_files(run_dir, spec, inputs.tasks, precision)
    evaluator.model = module.model.to(evaluator.device)
    score_after(evaluator, base_evaluator(evaluator, base_copy), scoring, base_later)
    result.training = training_record(fitted, module)
    record_cost(result.cost, fitted, run_dir)
    summarize(scoring)
    trainer.logger.log_hyperparams(hparams(spec), hparam_metrics(result))
    finish(run_dir, result, "complete", writer=trainer.logger.experiment, step=fitted.global_steps)


def score_after(tuned: Evaluator, base: Evaluator, scoring: Scoring, base_later: bool) -> None:
    """The tuned model's rung and probes; the base model's too when they were put off (a launcher)."""
    if base_later:
        with timed(scoring.result, "score_base_seconds"):
            score_base(base, scoring)
    with timed(scoring.result, "score_tuned_seconds"):
        score_tuned(tuned, base, scoring)


def keeps_base_copy(spec: Spec, base_later: bool) -> bool:
    """A copy of the base weights is needed when the method trains them and the base model is
    scored after training (drift, or base scoring put off under a launcher)."""
    return needs_base_copy(spec) or (base_later and METHODS[spec.method.kind].trains_base)


def record_parameters(cost: Cost, spec: Spec, model: torch.nn.Module, batches_per_epoch: int, run_dir: Path) -> None:
    """The trainable share in the report's cost, and the run's header line on the terminal."""
    cost.trainable_params, cost.total_params = count_parameters(model)
    print(run_header(spec, batches_per_epoch, cost.trainable_params, cost.total_params, run_dir), file=sys.stderr)


def training_record(fitted: FitResult, module: FineTuner) -> TrainingResult:
    """How training went, epoch by epoch."""
    return TrainingResult(
        epochs_run=fitted.epochs_run,
        best_epoch=fitted.best_epoch,
        best_val_loss=fitted.best_val_loss,
        monitor=fitted.monitor,
        best_monitor=fitted.best_monitor,
        stopped_early=fitted.stopped_early,
        stopped_by_time=fitted.stopped_by_time,
        global_steps=fitted.global_steps,
        best_checkpoint=str(fitted.best_checkpoint) if fitted.best_checkpoint else None,
        resumed_from_step=module.resumed_from_step,
        epochs=fitted.history,
    )


def record_cost(cost: Cost, fitted: FitResult, run_dir: Path) -> None:
    """What training cost: time, memory, throughput and the exported model's size."""
    cost.train_seconds = round(fitted.seconds, 2)
    cost.peak_rss_mb = peak_rss_mb()
    cost.tokens_per_second = round(fitted.tokens / fitted.step_seconds, 1) if fitted.step_seconds else 0.0
    cost.train_tokens = fitted.tokens
    cost.checkpoint_mb = folder_mb(run_dir / "model")
