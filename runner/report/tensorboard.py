"""The report's numbers and text in TensorBoard.

A run's tensorboard/ folder holds one TensorBoard run for training (Lightning's curves, the HParams
session, a custom-scalars layout, figures and text) and one run per source of a final number:
tensorboard/<rung>/ (majority, baseline_tfidf, base_zero_shot, base_few_shot, fine_tuned) with
`test/<task>/<metric>`, and tensorboard/before_training/ and after_training/ with
`forgetting/<probe>/<metric>`. TensorBoard draws one chart per tag with a line per run, each
in its own colour and named in the legend, so a metric's chart sets every rung side by side
(custom scalars colour by run too: tags of one run would share a colour there).
"""

from __future__ import annotations

import os
import re
import time

from torch.utils.tensorboard import SummaryWriter

from runner.report.document import document
from runner.report.html import to_markdown
from runner.report.task_blocks import sample_rows
from runner.results import RunResult
from runner.spec.types import Spec

# The rung numbers logged as scalars, when a rung has them.
SCALARS = ("accuracy", "f1_macro", "exact_match", "token_f1", "prompt_tokens_mean")
BEFORE, AFTER = "before_training", "after_training"  # the forgetting probes' runs


def log_to_tensorboard(writer, result: RunResult, figures: dict, step: int) -> None:
    """Test metrics per task and rung, forgetting, figures, sample predictions, the report as text."""
    runs: dict[str, SummaryWriter] = {}

    def run(name: str) -> SummaryWriter:
        if name not in runs:
            runs[name] = SummaryWriter(os.path.join(writer.log_dir, name))
        return runs[name]

    for tag, name, value in final_scalars(result):
        # A level across the training steps (step 1 without training), not a point at the last
        # one: TensorBoard's outlier-trimmed y range can leave a chart's top single point out.
        for at in (0, max(step, 1)):
            run(name).add_scalar(tag, value, at)
    for each in runs.values():
        each.close()
    writer.add_custom_scalars(layout(result))
    for key, fig in figures.items():
        if key.startswith("confusion_") or key == "forgetting":
            writer.add_figure(f"figures/{key}", fig, step, close=False)
    for name, text in samples_text(result).items():
        writer.add_text(f"samples/{name}", text, step)
    for tag, text in report_sections(result):
        writer.add_text(tag, text, step)
    writer.flush()


def final_scalars(result: RunResult) -> list[tuple[str, str, float]]:
    """(tag, run, value) of every test metric per rung and every forgetting number."""
    out = []
    for name, task in result.tasks.items():
        for rung, metrics in task.test.items():
            out += [
                (f"test/{name}/{key}", rung, metrics.value(key)) for key in SCALARS if metrics.value(key) is not None
            ]
    for name, e in (result.forgetting or {}).items():
        if e.two_model:  # one number, comparing the tuned model with the base
            out.append((f"forgetting/{name}/{e.metric}", AFTER, e.value))
            continue
        out += [(f"forgetting/{name}/{e.metric}", BEFORE, e.before), (f"forgetting/{name}/{e.metric}", AFTER, e.after)]
        if e.retention is not None:
            out.append((f"forgetting/{name}/retention", AFTER, e.retention))
        if e.second:
            out.append((f"forgetting/{name}/{e.second['metric']}", AFTER, e.second["value"]))
    return [(tag, run, value) for tag, run, value in out if value is not None]


def layout(result: RunResult) -> dict:
    """The Custom Scalars tab: each task's metrics (every rung on one chart), each probe before
    and after training, then the training curves."""
    charts: dict[str, dict] = {}
    for name, task in result.tasks.items():
        keys = [k for k in SCALARS if any(m.value(k) is not None for m in task.test.values())]
        charts[f"test: {name}"] = {f"{name} {k}": tag_chart(f"test/{name}/{k}") for k in keys}
    forgetting = result.forgetting or {}
    probes = {f"{name} {e.metric}": tag_chart(f"forgetting/{name}/{e.metric}") for name, e in forgetting.items()}
    probes |= {
        f"{name} {e.second['metric']}": tag_chart(f"forgetting/{name}/{e.second['metric']}")
        for name, e in forgetting.items()
        if e.second
    }
    if probes:
        retention = ["Multiline", [r"^forgetting/[^/]+/retention$"]]
        charts["forgetting (before and after training)"] = {**probes, "retention (1 = unchanged)": retention}
    training = {
        "train/loss (step)": tag_chart("train/loss"),
        "train/learning_rate": tag_chart("train/learning_rate"),
        "train/epoch_loss": tag_chart("train/epoch_loss"),
        "val/loss": tag_chart("val/loss"),
    }
    training |= {f"val/{name}/loss": tag_chart(f"val/{name}/loss") for name in result.tasks if len(result.tasks) > 1}
    if result.training and result.training.monitor and not result.training.monitor.endswith("/loss"):
        training[result.training.monitor] = tag_chart(result.training.monitor)
    charts["training"] = training
    return charts


def tag_chart(tag: str) -> list:
    """A custom-scalars chart of one tag, a line per run that has it."""
    return ["Multiline", [f"^{re.escape(tag)}$"]]


def hparam_metrics(result: RunResult) -> dict[str, float]:
    """The final metrics the HParams tab shows, keyed `<run>/<tag>`: the run (relative to
    tensorboard/) and tag of the scalar log_to_tensorboard writes, which the tab reads. What
    differs between runs comes first (the tab shows the first five): the fine-tuned model's
    headline per task and the probes after training, then the rungs without training."""
    tuned, base = {}, {}
    for name, task in result.tasks.items():
        for rung, metrics in task.test.items():
            metric = metrics.headline()
            (tuned if rung == "fine_tuned" else base)[f"{rung}/test/{name}/{metric}"] = metrics.value(metric)
    for name, e in (result.forgetting or {}).items():
        tuned[f"{AFTER}/forgetting/{name}/{e.metric}"] = e.value if e.two_model else e.after
    return tuned | base


def hparams_session(writer, params: dict, metrics: dict[str, float]) -> None:
    """The HParams tab's entry for this run: its settings, and which scalars are its metrics
    (keyed as hparam_metrics keys them). Written as the plugin's summaries directly: Lightning's
    log_hyperparams would also copy every metric's value into a scalar of its own."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo

    # A setting's Python type -> the plugin's data type and the field its value goes in.
    kinds = {
        bool: (api_pb2.DATA_TYPE_BOOL, "bool_value"),
        int: (api_pb2.DATA_TYPE_FLOAT64, "number_value"),
        float: (api_pb2.DATA_TYPE_FLOAT64, "number_value"),
    }
    text = (api_pb2.DATA_TYPE_STRING, "string_value")
    experiment = api_pb2.Experiment(
        hparam_infos=[
            # An experiment's runs differ by variant: the tab then shows it among its first columns.
            api_pb2.HParamInfo(name=k, type=kinds.get(type(v), text)[0], differs=k == "variant" and bool(v))
            for k, v in params.items()
        ]
    )
    start = SessionStartInfo(start_time_secs=time.time())
    for key, value in params.items():
        field = kinds.get(type(value), text)[1]
        setattr(start.hparams[key], field, value if field != "string_value" else str(value))
    for key in metrics:
        group, tag = key.split("/", 1)
        shown = f"{tag.split('/', 1)[-1].replace('/', ' ')} ({group})"  # e.g. "sentiment accuracy (fine_tuned)"
        experiment.metric_infos.add(name=api_pb2.MetricName(group=group, tag=tag), display_name=shown)
    files = writer._get_file_writer()
    for tag, data in (
        (metadata.EXPERIMENT_TAG, HParamsPluginData(experiment=experiment)),
        (metadata.SESSION_START_INFO_TAG, HParamsPluginData(session_start_info=start)),
        (
            metadata.SESSION_END_INFO_TAG,
            HParamsPluginData(session_end_info=SessionEndInfo(status=api_pb2.STATUS_SUCCESS)),
        ),
    ):
        value = Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
        files.add_summary(Summary(value=[value]))
    writer.flush()


# TensorBoard's Text tab shows an entry in a frame of at most 500 px that scrolls, at about 7 px a
# character, and lets a table too wide for the frame break words anywhere to fit.
FRAME_PX = 440
TABLE_CHARS = 105  # a table's widest rows in characters, cell padding included
NARROWEST = 12  # the narrowest a column of text wraps to


def samples_text(result: RunResult) -> dict[str, str]:
    """Per task, the fine-tuned model's sample predictions as a Markdown table, with each input
    (the prompt less the template lines every sample shares, as scoring kept it)."""
    out = {}
    for name, task in result.tasks.items():
        if not task.samples:
            continue
        rows = sample_rows(task.samples, answer_width=80)  # the frame wraps them (tb_table)
        out[name] = to_markdown([tb_table(("table", ["row", "input", "gold", "prediction", "correct"], rows))], {})
    return out


def report_sections(result: RunResult) -> list[tuple[str, str]]:
    """The report as Text-tab entries (tag, Markdown) in the report's order: one per section, and
    a section taller than a frame in parts (report/<n>_<title>_part1, _part2 …)."""
    sections: list[tuple[str, list[tuple]]] = [("overview", [])]
    for block in document(result, {}):
        if block[0] == "h2":
            sections.append((re.sub(r"\W+", "_", block[1].replace("`", "")).strip("_").lower(), []))
        sections[-1][1].append(tb_table(block) if block[0] == "table" else block)
    out = []
    for i, (title, blocks) in enumerate(sections):
        parts = frames(blocks)
        for j, part in enumerate(parts, start=1):
            out.append((f"report/{i}_{title}" + (f"_part{j}" if len(parts) > 1 else ""), to_markdown(part, {})))
    return out


def frames(blocks: list[tuple]) -> list[list[tuple]]:
    """The blocks in runs that each fit a Text-tab frame; a table taller than a frame in pieces
    that each repeat its header."""
    out: list[list[tuple]] = [[]]
    used = 0
    for block in (piece for b in blocks for piece in table_pieces(b)):
        px = height(block)
        if out[-1] and used + px > FRAME_PX:
            out.append([])
            used = 0
        out[-1].append(block)
        used += px
    return [run for run in out if run]


def table_pieces(block: tuple) -> list[tuple]:
    """A table as tables of consecutive rows, each fitting a frame; any other block as it is."""
    if block[0] != "table":
        return [block]
    pieces: list[list] = [[]]
    for row in block[2]:
        if pieces[-1] and height(("table", block[1], [*pieces[-1], row])) > FRAME_PX:
            pieces.append([])
        pieces[-1].append(row)
    return [("table", block[1], rows) for rows in pieces]


def height(block: tuple) -> int:
    """A block's rendered height in px in a Text-tab frame, roughly (Roboto 14 px, 20 px lines)."""
    if block[0] in ("h1", "h2"):
        return 50
    if block[0] == "p":
        return 20 * (len(block[1]) // 120 + 1) + 16
    if block[0] == "table":
        return 16 + sum(13 + 20 * (1 + max(str(c).count("<br>") for c in row)) for row in [block[1], *block[2]])
    return 0  # images are the Images tab's


def tb_table(block: tuple) -> tuple:
    """A table block whose cells show as their text, with the widest columns wrapped (<br>) so the
    table fits the frame: squeezed, TensorBoard's table breaks words anywhere ("prob|e")."""
    table = [list(map(str, block[1])), *([str(c) for c in row] for row in block[2])]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    floors = [max(max(map(len, units(row[i])), default=0) for row in table) for i in range(len(widths))]
    floors = [max(f, min(w, NARROWEST)) for f, w in zip(floors, widths)]
    while sum(widths) + 4 * len(widths) > TABLE_CHARS:
        # Narrow the column that adds the fewest lines to the table (a header-only width first).
        trials = []
        for i in (i for i, w in enumerate(widths) if w > floors[i]):
            trial = [*widths[:i], max(floors[i], int(widths[i] * 0.8)), *widths[i + 1 :]]
            lines = sum(max(len(wrap(c, w)) for c, w in zip(row, trial)) for row in table)
            trials.append((lines, -widths[i], trial))
        if not trials:
            break
        widths = min(trials)[2]
    wrapped = [["<br>".join(md_cell(line) for line in wrap(c, w)) for c, w in zip(row, widths)] for row in table]
    return ("table", wrapped[0], wrapped[1:])


def units(cell: str) -> list[str]:
    """What a cell wraps between: words, or for a number its value and its [interval]."""
    return re.split(r" (?=\[)", cell) if not re.search(r"[^\W\d]", cell) else cell.split()


def wrap(cell: str, width: int) -> list[str]:
    """The cell's units filled greedily into lines of at most `width` (a longer unit alone)."""
    lines: list[str] = []
    for unit in units(cell):
        if lines and len(lines[-1]) + 1 + len(unit) <= width:
            lines[-1] += " " + unit
        else:
            lines.append(unit)
    return lines or [""]


def md_cell(text: str) -> str:
    """Free text shown as itself in a Markdown table cell: no HTML, emphasis or code spans made of
    it (to_markdown escapes a row's `|`)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_])", r"\\\1", text)


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
