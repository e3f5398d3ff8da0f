"""The report: `report.json` (a documented contract), `report.md`, TensorBoard, terminal summary.

report.json, version 1:
  status            "complete" | "failed" | "interrupted"
  error             message when status is not complete
  name, run_dir, spec_path, started_at, finished_at, schema_version
  model             {source, method, chat_template}
  tasks.<name>
    kind            "classification" | "generation"
    labels          list (classification)
    data            {rows, train, val, test, label_counts, truncated}
    test.<rung>     rung is base_zero_shot (untouched model) or fine_tuned (best checkpoint);
                    classification: {accuracy, f1_macro, n, per_class, confusion_matrix}
                    generation:     {exact_match, n}
  training          {epochs_run, best_epoch, best_val_loss, stopped_early, global_steps,
                     best_checkpoint, epochs: [{epoch, train_loss, val_loss}]}
  cost              {train_seconds, trainable_params, total_params, peak_rss_mb, tokens_per_second,
                     train_tokens}
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

SCHEMA_VERSION = 1
RUNGS = ("base_zero_shot", "fine_tuned")
RUNG_TITLES = {"base_zero_shot": "base model, zero-shot", "fine_tuned": "fine-tuned"}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def headline(metrics: dict) -> tuple[str, float]:
    """The metric a task is judged by: accuracy for classification, exact match otherwise."""
    return ("accuracy", metrics["accuracy"]) if "accuracy" in metrics else ("exact_match", metrics["exact_match"])


def render_markdown(report: dict) -> str:
    lines = [f"# {report['name']}", ""]
    if report.get("description"):
        lines += [report["description"], ""]
    lines += [
        f"- status: **{report['status']}**" + (f" — {report['error']}" if report.get("error") else ""),
        f"- model: `{report['model']['source']}`, method `{report['model']['method']}`",
        f"- run folder: `{report['run_dir']}`",
        "",
    ]
    for name, task in report.get("tasks", {}).items():
        lines += [f"## Task `{name}` ({task['kind']})", ""]
        data = task["data"]
        lines += [
            f"Rows: {data['rows']} read → train {data['train']}, val {data['val']}, test {data['test']}"
            f"; truncated to max_length: {data['truncated']}.",
            "",
        ]
        if data.get("label_counts"):
            labels = task["labels"]
            lines += ["| split | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
            for split, counts in data["label_counts"].items():
                lines.append(f"| {split} | " + " | ".join(str(counts[label]) for label in labels) + " |")
            lines.append("")
        tests = task.get("test", {})
        if tests:
            classification = task["kind"] == "classification"
            header = "| model | accuracy | macro-F1 | n |" if classification else "| model | exact match | n |"
            lines += [header, "|---|---:|---:|---:|" if classification else "|---|---:|---:|"]
            for rung in RUNGS:
                if rung in tests:
                    m = tests[rung]
                    if classification:
                        lines.append(f"| {RUNG_TITLES[rung]} | {m['accuracy']:.3f} | {m['f1_macro']:.3f} | {m['n']} |")
                    else:
                        lines.append(f"| {RUNG_TITLES[rung]} | {m['exact_match']:.3f} | {m['n']} |")
            lines.append("")
            if classification and "fine_tuned" in tests:
                lines += _per_class_table(tests["fine_tuned"]) + _confusion_table(tests["fine_tuned"])
        if task.get("samples"):
            lines += [
                "Sample predictions of the fine-tuned model:",
                "",
                "| row | gold | prediction |",
                "|---:|---|---|",
            ]
            for s in task["samples"]:
                lines.append(f"| {s['row']} | {_cell(s['gold'])} | {_cell(s['prediction'])} |")
            lines.append("")
    training = report.get("training")
    if training:
        lines += ["## Training", ""]
        lines += [
            f"Epochs run: {training['epochs_run']}; best epoch: {training['best_epoch']}"
            f" (val loss {_num(training['best_val_loss'])}); stopped early: {training['stopped_early']}.",
            "",
            "| epoch | train loss | val loss |",
            "|---:|---:|---:|",
        ]
        for e in training["epochs"]:
            lines.append(f"| {e['epoch']} | {_num(e.get('train_loss'))} | {_num(e.get('val_loss'))} |")
        lines.append("")
    cost = report.get("cost")
    if cost:
        lines += ["## Cost", ""]
        lines += [
            f"- train time: {cost['train_seconds']:.0f} s, {cost['tokens_per_second']:.0f} tokens/s over {cost['train_tokens']} tokens",
            f"- trainable parameters: {cost['trainable_params']:,} of {cost['total_params']:,}"
            f" ({100 * cost['trainable_params'] / max(cost['total_params'], 1):.2f}%)",
            f"- peak memory (RSS): {cost['peak_rss_mb']:.0f} MB",
            "",
        ]
    return "\n".join(lines)


def _per_class_table(metrics: dict) -> list[str]:
    lines = ["| label | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for label, m in metrics["per_class"].items():
        lines.append(f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    return lines + [""]


def _confusion_table(metrics: dict) -> list[str]:
    cm = metrics["confusion_matrix"]
    labels = cm["labels"]
    lines = ["Confusion matrix (rows: gold, columns: predicted):", "", "| gold \\ pred | " + " | ".join(labels) + " |"]
    lines.append("|---|" + "---:|" * len(labels))
    for label, row in zip(labels, cm["matrix"]):
        lines.append(f"| {label} | " + " | ".join(map(str, row)) + " |")
    return lines + [""]


def _cell(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _num(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def summary_table(report: dict) -> str:
    """A few lines for the terminal: each task's headline metric per rung."""
    rows = [("task", "metric", *(RUNG_TITLES[r] for r in RUNGS))]
    for name, task in report.get("tasks", {}).items():
        tests = task.get("test", {})
        if not tests:
            continue
        metric = headline(next(iter(tests.values())))[0]
        rows.append((name, metric, *(f"{tests[r][metric]:.3f}" if r in tests else "—" for r in RUNGS)))
        if metric == "accuracy":
            rows.append((name, "f1_macro", *(f"{tests[r]['f1_macro']:.3f}" if r in tests else "—" for r in RUNGS)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def log_to_tensorboard(writer, report: dict, step: int) -> None:
    """Test metrics per task and rung, sample predictions, and the markdown report as text."""
    for name, task in report.get("tasks", {}).items():
        for rung, metrics in task.get("test", {}).items():
            for key in ("accuracy", "f1_macro", "exact_match"):
                if key in metrics:
                    writer.add_scalar(f"test/{name}/{rung}/{key}", metrics[key], step)
        if task.get("samples"):
            table = "| row | gold | prediction |\n|---:|---|---|\n" + "\n".join(
                f"| {s['row']} | {_cell(s['gold'])} | {_cell(s['prediction'])} |" for s in task["samples"]
            )
            writer.add_text(f"samples/{name}", table, step)
    writer.add_text("report", render_markdown(report), step)
    writer.flush()
