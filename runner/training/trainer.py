"""The Lightning Trainer a run uses: strategy, precision, callbacks, fit and its result."""

from __future__ import annotations

import inspect
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from runner.data.mixture import FineTuneData
from runner.errors import Interrupted, RunnerError
from runner.model.precision import resolve_precision
from runner.report.tensorboard import hparams_session
from runner.spec.types import Spec, TrainerSpec
from runner.training.callbacks import STOP, LastCheckpoint, StepTimer, TrainingCurves
from runner.training.module import FineTuner, monitor_key


def make_strategy(trainer: TrainerSpec):
    """The Lightning strategy by name, with trainer.collective_timeout where the strategy takes
    a process-group timeout (DDP, FSDP): a rank that never arrives then fails the run instead
    of hanging it."""
    from lightning.pytorch.strategies import StrategyRegistry

    name = trainer.strategy
    if name == "auto" or name not in StrategyRegistry:
        return name
    entry = StrategyRegistry[name]
    if "timeout" not in inspect.signature(entry["strategy"].__init__).parameters:
        return name
    return entry["strategy"](**entry["init_params"], timeout=timedelta(minutes=trainer.collective_timeout))


def timed_steps(module: FineTuner, datamodule: FineTuneData, spec: Spec, steps: int) -> list[tuple[float, int, int]]:
    """Train `steps` batches with the run's precision, data order and step (no validation,
    no checkpoints, nothing written) and return each batch's (seconds, padded, real tokens)."""
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=spec.trainer.accelerator,
        devices=1,
        precision=resolve_precision(spec.trainer.precision, spec.trainer.accelerator),
        max_steps=-(-steps // spec.training.gradient_accumulation),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.steps


class RunLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger in <run>/tensorboard, whose HParams entry refers to the
    scalars the report writes (report.tensorboard.hparam_metrics) instead of copying their
    values as scalars of its own, as Lightning's log_hyperparams does."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        """The settings into hparams.yaml, and with `metrics` the HParams plugin's session."""
        super().log_hyperparams(params)  # no metrics: Lightning writes no scalar, no hparams summary
        if metrics:
            hparams_session(self.experiment, params, metrics)


@dataclass
class FitResult:
    """What the report needs from training."""

    seconds: float
    epochs_run: int
    best_epoch: int | None
    best_val_loss: float | None
    monitor: str
    best_monitor: float | None
    stopped_early: bool
    stopped_by_time: bool
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    history: list[dict] = field(default_factory=list)
    tokens: int = 0
    step_seconds: float = 0.0
    global_steps: int = 0


def build_trainer(
    spec: Spec, run_dir: Path, steps_per_epoch: int
) -> tuple[L.Trainer, ModelCheckpoint, EarlyStopping | None]:
    """The Trainer with the best-checkpoint, last-checkpoint, early-stopping and timing callbacks."""
    training = spec.training
    monitor, mode = monitor_key(training, spec.primary_task)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-epoch{epoch}-step{step}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=False,  # LastCheckpoint writes last.ckpt
        auto_insert_metric_name=False,
    )
    # Rich draws a live bar on a terminal; in a log file (CI, nohup) tqdm's plain lines read better.
    # `runner -q` (RUNNER_QUIET): no bar at all, only errors and the results.
    quiet = bool(os.environ.get("RUNNER_QUIET"))
    progress = RichProgressBar() if sys.stdout.isatty() else TQDMProgressBar(refresh_rate=10)
    callbacks = [checkpoint, TrainingCurves(), StepTimer(), *([] if quiet else [progress])]
    every = spec.checkpointing
    callbacks.append(LastCheckpoint(run_dir / "checkpoints" / "last.ckpt", every.every_n_steps, every.every_n_minutes))
    early = None
    if training.early_stopping.enabled:
        early = EarlyStopping(
            monitor=monitor,
            mode=mode,
            patience=training.early_stopping.patience,
            min_delta=training.early_stopping.min_delta,
        )
        callbacks.append(early)
    # Validation runs every epoch; when max_steps ends training inside the first epoch,
    # validate at that step instead so that a best checkpoint exists.
    val_every = None
    batches_needed = (training.max_steps or 0) * training.gradient_accumulation
    if training.max_steps is not None and batches_needed < steps_per_epoch:
        val_every = batches_needed
    trainer = L.Trainer(
        accelerator=spec.trainer.accelerator,
        devices=list(spec.trainer.devices) if isinstance(spec.trainer.devices, tuple) else spec.trainer.devices,
        strategy=make_strategy(spec.trainer),
        num_nodes=spec.trainer.num_nodes,
        precision=resolve_precision(spec.trainer.precision, spec.trainer.accelerator),
        max_epochs=training.epochs,
        max_steps=training.max_steps if training.max_steps is not None else -1,
        max_time=None if training.max_time is None else timedelta(seconds=training.max_time),
        val_check_interval=val_every,
        check_val_every_n_epoch=1 if val_every is None else None,
        num_sanity_val_steps=0,
        log_every_n_steps=spec.trainer.log_every_n_steps,
        logger=RunLogger(run_dir),
        callbacks=callbacks,
        enable_progress_bar=not quiet,
        default_root_dir=str(run_dir),
        enable_model_summary=False,
        # Training rows are sharded by runner's own sampler (see FineTuneData.train_dataloader);
        # validation runs whole on every rank, so every rank computes the same monitor value.
        use_distributed_sampler=False,
    )
    return trainer, checkpoint, early


def fit(
    module: FineTuner, datamodule: FineTuneData, spec: Spec, run_dir: Path, resume_from: Path | None = None
) -> tuple[FitResult, L.Trainer]:
    """Train with validation every epoch, early stopping, best/last checkpoints."""
    steps_per_epoch = -(-len(datamodule.train_rows) // spec.training.batch_size)
    trainer, checkpoint, early = build_trainer(spec, run_dir, steps_per_epoch)
    started = time.perf_counter()
    STOP.training, STOP.signum = True, None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True if resume_from else None)
    except SIGTERMException:  # Lightning's own exit on SIGTERM (a SystemExit, code 0): a stop
        raise Interrupted(signal.SIGTERM) from None
    except Exception as exc:
        if trainer.world_size > 1 and is_timeout(exc):
            raise collective_timeout_error(spec, trainer, run_dir) from None
        raise
    finally:
        STOP.training = False
    seconds = time.perf_counter() - started
    timer = next(c for c in trainer.callbacks if isinstance(c, StepTimer))
    last_path = next(c for c in trainer.callbacks if isinstance(c, LastCheckpoint)).path
    history = [{"epoch": e, **v} for e, v in sorted(module.history.items())]
    scored = [h for h in history if h.get("monitor") is not None]
    monitor, mode = monitor_key(spec.training, spec.primary_task)
    # The epoch the checkpoint callback kept: first of equals, as its strict comparison keeps.
    pick = min if mode == "min" else max
    best = pick(scored, key=lambda h: h["monitor"]) if scored else None
    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None

    result = FitResult(
        seconds=seconds,
        epochs_run=len({h["epoch"] for h in history if "train_loss" in h}) or trainer.current_epoch,
        best_epoch=best["epoch"] if best else None,
        best_val_loss=best["val_loss"] if best else None,
        monitor=monitor,
        best_monitor=best["monitor"] if best else None,
        stopped_early=bool(early is not None and early.stopped_epoch > 0),
        stopped_by_time=spec.training.max_time is not None and seconds >= spec.training.max_time,
        best_checkpoint=best_path,
        last_checkpoint=last_path if last_path.is_file() else None,
        history=history,
        tokens=sum(real for _, _, real in timer.steps) * trainer.world_size,  # each rank counts its own share
        step_seconds=sum(seconds for seconds, _, _ in timer.steps),
        global_steps=trainer.global_step,
    )
    return result, trainer


def is_timeout(exc: BaseException) -> bool:
    """A collective that waited past the process group's timeout (gloo and NCCL word it alike)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return "timed out" in text or "timeout" in text or "watchdog" in text


def collective_timeout_error(spec: Spec, trainer: L.Trainer, run_dir: Path) -> RunnerError:
    """What a hang became: where, the likely causes, and how to continue."""
    return RunnerError(
        f"training stopped: rank {trainer.global_rank} waited more than trainer.collective_timeout "
        f"({spec.trainer.collective_timeout:g} min) for the other ranks at step {trainer.global_step} (epoch "
        f"{trainer.current_epoch}). Likely another rank died, hung or ran out of memory (see its log), or the "
        "ranks run different code or data. checkpoints/last.ckpt is the last saved state; continue with: "
        f"runner run {run_dir / 'spec.yaml'} --resume {run_dir}"
    )


def load_weights(module: FineTuner, checkpoint: Path) -> None:
    """Load a checkpoint's weights into the module (tensors only: no pickled code runs).

    Raises:
        RuntimeError: not a checkpoint runner wrote, or one of another model.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(state, dict):
        raise RuntimeError(f"checkpoint {checkpoint} holds no state_dict; it was not written by runner")
    missing, unexpected = module.load_state_dict(state, strict=False)
    trainable = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise RuntimeError(
            f"checkpoint {checkpoint} does not fit this model (missing {sorted(trainable & set(missing))[:3]}, unexpected {unexpected[:3]})"
        )
