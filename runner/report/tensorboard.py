"""The report's numbers and text in TensorBoard."""

from __future__ import annotations

from runner.report.cells import table_cell
from runner.report.document import document
from runner.report.html import to_markdown
from runner.results import RunResult
from runner.spec.types import Spec

# The rung numbers logged as scalars, when a rung has them.
SCALARS = ("accuracy", "f1_macro", "exact_match", "token_f1", "prompt_tokens_mean")


def log_to_tensorboard(writer, result: RunResult, figures: dict, step: int) -> None:
    """Test metrics per task and rung, forgetting, figures, sample predictions, the report as text."""
    for name, task in result.tasks.items():
        for rung, metrics in task.test.items():
            for key in SCALARS:
                if metrics.value(key) is not None:
                    writer.add_scalar(f"test/{name}/{rung}/{key}", metrics.value(key), step)
        if task.samples:
            rows = [[s["row"], table_cell(s["gold"]), table_cell(s["prediction"])] for s in task.samples]
            writer.add_text(f"samples/{name}", to_markdown([("table", ["row", "gold", "prediction"], rows)], {}), step)
    for name, e in (result.forgetting or {}).items():
        if e.two_model:
            writer.add_scalar(f"forgetting/{name}/{e.metric}", e.value, step)
        else:
            for when in ("before", "after", "retention"):
                if getattr(e, when) is not None:
                    writer.add_scalar(f"forgetting/{name}/{when}", getattr(e, when), step)
    for key, fig in figures.items():
        if key.startswith("confusion_") or key == "forgetting":
            writer.add_figure(f"figures/{key}", fig, step, close=False)
    writer.add_text("report", to_markdown(document(result, {}), {}), step)
    writer.flush()


def hparam_metrics(result: RunResult) -> dict[str, float]:
    """Final metrics for TensorBoard's HParams tab (runs compare side by side there)."""
    out = {}
    for name, task in result.tasks.items():
        for rung, metrics in task.test.items():
            metric = metrics.headline()
            out[f"hparam/{name}/{rung}/{metric}"] = metrics.value(metric)
    for name, e in (result.forgetting or {}).items():
        out[f"hparam/forgetting/{name}"] = e.value if e.two_model else e.after
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
