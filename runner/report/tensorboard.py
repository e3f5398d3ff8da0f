"""The report's numbers and text in TensorBoard."""

from __future__ import annotations

from runner.report.document import document, headline, table_cell
from runner.report.html import to_markdown
from runner.spec.types import Spec


def log_to_tensorboard(writer, report: dict, figures: dict, step: int) -> None:
    """Test metrics per task and rung, forgetting, figures, sample predictions, the report as text."""
    for name, task in report.get("tasks", {}).items():
        for rung, metrics in task.get("test", {}).items():
            for key in ("accuracy", "f1_macro", "exact_match", "token_f1", "prompt_tokens_mean"):
                if key in metrics:
                    writer.add_scalar(f"test/{name}/{rung}/{key}", metrics[key], step)
        if task.get("samples"):
            rows = [[s["row"], table_cell(s["gold"]), table_cell(s["prediction"])] for s in task["samples"]]
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
