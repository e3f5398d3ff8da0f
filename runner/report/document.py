"""The run report's text: verdict, tables and sentences from the results."""

from __future__ import annotations

from pathlib import Path

from runner.report.uncertainty import DRIFT_SHIFT, PERPLEXITY_SHIFT, forgot

SCHEMA_VERSION = 3


RUNGS = ("majority", "baseline_tfidf", "base_zero_shot", "base_few_shot", "fine_tuned")


RUNG_TITLES = {
    "majority": "majority class (no model)",
    "baseline_tfidf": "TF-IDF + logistic regression",
    "base_zero_shot": "base model, zero-shot",
    "base_few_shot": "base model, few-shot",
    "fine_tuned": "fine-tuned",
}


def headline(metrics: dict) -> str:
    """The metric a task is judged by: accuracy for classification, exact match otherwise."""
    return "accuracy" if "accuracy" in metrics else "exact_match"


def forgetting_sentence(forgetting: dict) -> str:
    """One sentence a reader can act on."""
    if not forgetting:
        return "No forgetting probes were run (evaluation.forgetting is empty)."
    worse, shifted, parts = [], [], []
    for name, e in forgetting.items():
        if e["kind"] == "drift":
            parts.append(f"next-token drift ({name}) is {e['value']:.4f} nats/token")
            if e["value"] > DRIFT_SHIFT:
                shifted.append(name)
            continue
        if e["metric"] == "perplexity":
            change = e["after"] / e["before"] - 1
            parts.append(f"{name} perplexity {'rose' if change > 0 else 'fell'} {abs(change):.1%}")
            if forgot(e):
                worse.append(name)
            elif change > PERPLEXITY_SHIFT:
                shifted.append(name)
            continue
        ci = e.get("delta_ci95")
        ci_text = f" (95% CI {ci[0]:+.3f}..{ci[1]:+.3f})" if ci else ""
        parts.append(f"{name} {e['metric']} moved {e['delta']:+.3f}{ci_text}")
        if forgot(e):
            worse.append(name)
    details = "; ".join(parts)
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


def training_data_sentence(report: dict) -> str:
    """What an epoch trained on, when it is not simply every train row once: a sample of the
    train split, a weighted mixture, or replay rows (with the share they got of rows and tokens)."""
    data = report.get("training_data")
    if not data:
        return ""
    per_epoch = data["per_epoch"]
    parts = []
    primary = report.get("primary_task")
    if data.get("train_rows") and primary in per_epoch:
        split = report["tasks"][primary]["data"]["train"]
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


def document(report: dict, images: dict[str, str]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("table", header, rows), ("img", key, alt)."""
    blocks: list[tuple] = [("h1", report["name"])]
    if report.get("description"):
        blocks.append(("p", report["description"].strip()))
    status = f"Status: {report['status']}" + (f" — {report['error']}" if report.get("error") else "")
    model = report["model"]
    weights = f" ({model['weights']}{', sha256 ' + model['sha256'][:16] + '…' if model.get('sha256') else ''})"
    blocks.append(
        (
            "p",
            f"{status}. Model `{model['source']}`{weights if model.get('weights') != model['source'] else ''}, "
            f"method `{model['method']}`. Run folder `{report['run_dir']}`.",
        )
    )
    variant = report.get("variant")
    if variant:
        blocks.append(
            (
                "p",
                f"Run `{variant['name']}` of an experiment (variant `{variant['variant']}`, training seed "
                f"{variant['seed']}); the experiment's comparison.html sets it beside the others.",
            )
        )
    mix = training_data_sentence(report)
    if mix:
        blocks.append(("p", mix))
    for note in report.get("notes", []):
        blocks.append(("p", f"Note: {note}"))
    for name, task in report.get("tasks", {}).items():
        blocks += task_blocks(name, task, images)
    if report.get("forgetting"):
        blocks += forgetting_blocks(report, images)
    training = report.get("training")
    if training:
        blocks.append(("h2", "Training"))
        blocks.append(
            (
                "p",
                f"Epochs run: {training['epochs_run']}; best epoch: {training['best_epoch']} "
                f"(val loss {_num(training['best_val_loss'])}); stopped early: {training['stopped_early']}. "
                + monitor_sentence(training, report.get("training_data", {})),
            )
        )
        if training.get("resumed_from_step"):
            blocks.append(
                (
                    "p",
                    f"Resumed from checkpoints/last.ckpt at step {training['resumed_from_step']} (every epoch's "
                    f"losses are above, from before and after the stop); the scored weights are epoch "
                    f"{training['best_epoch']}'s.",
                )
            )
        if training.get("stopped_by_time"):
            blocks.append(
                (
                    "p",
                    f"Training stopped at its time budget (training.max_time) after {training['global_steps']} steps; "
                    + (
                        "the best checkpoint so far was scored."
                        if training.get("best_checkpoint")
                        else "no validation had run yet, so the last weights were scored."
                    ),
                )
            )
        if overfitting(training["epochs"]):
            blocks.append(
                (
                    "p",
                    "Overfitting: validation loss rose while training loss fell; the report uses the best epoch's checkpoint.",
                )
            )
        if "training_curves" in images:
            blocks.append(("img", "training_curves", "training and validation loss per epoch"))
        rows = [[e["epoch"], _num(e.get("train_loss")), _num(e.get("val_loss"))] for e in training["epochs"]]
        header = ["epoch", "train loss", "val loss"]
        if training.get("monitor"):  # the primary task's own value that chose the best epoch
            header.append(training["monitor"])
            rows = [[*row, _num(e.get("monitor"))] for row, e in zip(rows, training["epochs"])]
        blocks.append(("table", header, rows))
    cost = report.get("cost")
    if cost:
        rows = []
        if "train_seconds" in cost:
            rows.append(["train time", f"{cost['train_seconds']:.0f} s"])
            rows.append(
                ["throughput", f"{cost['tokens_per_second']:.0f} tokens/s over {cost['train_tokens']:,} tokens"]
            )
        if "trainable_params" in cost:
            share = 100 * cost["trainable_params"] / max(cost["total_params"], 1)
            rows.append(
                ["trainable parameters", f"{cost['trainable_params']:,} of {cost['total_params']:,} ({share:.2f}%)"]
            )
        if "peak_rss_mb" in cost:
            rows.append(["peak memory (RSS)", f"{cost['peak_rss_mb']:.0f} MB"])
        if "checkpoint_mb" in cost:
            rows.append(["exported model", f"{cost['checkpoint_mb']:.1f} MB"])
        if "score_base_seconds" in cost or "score_tuned_seconds" in cost:
            rows.append(
                [
                    "scoring time (base / fine-tuned)",
                    f"{_seconds(cost.get('score_base_seconds'))} / {_seconds(cost.get('score_tuned_seconds'))}",
                ]
            )
        stages = [
            (label, cost[key])
            for label, key in (
                ("prepare", "prepare_seconds"),
                ("load model", "load_model_seconds"),
                ("score base", "score_base_seconds"),
                ("train", "train_seconds"),
                ("score fine-tuned", "score_tuned_seconds"),
            )
            if cost.get(key) is not None
        ]
        if len(stages) > 1:
            rows.append(["wall time by stage", ", ".join(f"{label} {_seconds(v)}" for label, v in stages)])
        if cost.get("score_base_cached"):
            rows.append(["base scores reused from cache", f"{cost['score_base_cached']} (see the note above)"])
        if rows:
            blocks += [("h2", "Cost"), ("table", ["", ""], rows)]
    return blocks


def task_blocks(name: str, task: dict, images: dict[str, str]) -> list[tuple]:
    blocks: list[tuple] = [("h2", f"Task `{name}` ({task['kind']})")]
    data = task["data"]
    truncated = data.get("truncated", {})
    if isinstance(truncated, dict):
        cut = ", ".join(f"{split} {n}" for split, n in truncated.items()) if any(truncated.values()) else "none"
    else:
        cut = str(truncated)
    blocks.append(
        (
            "p",
            f"Rows: {data['rows']} read → train {data['train']}, val {data['val']}, test {data['test']}; "
            f"shortened to fit max_length: {cut}.",
        )
    )
    if data.get("label_end_token"):
        blocks.append(
            ("p", "One label's tokens begin another's, so every label is trained and scored with the end token.")
        )
    if data.get("checks"):
        rows = [
            [c["severity"], c["check"], table_cell(c["message"], 120), table_cell(", ".join(c["rows"][:5]), 80)]
            for c in data["checks"]
        ]
        blocks.append(("table", ["severity", "data check", "finding", "rows (first)"], rows))
    if data.get("label_counts"):
        labels = task["labels"]
        rows = [[split, *(counts[label] for label in labels)] for split, counts in data["label_counts"].items()]
        blocks.append(("table", ["split", *labels], rows))
    tests = task.get("test", {})
    if tests:
        metric_names = ["accuracy", "f1_macro"] if task["kind"] == "classification" else ["exact_match", "token_f1"]
        rows = []
        for rung in RUNGS:
            if rung in tests:
                m = tests[rung]
                title = RUNG_TITLES[rung]
                if m.get("few_shot_k") is not None:
                    title += f" (k = {m['few_shot_k']:g} on average, {m.get('shots_truncated', 0)} shots shortened)"
                if rung == "majority" and "answer" in m:
                    title += f": always {m['answer']!r}"
                if m.get("cached"):
                    title += " (cached)"
                rows.append(
                    [
                        title,
                        *(_with_ci(m, k) for k in metric_names),
                        f"{m['prompt_tokens_mean']:.0f}",
                        m.get("prompts_truncated", "—"),
                        m["n"],
                    ]
                )
        blocks.append(("table", ["model", *metric_names, "prompt tokens / request", "prompts shortened", "n"], rows))
        for label, delta in task.get("deltas", {}).items():
            parts = [
                f"{m} {d['delta']:+.3f} (95% CI {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f}, "
                f"{'excludes' if d['excludes_zero'] else 'includes'} zero)"
                for m, d in delta.items()
            ]
            blocks.append(("p", f"{label}: " + "; ".join(parts) + "."))
        if f"ladder_{name}" in images:
            blocks.append(("img", f"ladder_{name}", f"{name}: metric per rung with token cost"))
        if "fine_tuned" in tests and task["kind"] == "classification":
            ft = tests["fine_tuned"]
            rows = [
                [
                    label,
                    f"{m['precision']:.3f}",
                    f"{m['recall']:.3f}",
                    f"{m['recall_ci95'][0]:.2f}..{m['recall_ci95'][1]:.2f}" if m.get("recall_ci95") else "—",
                    f"{m['f1']:.3f}",
                    m["support"],
                ]
                for label, m in ft["per_class"].items()
            ]
            blocks.append(
                ("table", ["label (fine-tuned)", "precision", "recall", "recall 95% CI", "F1", "support"], rows)
            )
            calibration = {r: tests[r]["calibration"]["ece"] for r in RUNGS if "calibration" in tests.get(r, {})}
            if calibration:
                blocks.append(
                    (
                        "p",
                        "Calibration of the label probabilities (expected calibration error, 10 bins; 0 is "
                        "perfect): " + ", ".join(f"{RUNG_TITLES[r]} {e:.3f}" for r, e in calibration.items()) + ".",
                    )
                )
            if f"calibration_{name}" in images:
                blocks.append(
                    ("img", f"calibration_{name}", f"{name}: reliability of the fine-tuned model's probabilities")
                )
            if f"confusion_{name}" in images:
                blocks.append(("img", f"confusion_{name}", f"{name}: confusion matrix of the fine-tuned model"))
            cm = ft["confusion_matrix"]
            blocks.append(
                (
                    "table",
                    ["gold \\ predicted", *cm["labels"]],
                    [[label, *row] for label, row in zip(cm["labels"], cm["matrix"])],
                )
            )
    if task.get("samples"):
        rows = [
            [s["row"], table_cell(s["gold"]), table_cell(s["prediction"]), "✓" if s["correct"] else "✗"]
            for s in task["samples"]
        ]
        blocks.append(("table", ["row", "gold", "prediction (fine-tuned)", ""], rows))
    return blocks


def forgetting_blocks(report: dict, images: dict[str, str]) -> list[tuple]:
    blocks: list[tuple] = [("h2", "Catastrophic forgetting"), ("p", report.get("forgetting_summary", ""))]
    rows = []
    for name, e in report["forgetting"].items():
        if e["kind"] == "drift":
            rows.append([name, e["metric"], "—", f"{e['value']:.4f}", "—", "—", "—"])
            continue
        ci = e.get("delta_ci95")
        chance = e["details_before"].get("chance")
        before = f"{e['before']:.4f}" + (f" (chance {chance:.2f})" if chance else "")
        before += " (cached)" if e["details_before"].get("cached") else ""
        rows.append(
            [
                name,
                e["metric"],
                before,
                f"{e['after']:.4f}",
                f"{e['delta']:+.4f}",
                f"{ci[0]:+.3f}..{ci[1]:+.3f}" if ci else "—",
                _num(e["retention"]),
            ]
        )
    blocks.append(("table", ["probe", "metric", "before", "after", "delta", "delta 95% CI", "retention"], rows))
    if "forgetting" in images:
        blocks.append(("img", "forgetting", "retention per forgetting probe"))
    return blocks


def monitor_sentence(training: dict, training_data: dict) -> str:
    """Which value chose the best epoch (and stopped early), and how the classes were balanced."""
    monitor = training.get("monitor")
    if not monitor:
        return ""
    text = (
        f"The best epoch and early stopping follow {monitor} ({_num(training.get('best_monitor'))} at the best epoch)."
    )
    balance = training_data.get("class_balance", "none")
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


def _with_ci(metrics: dict, key: str) -> str:
    if key not in metrics:
        return "—"
    ci = metrics.get("ci95", {}).get(key)
    return f"{metrics[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def table_cell(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(value) -> str:
    return "—" if value is None else f"{value:.0f} s"


def _num(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def summary_table(report: dict) -> str:
    """A few lines for the terminal: each task's headline metric per rung, and forgetting."""
    rows = [("task", "metric", *(RUNG_TITLES[r] for r in RUNGS))]
    for name, task in report.get("tasks", {}).items():
        tests = task.get("test", {})
        if not tests:
            continue
        metrics = [headline(next(iter(tests.values())))] + (["f1_macro"] if task["kind"] == "classification" else [])
        for metric in metrics:
            rows.append((name, metric, *(f"{tests[r][metric]:.3f}" if r in tests else "—" for r in RUNGS)))
        rows.append(
            (name, "prompt tokens", *(f"{tests[r]['prompt_tokens_mean']:.0f}" if r in tests else "—" for r in RUNGS))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
    if report.get("forgetting_summary"):
        text += "\n\n" + report["forgetting_summary"]
    return text
