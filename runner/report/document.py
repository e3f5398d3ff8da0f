"""The run report's text: verdict, tables and sentences from a run's results."""

from __future__ import annotations

from runner.report.cells import count, duration, memory, num, share
from runner.report.sentences import monitor_sentence, overfitting, resolution_sentence, training_data_sentence
from runner.report.task_blocks import RUNG_TITLES, RUNGS, task_blocks
from runner.report.verdict import verdict_blocks
from runner.results import Cost, ProbeResult, RunResult, TrainingResult


def document(result: RunResult, images: dict[str, str]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("table", header, rows), ("img", key, alt).

    The verdict comes first: a reader who stops there knows who won, by how much, at what cost."""
    blocks = header_blocks(result) + verdict_blocks(result)
    for name, task in result.tasks.items():
        blocks += task_blocks(name, task, images)
    if result.forgetting:
        blocks += forgetting_blocks(result, images)
    if result.training:
        blocks += training_blocks(result.training, result.training_data, images)
    return blocks + cost_blocks(result.cost)


def header_blocks(result: RunResult) -> list[tuple]:
    """Title, description, status, the model really used, the experiment it belongs to, what an
    epoch trained on, and the run's notes."""
    blocks: list[tuple] = [("h1", result.name)]
    if result.description:
        blocks.append(("p", result.description.strip()))
    status = f"Status: {result.status}" + (f" — {result.error}" if result.error else "")
    blocks.append(("p", f"{status}. {model_sentence(result.model)} Run folder `{result.run_dir}`."))
    variant = result.variant
    if variant:
        blocks.append(
            (
                "p",
                f"Run `{variant['name']}` of an experiment (variant `{variant['variant']}`, training seed "
                f"{variant['seed']}); the experiment's comparison.html sets it beside the others.",
            )
        )
    mix = training_data_sentence(result)
    if mix:
        blocks.append(("p", mix))
    blocks += [("p", f"Note: {note}") for note in result.notes]
    return blocks


def model_sentence(model: dict) -> str:
    """The model and method; the weights (and their checksum) when they are not the source's name."""
    text = f"Model `{model['source']}`"
    if model.get("weights", model["source"]) != model["source"]:
        sha = f", sha256 {model['sha256'][:16]}…" if model.get("sha256") else ""
        text += f" ({model['weights']}{sha})"
    return text + f", method `{model['method']}`."


def forgetting_blocks(result: RunResult, images: dict[str, str]) -> list[tuple]:
    """The forgetting verdict and each probe's numbers before and after training."""
    rows = [row for name, e in result.forgetting.items() for row in probe_rows(name, e)]
    blocks: list[tuple] = [
        ("h2", "Catastrophic forgetting"),
        ("p", result.forgetting_summary or ""),
        ("table", ["probe", "metric", "before", "after", "delta", "delta 95% CI", "retention"], rows),
    ]
    if resolution := resolution_sentence(result.forgetting):
        blocks.append(("p", resolution))
    if "forgetting" in images:
        blocks.append(("img", "forgetting", "retention per forgetting probe"))
    return blocks


def probe_rows(name: str, e: ProbeResult) -> list[list]:
    """A probe's table rows: its headline, and the tuned pass's second number when it has one
    (the text kind's drift: one number, shown as 'after' like a two-model probe's)."""
    rows = [probe_row(name, e)]
    if e.second:
        rows.append([name, e.second["metric"], "—", f"{e.second['value']:.4f}", "—", "—", "—"])
    return rows


def probe_row(name: str, e: ProbeResult) -> list:
    """One probe's table row; a two-model probe has one number, shown as 'after'."""
    if e.two_model:
        return [name, e.metric, "—", f"{e.value:.4f}", "—", "—", "—"]
    ci = e.delta_ci95
    chance = e.details_before.get("chance")
    before = f"{e.before:.4f}" + (f" (chance {chance:.2f})" if chance else "")
    before += " (cached)" if e.details_before.get("cached") else ""
    return [
        name,
        e.metric,
        before,
        f"{e.after:.4f}",
        f"{e.delta:+.4f}",
        f"{ci[0]:+.3f}..{ci[1]:+.3f}" if ci else "—",
        num(e.retention),
    ]


def training_blocks(training: TrainingResult, training_data: dict | None, images: dict[str, str]) -> list[tuple]:
    """How training went: epochs, the best one and why it stopped, then each epoch's losses."""
    blocks: list[tuple] = [
        ("h2", "Training"),
        (
            "p",
            f"{epochs_sentence(training)} " + monitor_sentence(training, training_data),
        ),
    ]
    blocks += [("p", text) for text in training_notes(training)]
    if "training_curves" in images:
        blocks.append(("img", "training_curves", "training and validation loss per epoch"))
    rows = [[e["epoch"], num(e.get("train_loss")), num(e.get("val_loss"))] for e in training.epochs]
    header = ["epoch", "train loss", "val loss"]
    if training.monitor:  # the primary task's own value that chose the best epoch
        header.append(training.monitor)
        rows = [[*row, num(e.get("monitor"))] for row, e in zip(rows, training.epochs)]
    blocks.append(("table", header, rows))
    return blocks


def epochs_sentence(training: TrainingResult) -> str:
    """How many epochs ran, which was best, and whether early stopping ended it, in words."""
    ran = f"Ran {training.epochs_run} epoch{'' if training.epochs_run == 1 else 's'} ({training.global_steps:,} steps)"
    if training.best_epoch is None:
        return f"{ran}; no validation loss was measured, so the last weights were kept."
    ending = "early stopping ended it" if training.stopped_early else "it ran every epoch it was given"
    return f"{ran}; the best was epoch {training.best_epoch} (val loss {num(training.best_val_loss)}); {ending}."


def training_notes(training: TrainingResult) -> list[str]:
    """What a reader must know about the scored weights: a resume, a time stop, overfitting."""
    notes = []
    if training.resumed_from_step:
        notes.append(
            f"Resumed from checkpoints/last.ckpt at step {training.resumed_from_step} (every epoch's "
            f"losses are above, from before and after the stop); the scored weights are epoch "
            f"{training.best_epoch}'s."
        )
    if training.stopped_by_time:
        notes.append(
            f"Training stopped at its time budget (training.max_time) after {training.global_steps} steps; "
            + (
                "the best checkpoint so far was scored."
                if training.best_checkpoint
                else "no validation had run yet, so the last weights were scored."
            )
        )
    if overfitting(training.epochs):
        notes.append(
            "Overfitting: validation loss rose while training loss fell; the report uses the best epoch's checkpoint."
        )
    return notes


# The cost's stages (Cost.STAGES, in run order) as the report names them.
STAGE_LABELS = tuple(zip(("prepare", "load model", "score base", "train", "score fine-tuned"), Cost.STAGES))


def cost_blocks(cost: Cost) -> list[tuple]:
    """What the run cost, as a two-column table; nothing when no cost was measured."""
    rows = []
    if cost.train_seconds is not None:
        rows.append(["train time", duration(cost.train_seconds)])
    if cost.tokens_per_second is not None and cost.train_tokens is not None:
        rows.append(["throughput", f"{cost.tokens_per_second:,.0f} tokens/s over {cost.train_tokens:,} tokens"])
    if cost.trainable_params is not None:
        part = share(cost.trainable_params / max(cost.total_params, 1))
        rows.append(["trainable parameters", f"{cost.trainable_params:,} of {count(cost.total_params)} ({part})"])
    if cost.peak_rss_mb is not None:
        rows.append(["peak memory (RSS)", memory(cost.peak_rss_mb)])
    if cost.checkpoint_mb is not None:
        rows.append(["exported model", memory(cost.checkpoint_mb)])
    stages = {label: getattr(cost, key) for label, key in STAGE_LABELS if getattr(cost, key) is not None}
    if len(stages) > 1:
        since = " (since the resume)" if cost.before_resume else ""
        rows.append([f"wall time by stage{since}", ", ".join(f"{label} {duration(v)}" for label, v in stages.items())])
    if cost.before_resume:  # this attempt's stages above; the ones before the resume here
        earlier = {label: cost.before_resume[key] for label, key in STAGE_LABELS if key in cost.before_resume}
        rows.append(["before the resume", ", ".join(f"{label} {duration(v)}" for label, v in earlier.items())])
    if cost.score_base_cached:
        rows.append(["base scores reused from cache", f"{cost.score_base_cached} (see the note above)"])
    return [("h2", "Cost"), ("table", ["cost", "measured"], rows)] if rows else []


def summary_table(result: RunResult) -> str:
    """A few lines for the terminal: each task's headline metric per rung, and forgetting."""
    rows = [("task", "metric", *(RUNG_TITLES[r] for r in RUNGS))]
    for name, task in result.tasks.items():
        tests = task.test
        if not tests:
            continue
        metrics = [next(iter(tests.values())).headline()] + (["f1_macro"] if task.kind == "classification" else [])
        for metric in metrics:
            rows.append((name, metric, *(f"{tests[r].value(metric):.3f}" if r in tests else "—" for r in RUNGS)))
        rows.append(
            (name, "prompt tokens", *(f"{tests[r].prompt_tokens_mean:.0f}" if r in tests else "—" for r in RUNGS))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
    if result.forgetting_summary:
        text += "\n\n" + result.forgetting_summary
    return text
