"""The report: `report.json` (a documented contract), `report.md`, `report.html`, TensorBoard, terminal.

report.json, schema_version 3:
  status            "complete" | "failed" | "interrupted" (+ "error")
  name, description, run_dir, spec_path, started_at, finished_at, mode ("train" | "eval"), notes
  primary_task      the task an experiment compares variants on (default: the first)
  variant           a run of an experiment: {name, variant, seed (training seed), description,
                    train_rows (a curve point's, "all" for the whole split)}; null otherwise
  training_data     {per_epoch: {<task> | "replay": {rows, available, loss_tokens, row_share,
                    token_share}}, train_rows, seed, replay {share, of, data} (when replay is on)}
  model             {source, weights (what the weights really are: for the default, the Q4_1
                    GGUF de-quantised by runner), file, sha256, package, method, chat_template,
                    max_length, truncation}
  tasks.<name>
    kind            "classification" | "generation"
    labels          list (classification)
    data            {source, files {split: file its row numbers refer to}, rows, train, val, test,
                    label_counts, truncated {split: rows shortened to fit max_length},
                    label_end_token (labels scored with the end token: one is a prefix of another),
                    checks [{check, severity fail|warn|info, tasks, message, rows}]}
    test.<rung>     rung: majority (most frequent train label, no model), base_zero_shot
                    (untouched model, task prompt), base_few_shot (untouched model, k solved train
                    examples first), fine_tuned (best checkpoint, task prompt);
                    classification {accuracy, f1_macro, n, per_class {label: {precision,
                    recall, recall_ci95, f1, support}}, confusion_matrix}; language-model
                    rungs of classification tasks: calibration {ece, bins [{low, high, count,
                    confidence, accuracy}]} of the label probabilities
                    generation {exact_match, token_f1 (SQuAD's token-level F1), n}; every rung: prompt_tokens_mean (after any
                    shortening: what the model saw), prompts_truncated, and
                    ci95 {metric: [low, high]} (seeded bootstrap over test rows); base_few_shot:
                    few_shot_k (shots per prompt on average, after dropping what did not fit),
                    shots_truncated (shots whose fields were shortened);
                    majority: answer; a base rung reused from the score cache: cached
                    (its fingerprint; runner.cache); rungs scored by a model in this run:
                    seconds, ms_per_example (inference time per test row, batched)
    deltas          {"fine_tuned - base_zero_shot": {metric: {delta, ci95, excludes_zero}}, ...}
                    (paired bootstrap: both rungs on the same resampled rows)
    samples         a few fine-tuned predictions {row, gold, prediction, correct}
  forgetting.<probe>  {kind, metric, before, after, delta, retention, higher_is_better,
                    delta_ci95, excludes_zero (item-level probes), details_before, details_after};
                    retention = after / before for accuracies, before / after for perplexity
                    (1.0 = unchanged, below 1 = worse); details_before.cached: the score
                    cache fingerprint when reused; drift probes: {kind, metric:
                    "kl_per_token", value, tokens} (0 = unchanged)
  forgetting_summary  one sentence a reader can act on
  training          {epochs_run, best_epoch, best_val_loss, monitor (e.g. "val/urgency/loss": the
                     primary task's value that chose the best epoch), best_monitor, stopped_early,
                     stopped_by_time, global_steps, best_checkpoint,
                     epochs: [{epoch, train_loss, val_loss (all sets), monitor}]}
  cost              {train_seconds, trainable_params, total_params, peak_rss_mb,
                     tokens_per_second, train_tokens, checkpoint_mb, score_base_seconds,
                     score_tuned_seconds, score_base_cached (base units reused from the score
                     cache; absent when the cache is off)}
"""

from __future__ import annotations

import html
import json
import math
import re
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from runner import stats

SCHEMA_VERSION = 3
RUNGS = ("majority", "baseline_tfidf", "base_zero_shot", "base_few_shot", "fine_tuned")
RUNG_TITLES = {
    "majority": "majority class (no model)",
    "baseline_tfidf": "TF-IDF + logistic regression",
    "base_zero_shot": "base model, zero-shot",
    "base_few_shot": "base model, few-shot",
    "fine_tuned": "fine-tuned",
}
DELTAS = (
    ("fine_tuned", "base_zero_shot"),
    ("fine_tuned", "base_few_shot"),
    ("fine_tuned", "majority"),
    ("fine_tuned", "baseline_tfidf"),
)


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started or since `reset_peak_rss` (Linux
    VmHWM; elsewhere the process's ru_maxrss, KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def reset_peak_rss() -> bool:
    """Start peak_rss_mb afresh (Linux: writing 5 to /proc/self/clear_refs), so that runs of one
    experiment in one process each report their own peak. False where the system cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def write_json(path: Path, data: dict) -> None:
    """Strict JSON, written atomically: NaN and infinities (a diverged loss, say) become null,
    because `NaN` is not JSON and breaks every other tool that reads the file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(finite(data), indent=2, default=str, allow_nan=False) + "\n")
    tmp.replace(path)


def finite(value):
    """The value with every non-finite float replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def headline(metrics: dict) -> str:
    """The metric a task is judged by: accuracy for classification, exact match otherwise."""
    return "accuracy" if "accuracy" in metrics else "exact_match"


# --- uncertainty ---------------------------------------------------------------------------


@dataclass
class ItemScores:
    """Per-row outcomes of one rung on one task, kept for (paired) bootstraps."""

    correct: torch.Tensor  # 0/1 per test row
    preds: torch.Tensor | None = None  # class indices (classification)
    gold: torch.Tensor | None = None
    num_classes: int = 0
    token_f1: torch.Tensor | None = None  # per test row (generation)


def metric_samples(items: ItemScores, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    if items.preds is None:
        out = {"exact_match": stats.accuracy_samples(items.correct, idx)}
        if items.token_f1 is not None:
            out["token_f1"] = stats.accuracy_samples(items.token_f1, idx)  # a mean, like accuracy
        return out
    return {
        "accuracy": stats.accuracy_samples(items.correct, idx),
        "f1_macro": stats.f1_macro_samples(items.preds, items.gold, items.num_classes, idx),
    }


def add_uncertainty(task_entry: dict, items: dict[str, ItemScores], samples: int, seed: int) -> None:
    """ci95 on every rung's metrics, and paired-bootstrap deltas between rungs."""
    if samples <= 0 or not items:
        return
    n = len(next(iter(items.values())).correct)
    idx = stats.resample_indices(n, samples, seed)
    drawn = {rung: metric_samples(item, idx) for rung, item in items.items()}
    for rung, metrics in drawn.items():
        task_entry["test"][rung]["ci95"] = {m: stats.interval(v) for m, v in metrics.items()}
        item, per_class = items[rung], task_entry["test"][rung].get("per_class")
        if item.preds is not None and per_class:
            for label_index, entry in enumerate(per_class.values()):
                recall = stats.recall_samples(item.preds, item.gold, label_index, idx)
                entry["recall_ci95"] = stats.interval(recall) if len(recall) else None
    deltas = {}
    for a, b in DELTAS:
        if a in drawn and b in drawn:
            deltas[f"{a} - {b}"] = {
                m: {
                    "delta": round(task_entry["test"][a][m] - task_entry["test"][b][m], 4),
                    "ci95": (ci := stats.interval(drawn[a][m] - drawn[b][m])),
                    "excludes_zero": stats.excludes_zero(ci),
                }
                for m in drawn[a]
            }
    if deltas:
        task_entry["deltas"] = deltas


# --- forgetting ----------------------------------------------------------------------------


def forgetting_entry(
    kind: str,
    metric: str,
    higher_is_better: bool,
    before: dict,
    after: dict,
    items_before: torch.Tensor | None,
    items_after: torch.Tensor | None,
    samples: int,
    seed: int,
) -> dict:
    b, a = before[metric], after[metric]
    entry = {
        "kind": kind,
        "metric": metric,
        "before": round(b, 4),
        "after": round(a, 4),
        "delta": round(a - b, 4),
        "retention": round((a / b if higher_is_better else b / a), 4) if a and b else None,
        "higher_is_better": higher_is_better,
        "details_before": before,
        "details_after": after,
    }
    if items_before is not None and items_after is not None and samples > 0:
        idx = stats.resample_indices(len(items_before), samples, seed)
        ci = stats.interval(stats.accuracy_samples(items_after, idx) - stats.accuracy_samples(items_before, idx))
        entry["delta_ci95"] = ci
        entry["excludes_zero"] = stats.excludes_zero(ci)
    return entry


# Thresholds for the verdict (heuristics, stated in the sentence itself): perplexity on general
# text up by more than 10%, or an accuracy probe down with a paired 95% interval below zero, is
# forgetting; perplexity up by more than 2% or drift above 0.02 nats/token is a shift worth
# watching, which accuracy on a few hundred items cannot show.
PERPLEXITY_FORGETTING, PERPLEXITY_SHIFT, DRIFT_SHIFT = 0.10, 0.02, 0.02


def forgot(e: dict) -> bool:
    """Forgetting on one (non-drift) probe: perplexity up by more than PERPLEXITY_FORGETTING, or an
    accuracy down with its paired 95% interval below zero (without items: retention below 0.95)."""
    if e["metric"] == "perplexity":
        return e["after"] / e["before"] - 1 > PERPLEXITY_FORGETTING
    return e["delta"] < 0 and e.get("excludes_zero", e["retention"] is not None and e["retention"] < 0.95)


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


# --- documents: one structure, rendered to markdown and html --------------------------------


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
            [c["severity"], c["check"], _cell(c["message"], 120), _cell(", ".join(c["rows"][:5]), 80)]
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
            [s["row"], _cell(s["gold"]), _cell(s["prediction"]), "✓" if s["correct"] else "✗"] for s in task["samples"]
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


def to_markdown(blocks: list[tuple], image_files: dict[str, str]) -> str:
    lines = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(map(str, header)) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img" and block[1] in image_files:
            lines += [f"![{block[2]}]({image_files[block[1]]})", ""]
    return "\n".join(lines)


HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.8em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f4f6}td:first-child,th:first-child,td.t{text-align:left}img{max-width:100%;display:block;margin:0.8em 0}
code{background:#f3f4f6;padding:0 3px}h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.6em}
"""


def to_html(blocks: list[tuple], images: dict[str, str], title: str) -> str:
    """A self-contained page: styles inline, plots embedded as data URIs; readable offline."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "table":
            header = "".join(f"<th>{html.escape(str(c))}</th>" for c in block[1])
            rows = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img" and block[1] in images:
            body.append(f'<img src="{images[block[1]]}" alt="{html.escape(block[2])}">')
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _td(cell) -> str:
    """A table cell: numbers (with or without an interval) right-aligned, text left-aligned."""
    text = str(cell)
    numeric = bool(re.fullmatch(r"[-+]?[\d.,]+( \[.*\])?( s| MB)?|—", text))
    return f"<td>{html.escape(text)}</td>" if numeric else f'<td class="t">{html.escape(text)}</td>'


def _inline(text: str) -> str:
    """Escape, then render `code` spans and **bold** spans."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    if len(parts) % 2 == 0:  # an unpaired ** stays as it is
        return text
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def _with_ci(metrics: dict, key: str) -> str:
    if key not in metrics:
        return "—"
    ci = metrics.get("ci95", {}).get(key)
    return f"{metrics[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _cell(text: str, width: int = 80) -> str:
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


def log_to_tensorboard(writer, report: dict, figures: dict, step: int) -> None:
    """Test metrics per task and rung, forgetting, figures, sample predictions, the report as text."""
    for name, task in report.get("tasks", {}).items():
        for rung, metrics in task.get("test", {}).items():
            for key in ("accuracy", "f1_macro", "exact_match", "token_f1", "prompt_tokens_mean"):
                if key in metrics:
                    writer.add_scalar(f"test/{name}/{rung}/{key}", metrics[key], step)
        if task.get("samples"):
            rows = [[s["row"], _cell(s["gold"]), _cell(s["prediction"])] for s in task["samples"]]
            writer.add_text(f"samples/{name}", to_markdown([("table", ["row", "gold", "prediction"], rows)], {}), step)
    for name, e in report.get("forgetting", {}).items():
        if e["kind"] == "drift":
            writer.add_scalar(f"forgetting/{name}/{e['metric']}", e["value"], step)
        else:
            for when in ("before", "after", "retention"):
                if e.get(when) is not None:
                    writer.add_scalar(f"forgetting/{name}/{when}", e[when], step)
    for key, fig in figures.items():
        if key.startswith("confusion_") or key == "forgetting":
            writer.add_figure(f"figures/{key}", fig, step, close=False)
    writer.add_text("report", to_markdown(document(report, {}), {}), step)
    writer.flush()


def hparam_metrics(report: dict) -> dict[str, float]:
    """Final metrics for TensorBoard's HParams tab (runs compare side by side there)."""
    out = {}
    for name, task in report.get("tasks", {}).items():
        for rung, metrics in task.get("test", {}).items():
            metric = headline(metrics)
            out[f"hparam/{name}/{rung}/{metric}"] = metrics[metric]
    for name, e in report.get("forgetting", {}).items():
        out[f"hparam/forgetting/{name}"] = e["value"] if e["kind"] == "drift" else e["after"]
    return out
