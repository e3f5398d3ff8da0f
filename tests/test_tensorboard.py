"""What a run writes for TensorBoard, read back the way TensorBoard reads it: one chart per metric
with every rung, HParams metrics that are the run's own scalars, learning-rate and step-loss
curves whatever trainer.log_every_n_steps says, and report text that renders as tables."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from conftest import base_spec, make_workdir, write_jsonl, write_spec

from runner.cli import main
from runner.report.cells import distinct_inputs
from runner.report.tensorboard import md_cell, tb_table
from runner.training.callbacks import TrainingCurves

RUNGS = {"majority", "baseline_tfidf", "base_zero_shot", "base_few_shot", "fine_tuned"}
MAIN = "tensorboard"  # the training run; a rung's or probe's is MAIN/<name>


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """One tiny run (2 epochs of 4 steps, log_every_n_steps far above that, two forgetting probes),
    its folder loaded as `tensorboard --logdir <run folder>` loads it: one run per folder with
    events, the training run named "tensorboard", the others "tensorboard/<name>"."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    root = make_workdir(tmp_path_factory.mktemp("tb"))
    write_jsonl(root / "data" / "mc.jsonl", [{"q": "Which is a colour?", "options": ["red", "seven"], "key": 0}])
    (root / "templates" / "mc.jinja").write_text("Q: {{ q }}\nA: ||| {{ options[key] }}")
    (root / "data" / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 8)
    spec = base_spec(model={"source": "random-tiny", "max_length": 256})
    spec["trainer"]["log_every_n_steps"] = 50
    spec["evaluation"]["forgetting"] = [
        {
            "name": "mc",
            "kind": "multiple_choice",
            "data": "data/mc.jsonl",
            "template": "mc.jinja",
            "choices": "options",
        },
        {"name": "ppl", "kind": "perplexity", "data": "data/prose.txt", "max_tokens": 100},
    ]
    write_spec(root / "spec.yaml", spec)
    assert main(["run", str(root / "spec.yaml")]) == 0
    (run_dir,) = (root / "runs" / "tiny").iterdir()
    loaded = EventMultiplexer(size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    loaded.AddRunsFromDirectory(str(run_dir))
    loaded.Reload()
    return loaded, run_dir


def scalars(loaded, run: str, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in loaded.Scalars(run, tag)}


def texts(loaded) -> dict[str, str]:
    """Text-tab entries of the training run by tag (add_text's /text_summary suffix dropped)."""
    out = {}
    for tag in loaded.GetAccumulator(MAIN).Tags()["tensors"]:
        if tag.endswith("/text_summary"):
            out[tag.removesuffix("/text_summary")] = loaded.Tensors(MAIN, tag)[-1].tensor_proto.string_val[0].decode()
    return out


def test_one_chart_per_metric_holds_every_rung_and_each_probe_before_and_after(events):
    from tensorboard.plugins.custom_scalar import layout_pb2

    loaded, _ = events
    config = loaded.Tensors(MAIN, "custom_scalars__config__")[-1].tensor_proto.string_val[0]
    layout = layout_pb2.Layout.FromString(config)
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    tags = loaded.Runs()

    def drawn(title: str) -> dict[str, set[str]]:
        """run -> the tags a chart draws from it (TensorBoard: every run, tags by regex)."""
        out = {}
        for run, found in tags.items():
            hits = {t for t in found["scalars"] if any(re.search(p, t) for p in charts[title])}
            if hits:
                out[run] = hits
        return out

    for metric in ("accuracy", "f1_macro", "prompt_tokens_mean"):
        assert drawn(f"sentiment {metric}") == {f"{MAIN}/{rung}": {f"test/sentiment/{metric}"} for rung in RUNGS}
    probe_runs = {f"{MAIN}/before_training", f"{MAIN}/after_training"}
    assert drawn("mc acc") == {run: {"forgetting/mc/acc"} for run in probe_runs}
    assert set(drawn("ppl perplexity")) == probe_runs
    assert set(drawn("train/learning_rate")) == {MAIN}
    # Each number is a level from step 0 to the last step, every rung's the same length.
    levels = {rung: scalars(loaded, f"{MAIN}/{rung}", "test/sentiment/accuracy") for rung in RUNGS}
    assert {tuple(sorted(v)) for v in levels.values()} == {(0, 8)}
    assert all(len(set(v.values())) == 1 for v in levels.values())


def test_hparams_metrics_are_the_rung_scalars_with_no_copy(events):
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.metrics import run_tag_from_session_and_metric

    loaded, _ = events
    every_tag = {t for found in loaded.Runs().values() for t in found["scalars"]}
    assert not [t for t in every_tag if t.startswith("hparam")]
    assert not [t for t in loaded.Runs()[MAIN]["scalars"] if t.startswith(("test/", "forgetting/"))]
    content = loaded.SummaryMetadata(MAIN, metadata.EXPERIMENT_TAG).plugin_data.content
    experiment = metadata.parse_experiment_plugin_data(content)
    assert {h.name for h in experiment.hparam_infos} >= {"method", "learning_rate", "variant", "seed"}
    start = metadata.parse_session_start_info_plugin_data(
        loaded.SummaryMetadata(MAIN, metadata.SESSION_START_INFO_TAG).plugin_data.content
    )
    assert start.hparams["method"].string_value == "lora"
    names = [(m.name.group, m.name.tag) for m in experiment.metric_infos]
    assert names[0] == ("fine_tuned", "test/sentiment/accuracy")  # the tab shows the first five
    assert {g for g, _ in names} == RUNGS | {"after_training"}
    for info in experiment.metric_infos:  # each resolves to a scalar as the plugin resolves it
        run, tag = run_tag_from_session_and_metric(MAIN, info.name)
        assert tag in loaded.Runs()[run]["scalars"], (run, tag)


def test_learning_rate_and_step_loss_at_every_epoch_end_past_log_every_n_steps(events):
    loaded, _ = events
    # 2 epochs of 4 batches, log_every_n_steps 50: each epoch's last step (Lightning's step index).
    lr = scalars(loaded, MAIN, "train/learning_rate")
    loss = scalars(loaded, MAIN, "train/loss")
    assert sorted(lr) == sorted(loss) == [3, 7]
    assert all(v > 0 for v in lr.values()) and all(torch.isfinite(torch.tensor(v)) for v in loss.values())
    assert len(scalars(loaded, MAIN, "train/epoch_loss")) == 2  # an epoch value, not a dropped step one
    assert not [t for t in loaded.Runs()[MAIN]["scalars"] if t.startswith("lr-")]  # no second lr curve


def test_training_curves_log_every_nth_step_and_each_epochs_last():
    """The callback alone: log_every_n_steps 3 over two epochs of 4 batches, then an epoch cut short."""
    written = {}
    logger = SimpleNamespace(log_metrics=lambda metrics, step: written.setdefault(step, metrics))
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.5}])
    trainer = SimpleNamespace(
        is_global_zero=True, logger=logger, optimizers=[optimizer], log_every_n_steps=3, should_stop=False
    )
    curves = TrainingCurves()
    for step in range(10):
        trainer.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=step))
        trainer.is_last_batch = step in (3, 7)  # epochs of 4 batches; the third stops after 2 (max_steps)
        optimizer.param_groups[0]["lr"] = 0.1 * step
        curves.on_train_batch_start(trainer, None, None, step)
        optimizer.param_groups[0]["lr"] = -1.0  # the scheduler steps after the batch: not what it used
        curves.on_train_batch_end(trainer, None, {"loss": torch.tensor(float(step))}, None, step)
        if step in (3, 7, 9):
            curves.on_train_epoch_end(trainer, None)
    assert sorted(written) == [2, 3, 5, 7, 8, 9]
    assert written[5] == {"train/loss": 5.0, "train/learning_rate": pytest.approx(0.5)}


def test_report_text_is_one_entry_per_section_with_tables_that_render(events):
    from tensorboard.plugin_util import markdown_to_safe_html

    loaded, _ = events
    report = {tag: text for tag, text in texts(loaded).items() if tag.startswith("report/")}
    assert next(iter(sorted(report))).startswith("report/0_overview")
    assert any("forgetting" in tag for tag in report) and any("task_sentiment" in tag for tag in report)
    tables = 0
    for tag, text in report.items():
        lines = text.splitlines()
        for i, line in enumerate(lines[1:], start=1):
            if line.startswith("|---"):
                header = [c.strip() for c in lines[i - 1].strip("|").split("|")]
                assert any(header), (tag, lines[i - 1])
                html = markdown_to_safe_html(text)
                assert "<table>" in html and re.search(r"<th>[^<]+</th>", html), tag
                tables += 1
    assert tables >= 4


def test_samples_show_each_input_without_the_shared_template_lines(events):
    import json

    loaded, run_dir = events
    samples = json.loads((run_dir / "report.json").read_text())["tasks"]["sentiment"]["samples"]
    text = texts(loaded)["samples/sentiment"]
    assert text.splitlines()[0].startswith("| row | input | gold | prediction |")
    for s in samples:
        row = next(line for line in text.splitlines() if line.startswith(f"| {s['row']} |"))
        assert re.search(r"Review: The product \d+ was \w+\.", row), row
    assert "Sentiment:" not in text  # the template's answer cue, the same in every prompt


def test_inputs_lose_only_the_lines_every_prompt_shares():
    prompts = ["Classify.\nTicket: printer on fire\nAnswer:", "Classify.\nTicket: lost badge\nAnswer:"]
    assert distinct_inputs(prompts) == ["Ticket: printer on fire", "Ticket: lost badge"]
    assert distinct_inputs(["Classify.\nTicket: x\nAnswer:"]) == ["Classify. Ticket: x Answer:"]  # one: all of it


def test_wide_tables_wrap_cells_instead_of_breaking_words_and_free_text_stays_text():
    from tensorboard.plugin_util import markdown_to_safe_html

    from runner.report.html import to_markdown

    long = "base model, few-shot (k = 3 on average, 12 shots shortened) (cached)"
    ci = "0.500 [0.000, 1.000]"
    header = ["model", "accuracy", "f1_macro", "prompt tokens / request", "prompts shortened", "n"]
    _, header, rows = tb_table(("table", header, [[long, ci, ci, "248", "2", "4"]]))
    lines = rows[0][0].split("<br>")
    assert len(lines) > 1 and " ".join(lines) == long  # the long text wraps, between words
    assert rows[0][1].split("<br>") == ["0.500", "[0.000, 1.000]"]  # a number wraps before its interval
    widest = [
        max(max(len(line) for line in h.split("<br>")), max(len(line) for line in c.split("<br>")))
        for h, c in zip(header, rows[0])
    ]
    assert sum(widest) + 4 * len(widest) <= 105, widest  # the frame's width: no word gets broken to fit
    assert md_cell("<urgent> a_b *c*") == "&lt;urgent&gt; a\\_b \\*c\\*"
    html = markdown_to_safe_html(to_markdown([tb_table(("table", ["label", "n"], [["<urgent>", 3]]))], {}))
    assert "&lt;urgent&gt;" in html


def test_each_source_of_a_final_number_is_a_run_folder(events):
    loaded, run_dir = events
    assert set(loaded.Runs()) == {MAIN, *(f"{MAIN}/{name}" for name in (*RUNGS, "before_training", "after_training"))}
    assert all((run_dir / "tensorboard" / rung).is_dir() for rung in RUNGS)
