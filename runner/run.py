"""`runner run` and `runner eval`: one spec -> a run folder with checkpoints, predictions and the report.

The `run` flow, top to bottom: prepare the inputs (data read, templated and split once per
source; the tokenizer; rows fitted to max_length; data checks; probes) — any problem stops here,
before a run folder exists — -> create the run folder -> load the model -> score the untouched
model (majority, zero-shot, few-shot, probes "before") -> train -> load the best checkpoint ->
score it (fine-tuned, probes "after", drift) -> write the report.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import sys
from pathlib import Path

import torch

from runner import report as reporting
from runner.builders import make_datamodule, prepared_model, quiet_libraries, trainable_module
from runner.data import splits_record
from runner.errors import Interrupted, RunnerError, SpecError
from runner.folder import (
    export_model,
    finish,
    folder_mb,
    input_fingerprints,
    last_checkpoint,
    new_run_dir,
    resume_problems,
    start_report,
    write_inference_files,
    write_run_header,
)
from runner.inputs import Inputs, prepare_inputs, print_findings
from runner.methods import METHODS, apply_method
from runner.model import count_parameters, load_model
from runner.plan import run_header
from runner.preflight import preflight
from runner.ranks import (
    RUN_DIR_ENV,
    agreed_run_dir,
    claim_run_dir,
    is_rank_zero,
    launched_externally,
    wait_for_header,
)
from runner.scoring import (
    Scoring,
    base_evaluator,
    describe_data,
    make_evaluator,
    score_base,
    score_tuned,
    summarize,
    timed,
)
from runner.spec import Spec
from runner.training import (
    STOP,
    FineTuneData,
    FineTuner,
    fit,
    load_weights,
    resolve_precision,
)

log = logging.getLogger(__name__)


def run_experiment(
    spec: Spec, output_dir: Path | None = None, resume: Path | None = None, run_dir: Path | None = None
) -> Path:
    """Train and evaluate; returns the run folder (`run_dir`: use this one, the same on every rank)."""
    quiet_libraries()
    if not is_rank_zero():
        # Another rank of a multi-process run (started by Lightning's launcher, torchrun, srun,
        # ...): join rank 0's run folder and train; scoring and the report are rank 0's.
        run_dir = agreed_run_dir(spec, output_dir, resume, run_dir)
        wait_for_header(run_dir)
        _worker_flow(spec, run_dir, last_checkpoint(resume) if resume is not None else None)
        return run_dir
    resume_from = last_checkpoint(resume) if resume is not None else None
    (inputs,) = preflight(spec, output_dir=output_dir, writes=resume is None)
    print_findings(inputs.findings)
    if resume is not None:
        check_resumable(resume, spec, inputs)
    agreed = agreed_run_dir(spec, output_dir, resume, run_dir)
    if agreed is not None and agreed != resume:
        run_dir = claim_run_dir(agreed)
    else:
        run_dir = resume if resume is not None else new_run_dir(output_dir or spec.output_dir, spec.name)
    # Under a launcher that started every rank at once, the others are already waiting to form
    # the process group: rank 0 scores the base model after training, not while they wait.
    base_later = launched_externally()
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the processes a strategy launches
    try:
        # The base model's scores are kept in the run folder: a resumed run does not score it again.
        return train_run(spec, run_dir, inputs, resume_from, shared=run_dir / "base_scores", base_later=base_later)
    finally:  # not left behind for a later run in the same process (or its subprocesses)
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
    `base_later`: score the base model after training, see launched_externally)."""
    return _guarded(
        spec,
        run_dir,
        "train",
        inputs,
        lambda report: _train_flow(spec, run_dir, report, inputs, resume_from, shared, base_later),
    )


def eval_experiment(spec: Spec, checkpoint: Path | None, output_dir: Path | None = None) -> Path:
    """Evaluate without training: the base model, and a checkpoint's model if given."""
    quiet_libraries()
    (inputs,) = preflight(spec, output_dir=output_dir, writes=True)
    print_findings(inputs.findings)
    run_dir = new_run_dir(output_dir or spec.output_dir, spec.name)
    return _guarded(spec, run_dir, "eval", inputs, lambda report: _eval_flow(spec, run_dir, report, inputs, checkpoint))


def _worker_flow(spec: Spec, run_dir: Path, resume_from: Path | None) -> None:
    """Rank > 0: the same data, model and trainer as rank 0, without scoring or writing."""
    import lightning as L

    L.seed_everything(spec.training.seed, verbose=False)
    inputs = prepare_inputs(spec, with_probes=False)
    model, tokenizer = prepared_model(spec)
    datamodule = make_datamodule(inputs, spec)
    evaluator = make_evaluator(model, inputs.encoder, spec, inputs.fitter)
    module = trainable_module(apply_method(model, spec.method, tokenizer), spec, inputs.tasks, evaluator)
    fit(module, datamodule, spec, run_dir, resume_from)


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


def needs_base_copy(spec: Spec) -> bool:
    """Drift compares next-token distributions of base and tuned model: an adapter can be
    switched off; a method that trains base weights needs a copy of them."""
    return METHODS[spec.method.kind].trains_base and any(p.kind == "drift" for p in spec.evaluation.forgetting)


def _guarded(spec: Spec, run_dir: Path, mode: str, inputs: Inputs, flow) -> Path:
    """Run a flow with its report kept honest: whatever stops it (an error, Ctrl-C, SIGTERM from
    a scheduler), report.json says so and report.md/html show what was done."""
    # A resumed run keeps the header it started with (checked equal by check_resumable).
    resumed = mode == "train" and (run_dir / "spec.yaml").is_file() and (run_dir / "checkpoints").is_dir()
    if not resumed:
        write_run_header(run_dir, spec, splits_record(inputs.tasks, spec.seed), input_fingerprints(spec, inputs.tasks))
    report = start_report(spec, run_dir, mode)
    describe_data(report, inputs.tasks, inputs.findings, inputs.encoder, spec)
    report.setdefault("cost", {})["prepare_seconds"] = round(inputs.seconds, 1)
    reporting.write_json(run_dir / "report.json", report)  # "running", from the start
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _raise_interrupted)
    try:
        flow(report)
    except Interrupted as exc:
        exc.detail = f"the report in {run_dir} says so; continue with: {resume_command(spec, run_dir)}"
        finish(run_dir, report, "interrupted", f"stopped by {exc.name}; continue with: {resume_command(spec, run_dir)}")
        raise
    except RunnerError as exc:
        finish(run_dir, report, "failed", exc.message)
        raise
    except Exception as exc:
        finish(run_dir, report, "failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return run_dir


def _raise_interrupted(signum: int, frame) -> None:
    if STOP.training and STOP.signum is None:
        # Training: the step in progress finishes and a checkpoint is saved first (LastCheckpoint).
        STOP.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this training step, with a checkpoint "
            "(again to stop at once, from the last checkpoint).",
            file=sys.stderr,
        )
        return
    # Raised, not handled here, so the flow unwinds (Lightning passes a BaseException that is
    # not a KeyboardInterrupt through fit unchanged) and the report is written on the way out.
    signal.signal(signum, signal.SIG_IGN)  # a further Ctrl-C must not break the report writing
    raise Interrupted(signum)


def resume_command(spec: Spec, run_dir: Path) -> str:
    # A run of an experiment continues with its experiment (variants/<run>/ -> the parent).
    folder = run_dir.parent.parent if spec.run is not None else run_dir
    return f"runner run {spec.source_path or 'SPEC'} --resume {folder}"


def _train_flow(
    spec: Spec,
    run_dir: Path,
    report: dict,
    inputs: Inputs,
    resume_from: Path | None,
    shared: Path | None,
    base_later: bool,
) -> None:
    import lightning as L

    L.seed_everything(spec.training.seed, verbose=False)
    with timed(report, "load_model_seconds"):
        model, tokenizer = prepared_model(spec)
    datamodule = make_datamodule(inputs, spec)
    report["training_data"] = describe_training_data(datamodule, spec)
    (run_dir / "predictions.jsonl").unlink(missing_ok=True)  # a resumed run scores everything again

    scoring = Scoring(spec, inputs.tasks, inputs.probes, report, run_dir, shared=shared)
    # The base copy (drift, or base scoring after training) is taken before the model moves to
    # the accelerator: it stays in CPU memory.
    trains_base = METHODS[spec.method.kind].trains_base
    base_copy = copy.deepcopy(model) if needs_base_copy(spec) or (base_later and trains_base) else None
    evaluator = make_evaluator(model, inputs.encoder, spec, inputs.fitter)
    if not base_later:
        with timed(report, "score_base_seconds"):
            score_base(evaluator, scoring)
        reporting.write_json(run_dir / "report.json", report)

    model = apply_method(model, spec.method, tokenizer)
    trainable, total = count_parameters(model)
    report["cost"] = {**report.get("cost", {}), "trainable_params": trainable, "total_params": total}
    module = trainable_module(model, spec, inputs.tasks, evaluator)
    print(run_header(spec, len(datamodule.train_dataloader()), trainable, total), file=sys.stderr)
    result, trainer = fit(module, datamodule, spec, run_dir, resume_from)
    if not trainer.is_global_zero:
        return  # evaluation and the report are rank 0's
    if trainer.received_sigterm:  # Lightning stopped fit on SIGTERM; the run did not finish
        raise Interrupted(signal.SIGTERM)
    if result.best_checkpoint is not None:
        load_weights(module, result.best_checkpoint)
    export_model(module.model, tokenizer, run_dir / "model")
    write_inference_files(
        run_dir, spec, inputs.tasks, resolve_precision(spec.trainer.precision, spec.trainer.accelerator)
    )

    evaluator.model = module.model.to(evaluator.device)
    base = base_evaluator(evaluator, base_copy)
    if base_later:
        with timed(report, "score_base_seconds"):
            score_base(base, scoring)
    with timed(report, "score_tuned_seconds"):
        score_tuned(evaluator, base, scoring)
    report["training"] = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "monitor": result.monitor,
        "best_monitor": result.best_monitor,
        "stopped_early": result.stopped_early,
        "stopped_by_time": result.stopped_by_time,
        "global_steps": result.global_steps,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "resumed_from_step": module.resumed_from_step,
        "epochs": result.history,
    }
    report["cost"] = {
        **report["cost"],
        "train_seconds": round(result.seconds, 2),
        "peak_rss_mb": reporting.peak_rss_mb(),
        "tokens_per_second": round(result.tokens / result.step_seconds, 1) if result.step_seconds else 0.0,
        "train_tokens": result.tokens,
        "checkpoint_mb": folder_mb(run_dir / "model"),
    }
    summarize(scoring)
    trainer.logger.log_hyperparams(hparams(spec), reporting.hparam_metrics(report))
    finish(run_dir, report, "complete", writer=trainer.logger.experiment, step=result.global_steps)


def _eval_flow(spec: Spec, run_dir: Path, report: dict, inputs: Inputs, checkpoint: Path | None) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    torch.manual_seed(spec.seed)
    with timed(report, "load_model_seconds"):
        model, tokenizer = prepared_model(spec)
    scoring = Scoring(spec, inputs.tasks, inputs.probes, report, run_dir)
    evaluator = make_evaluator(model, inputs.encoder, spec, inputs.fitter)
    with timed(report, "score_base_seconds"):
        score_base(evaluator, scoring)
    if checkpoint is not None:
        report["checkpoint"] = str(checkpoint)
        base_copy = copy.deepcopy(model) if needs_base_copy(spec) else None
        tuned = load_checkpoint_model(model, tokenizer, spec, checkpoint)
        evaluator.model = tuned.to(evaluator.device)
        score_tuned(evaluator, base_evaluator(evaluator, base_copy), scoring)
    summarize(scoring)
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
    logger.log_hyperparams(hparams(spec), reporting.hparam_metrics(report))
    finish(run_dir, report, "complete", writer=logger.experiment, step=0)


def load_checkpoint_model(model: torch.nn.Module, tokenizer, spec: Spec, checkpoint: Path) -> torch.nn.Module:
    """A run's `.ckpt` (tensors only, weights_only=True) or its exported `model/` folder."""
    if checkpoint.is_dir():
        if (checkpoint / "adapter_config.json").is_file():
            from peft import PeftModel

            return PeftModel.from_pretrained(model, checkpoint)
        tuned, _ = load_model(str(checkpoint))
        return tuned
    if checkpoint.suffix != ".ckpt" or not checkpoint.is_file():
        raise RunnerError(f"--checkpoint {checkpoint}: expected a run's checkpoints/*.ckpt file or its model/ folder.")
    module = FineTuner(
        apply_method(model, spec.method, tokenizer), spec.training, [t.name for t in spec.tasks], save_frozen=True
    )
    try:
        load_weights(module, checkpoint)
    except (RuntimeError, KeyError) as exc:
        raise RunnerError(f"--checkpoint {checkpoint} does not fit this spec's model and method: {exc}") from None
    return module.model


def hparams(spec: Spec) -> dict:
    """Flat settings for TensorBoard's HParams tab."""
    return {
        "variant": spec.run.variant if spec.run else "",
        "training_seed": spec.training.seed,
        "train_rows": spec.training.train_rows or 0,
        "replay_share": spec.replay.share if spec.replay else 0.0,
        "model": spec.model.source,
        "method": spec.method.kind,
        "lora_r": spec.method.settings["r"] if spec.method.kind == "lora" else 0,
        "learning_rate": spec.training.learning_rate,
        "epochs": spec.training.epochs,
        "batch_size": spec.training.batch_size,
        "seed": spec.seed,
        "tasks": ",".join(t.name for t in spec.tasks),
    }
