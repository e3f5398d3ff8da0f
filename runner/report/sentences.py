"""The report's sentences: what forgetting the probes found, what an epoch trained on, which value
chose the best epoch, and whether training overfitted."""

from __future__ import annotations

from pathlib import Path

from runner.report.cells import num
from runner.report.uncertainty import DRIFT_SHIFT, PERPLEXITY_SHIFT, forgot
from runner.results import ProbeResult, RunResult, TrainingResult


def forgetting_sentence(forgetting: dict[str, ProbeResult]) -> str:
    """One sentence a reader can act on: forgetting, a shift worth watching, or neither."""
    if not forgetting:
        return "No forgetting probes were run (evaluation.forgetting is empty)."
    verdicts = {name: probe_verdict(e) for name, e in forgetting.items()}
    worse = [name for name, verdict in verdicts.items() if verdict == "forgot"]
    shifted = [name for name, verdict in verdicts.items() if verdict == "shifted"]
    details = "; ".join(_probe_phrase(name, e) for name, e in forgetting.items())
    if worse:
        return (
            f"Forgetting detected on {', '.join(worse)}: {details}. Consider fewer epochs, a lower learning rate, "
            "LoRA instead of full fine-tuning, or mixing general data into the tasks."
        )
    if shifted:
        return (
            f"No accuracy probe dropped measurably, but the model's general text behaviour shifted "
            f"({', '.join(shifted)}): {details}. A mild change; watch these if you train longer or harder."
        )
    return f"No measurable forgetting: {details}."


def _probe_phrase(name: str, e: ProbeResult) -> str:
    """What one probe measured, in words: its value, its perplexity change, or its move."""
    if e.two_model:
        if e.kind == "drift":
            return f"next-token drift ({name}) is {e.value:.4f} nats/token"
        return f"{name} {e.metric} is {e.value:.4f}"
    if e.metric == "perplexity":
        change = e.after / e.before - 1
        ci = f" (95% CI {e.delta_ci95[0] / e.before:+.1%}..{e.delta_ci95[1] / e.before:+.1%})" if e.delta_ci95 else ""
        drift = f", next-token drift {e.second['value']:.4f} nats/token" if _drift(e) is not None else ""
        return f"{name} perplexity {'rose' if change > 0 else 'fell'} {abs(change):.1%}{ci}{drift}"
    ci = e.delta_ci95
    ci_text = f" (95% CI {ci[0]:+.3f}..{ci[1]:+.3f})" if ci else ""
    return f"{name} {e.metric} moved {e.delta:+.3f}{ci_text}"


def probe_verdict(e: ProbeResult) -> str:
    """The probe's verdict: forgot, shifted (general text behaviour moved, which an accuracy probe
    cannot show) or nothing (an empty string)."""
    if e.two_model:
        return "shifted" if e.kind == "drift" and e.value > DRIFT_SHIFT else ""
    if forgot(e):
        return "forgot"
    if e.metric == "perplexity" and e.after / e.before - 1 > PERPLEXITY_SHIFT:
        return "shifted"
    return "shifted" if (_drift(e) or 0) > DRIFT_SHIFT else ""


def resolution_sentence(forgetting: dict[str, ProbeResult]) -> str:
    """What each probe can see at its size: half the width of its paired 95% interval, beside the
    number of items (or text windows) behind it and the rule that reads it. A change inside that
    half-width cannot be told from none, so "no measurable forgetting" rules out only larger ones;
    a probe too coarse for the 2% perplexity shift rule says so, with the fix."""
    parts = []
    for name, e in forgetting.items():
        if e.two_model or not e.delta_ci95:
            continue
        half = (e.delta_ci95[1] - e.delta_ci95[0]) / 2
        details = e.details_before or {}
        size = details.get("n") or details.get("windows")
        unit = "items" if details.get("n") else "windows"
        of = f" over {size:,} {unit}" if size else ""
        if e.metric == "perplexity" and e.before:
            rel = half / e.before
            rule = (
                f"finer than the {PERPLEXITY_SHIFT:.0%} shift rule"
                if rel < PERPLEXITY_SHIFT
                else f"too coarse for the {PERPLEXITY_SHIFT:.0%} shift rule: give the probe more text (max_tokens)"
            )
            parts.append(f"{name} ±{rel:.1%} of its perplexity{of} ({rule})")
        else:
            parts.append(f"{name} ±{half:.3f} {e.metric}{of}")
    if not parts:
        return ""
    return (
        "What each probe can see at its size (half its paired 95% interval; a smaller change does not show): "
        + "; ".join(parts)
        + "."
    )


def _drift(e: ProbeResult) -> float | None:
    """A one-model probe's drift from the base, when its tuned pass measured one (the text kind)."""
    return e.second["value"] if e.second and e.second.get("metric") == "kl_per_token" else None


def training_data_sentence(result: RunResult) -> str:
    """What an epoch trained on, when it is not simply every train row once: a sample of the
    train split, a weighted mixture, or replay rows (with the share they got of rows and tokens)."""
    data = result.training_data
    if not data:
        return ""
    per_epoch = data["per_epoch"]
    parts = []
    primary = result.primary_task
    if data.get("train_rows") and primary in per_epoch:
        split = result.tasks[primary].data["train"]
        parts.append(
            f"Trained on a stratified sample of {per_epoch[primary]['available']} of the {split} train rows of "
            f"{primary} (training.train_rows); validation and test rows are the full splits."
        )
    replay = data.get("replay")
    if replay:
        e = per_epoch["replay"]
        parts.append(
            f"Replay: share {replay['share']:g} of {replay['of']} from {Path(replay['data']).name}: {e['rows']} rows per "
            f"epoch (of {e['available']}), {e['row_share']:.1%} of the rows and {e['token_share']:.1%} of the loss tokens; "
            "trained on, never scored as a task, left out of validation loss."
        )
    tasks = {n: e for n, e in per_epoch.items() if n != "replay"}
    if len(tasks) > 1:
        shares = ", ".join(f"{n} {e['rows']} rows ({e['token_share']:.1%} of loss tokens)" for n, e in tasks.items())
        parts.append(f"Each epoch's mixture: {shares}.")
    return " ".join(parts)


def monitor_sentence(training: TrainingResult, training_data: dict | None) -> str:
    """Which value chose the best epoch (and stopped early), and how the classes were balanced."""
    if not training.monitor:
        return ""
    text = (
        f"The best epoch and early stopping follow {training.monitor} ({num(training.best_monitor)} at the best epoch)."
    )
    balance = (training_data or {}).get("class_balance", "none")
    if balance != "none":
        how = {
            "sample": "each epoch draws every label equally often",
            "loss": "each row's loss is weighted by the inverse of its label's frequency",
        }
        text += f" Class balance: {balance} ({how[balance]})."
    return text


def overfitting(epochs: list[dict]) -> bool:
    """Validation loss rose while training loss fell, between any two consecutive epochs."""
    scored = [e for e in epochs if e.get("val_loss") is not None and e.get("train_loss") is not None]
    return any(b["val_loss"] > a["val_loss"] and b["train_loss"] < a["train_loss"] for a, b in zip(scored, scored[1:]))
