"""`runner plan`: what a run will cost, before paying for it.

The same inputs as `runner run` (data statistics are `runner preview`'s), then a few timed
pieces of the real work on this machine: training steps through the same Lightning module and
data loader (length-grouped batches put the longest batch first, so the peak memory is seen),
a validation batch, and a sample of every scoring unit. Each is extrapolated by what the full
run does: padded tokens for training and validation, rows for scoring. Early stopping can only
shorten the estimate; it is for the maximum number of epochs.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time

import torch

from runner.evaluation.probes import PROBES, ProbeData, run_probe
from runner.inputs import Inputs, summary_text
from runner.preflight import preflight
from runner.spec.types import Spec
from runner.training.memory import peak_rss_mb
from runner.training.setup import run_precision, step_counts

TIMED_STEPS = 3  # after one warm-up step


SAMPLE_ROWS = 16  # rows (or items) timed per scoring unit


def plan(spec: Spec) -> dict:
    """Steps, parameters, and estimated wall time and peak memory of `runner run SPEC`."""
    from runner.training.setup import make_datamodule, prepared_model, quiet_libraries, trainable_module

    quiet_libraries()
    started = time.perf_counter()
    (inputs,) = preflight(spec, runs=[spec], enforce_checks=False)
    prepare_s = time.perf_counter() - started
    datamodule = make_datamodule(inputs, spec)
    loader = datamodule.train_dataloader()
    batches_per_epoch, steps_per_epoch, steps = step_counts(spec, len(loader))
    epochs = steps / steps_per_epoch

    started = time.perf_counter()
    model, tokenizer = prepared_model(spec)
    load_s = time.perf_counter() - started
    scoring = _scoring_estimate(spec, inputs, model)
    from runner.model.load import count_parameters
    from runner.model.methods import apply_method

    model = apply_method(model, spec.method, tokenizer)
    trainable, total = count_parameters(model)
    module = trainable_module(model, spec, inputs.tasks)
    per_token, peak_mb = _time_training(module, datamodule, spec)
    train_tokens = sum(b["input_ids"].numel() for b in loader)  # padded: what is computed
    val_tokens = sum(b["input_ids"].numel() for b in datamodule.val_dataloader())
    val_per_token = _time_validation(module, datamodule, spec)
    train_s = per_token * train_tokens * epochs
    val_s = val_per_token * val_tokens * math.ceil(epochs)
    seconds = {
        "prepare": prepare_s,
        "load_model": load_s,
        "score_base": scoring["base"],
        "train": train_s,
        "validate": val_s,
        "score_tuned": scoring["tuned"],
    }
    stages = {stage: round(value, 2) for stage, value in seconds.items()}
    return {
        "data": summary_text(inputs, spec),
        "rows": {t.task.name: {"train": len(t.train), "val": len(t.val), "test": len(t.test)} for t in inputs.tasks},
        "batches_per_epoch": batches_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "steps": steps,
        "epochs": round(epochs, 2),
        "trainable_params": trainable,
        "total_params": total,
        "precision": run_precision(spec),
        "train_tokens_per_epoch": train_tokens,
        "train_tokens_per_second": round(1 / per_token, 1) if per_token else None,
        "estimate_seconds": {**stages, "total": round(sum(stages.values()), 2)},
        "score_base_cached": scoring["cached"],
        "peak_rss_mb_estimate": round(peak_mb),
        "devices_note": None
        if spec.trainer.devices in (1, "auto") and spec.trainer.num_nodes == 1
        else "measured on one process; several devices split the training steps between them",
    }


def plan_experiment(spec: Spec) -> dict:
    """Every run of an experiment planned as `plan` plans one (its own timed steps and peak
    memory); the base model is scored once for the experiment, so only the first run pays."""
    from runner.training.memory import reset_peak_rss

    runs = {}
    for number, run in enumerate(spec.runs):
        reset_peak_rss()
        result = plan(run)
        if number:
            est = result["estimate_seconds"]
            est["score_base"] = 0.0
            est["total"] = round(sum(v for k, v in est.items() if k != "total"), 2)
        runs[run.run.name] = result
    return {
        "runs": runs,
        "total_seconds": round(sum(r["estimate_seconds"]["total"] for r in runs.values()), 2),
        "peak_rss_mb_estimate": max(r["peak_rss_mb_estimate"] for r in runs.values()),
    }


def experiment_plan_text(result: dict) -> str:
    """The plan of an experiment (plan_experiment's result) as a table, one line per run, and the total."""
    first = next(iter(result["runs"].values()))
    lines = [
        first["data"],
        "",
        f"Experiment: {len(result['runs'])} runs, one after another; the base model is scored once, "
        "by the first (estimates measured on a few steps and a sample of every scoring unit here):",
        f"  {'run':<20} {'steps':>6} {'trainable':>12} {'tokens/s':>9} {'time':>9} {'peak MiB':>9}",
    ]
    for name, r in result["runs"].items():
        lines.append(
            f"  {name:<20} {r['steps']:>6} {r['trainable_params']:>12,} {r['train_tokens_per_second'] or 0:>9.0f} "
            f"{_clock(r['estimate_seconds']['total']):>9} {r['peak_rss_mb_estimate']:>9,}"
        )
    lines.append(f"  {'total':<20} {'':>6} {'':>12} {'':>9} {_clock(result['total_seconds']):>9}")
    return "\n".join(lines)


def plan_text(result: dict) -> str:
    """The plan of one run (plan's result) as text: data, steps, the time per phase and peak memory."""
    est = result["estimate_seconds"]
    lines = [
        result["data"],
        "",
        f"Training: {result['steps']} optimizer steps ({result['steps_per_epoch']} per epoch, "
        f"{result['epochs']:g} epochs at most; early stopping can only shorten this), "
        f"{result['trainable_params']:,} trainable of {result['total_params']:,} parameters, {result['precision']}, "
        f"~{result['train_tokens_per_second']} tokens/s measured here.",
        "Estimated wall time (measured on a few steps and a sample of every scoring unit on this machine):",
    ]
    for key in ("prepare", "load_model", "score_base", "train", "validate", "score_tuned"):
        note = (
            f" ({result['score_base_cached']} units reused from the score cache)"
            if key == "score_base" and result["score_base_cached"]
            else ""
        )
        lines.append(f"  {key:<12} {_clock(est[key]):>9}{note}")
    lines.append(f"  {'total':<12} {_clock(est['total']):>9}")
    lines.append(f"Peak memory (RSS) estimate: {result['peak_rss_mb_estimate']:,} MiB")
    if result["devices_note"]:
        lines.append(f"Note: {result['devices_note']}.")
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _time_training(module, datamodule, spec: Spec) -> tuple[float, float]:
    """Seconds per padded token over a few real training steps, and the process's peak RSS."""
    from runner.training.trainer import timed_steps

    steps = timed_steps(module, datamodule, spec, TIMED_STEPS + 1)
    timed = steps[1:] or steps  # the first step warms up allocators and kernels
    per_token = sum(s for s, _, _ in timed) / max(1, sum(n for _, n, _ in timed))
    return per_token, peak_rss_mb()


def _time_validation(module, datamodule, spec: Spec) -> float:
    """Seconds per padded token of a validation forward pass."""
    from runner.model.forward import completion_token_losses

    batch = next(iter(datamodule.val_dataloader()), None)
    if batch is None:
        return 0.0
    with torch.no_grad(), _autocast(spec):
        module.model.eval()
        started = time.perf_counter()
        completion_token_losses(module.model, batch)
        seconds = time.perf_counter() - started
    module.model.train()
    return seconds / batch["input_ids"].numel()


def _autocast(spec: Spec):
    import contextlib

    from runner.model.precision import autocast_dtype

    dtype = autocast_dtype(run_precision(spec))
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _scoring_estimate(spec: Spec, inputs: Inputs, model) -> dict:
    """Base and tuned scoring time: every unit scored on a sample of its rows, times its size.

    The tuned model is scored on the fine-tuned rung and each probe again (drift: two models)."""
    from runner.evaluation import cache
    from runner.evaluation.scoring import BASE_RUNGS, make_evaluator

    evaluator = make_evaluator(model, inputs.encoder, spec, inputs.fitter)
    evaluator.progress = lambda total, unit="row": _Quiet()
    context = cache.context_parts(spec, evaluator) if cache.enabled(spec.evaluation.cache) else None

    def cached(parts: dict) -> bool:  # an earlier run stored this base unit: it costs nothing
        return context is not None and cache.load(cache.fingerprint({"context": context, **parts})) is not None

    baselines = spec.evaluation.baselines
    base = tuned = 0.0
    hits = 0
    for data in inputs.tasks:
        sample, scale = _sample(data.test, spec.seed)
        part = dataclasses.replace(data, test=sample)
        for rung, few_shot in BASE_RUNGS.items():
            if rung in baselines:
                shots = spec.evaluation.few_shot_k if few_shot else 0
                if cached(cache.task_parts(data, rung, shots)):
                    hits += 1
                else:
                    base += scale * _seconds(evaluator.evaluate, part, shots=shots, seed=spec.seed)
        if "fine_tuned" in baselines:
            tuned += scale * _seconds(evaluator.evaluate, part, seed=spec.seed)
    for probe in inputs.probes:
        seconds = _probe_seconds(evaluator, probe)
        if PROBES[probe.probe.kind].compare is not None:
            tuned += 2 * seconds  # both models' distributions on the same windows
        else:
            tuned += seconds
            if cached(cache.probe_parts(probe)):
                hits += 1
            else:
                base += seconds
    return {"base": base, "tuned": tuned, "cached": hits}


def _probe_seconds(evaluator, data: ProbeData) -> float:
    if PROBES[data.probe.kind].reads_text:
        windows = evaluator.text_windows(data.text, data.probe.max_tokens)
        sample = windows[: max(2, SAMPLE_ROWS // 4)]
        if not sample:
            return 0.0
        return len(windows) / len(sample) * _seconds(evaluator.token_nll, sample)
    n = len(data.prompts)
    if not n:
        return 0.0
    k = min(n, SAMPLE_ROWS)
    part = dataclasses.replace(
        data,
        prompts=data.prompts[:k],
        answers=data.answers[:k],
        choices=data.choices[:k],
        gold=data.gold[:k],
        checks=data.checks[:k],
    )
    return n / k * _seconds(run_probe, evaluator, part)


def _sample(rows: list, seed: int) -> tuple[list, float]:
    if len(rows) <= SAMPLE_ROWS:
        return rows, 1.0
    return random.Random(seed).sample(rows, SAMPLE_ROWS), len(rows) / SAMPLE_ROWS


def _seconds(work, *args, **kwargs) -> float:
    started = time.perf_counter()
    work(*args, **kwargs)
    return time.perf_counter() - started


class _Quiet:
    """A progress bar that draws nothing (the plan's samples are short)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass
