"""Experiments on random-tiny: variants, seeds and curve points in one spec, the base model scored
once, failures that lose nothing, the comparison and its recommendation; the mixture sampler."""

from __future__ import annotations

import json
import mmap
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import base_spec, sentiment_rows, write_jsonl, write_spec

from runner.cli import main
from runner.data.mixture import MixtureSampler, epoch_quotas, mean_targets
from runner.errors import SpecError
from runner.evaluation.evaluator import Evaluator
from runner.inputs import prepare_inputs
from runner.report import recommend as comparison
from runner.report import uncertainty as stats
from runner.spec.load import load_spec
from runner.spec.types import ReplaySpec
from runner.training.memory import peak_rss_mb, reset_peak_rss
from runner.training.setup import make_datamodule


def experiment_spec(workdir: Path, **extra) -> Path:
    raw = base_spec()
    raw["training"] = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3}
    raw.update(extra)
    return write_spec(workdir / "spec.yaml", raw)


def only_child(folder: Path) -> Path:
    (child,) = [p for p in folder.iterdir() if p.is_dir()]
    return child


def report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


class EvaluateCalls:
    """Counts Evaluator.evaluate calls by (task, few-shot, model wrapped by peft)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: Counter = Counter()
        original = Evaluator.evaluate

        def counted(evaluator, data, shots=0, seed=0):
            self.calls[(data.task.name, shots > 0, getattr(evaluator.model, "peft_config", None) is not None)] += 1
            return original(evaluator, data, shots=shots, seed=seed)

        monkeypatch.setattr(Evaluator, "evaluate", counted)


# --- one experiment: splits, one base scoring, the comparison -----------------------------------


def test_variants_share_splits_and_one_base_scoring(workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_NO_CACHE", "1")  # the user's score cache off: sharing is the experiment's own
    calls = EvaluateCalls(monkeypatch)
    spec = experiment_spec(
        workdir,
        variants=[
            {"name": "lora", "description": "LoRA"},
            {"name": "full", "set": {"method.kind": "full"}},
            {"name": "lora-r2", "set": {"method.lora.r": 2, "training.learning_rate": 5e-3}},
        ],
    )
    assert main(["run", str(spec), "--output-dir", str(tmp_path / "out")]) == 0
    parent = only_child(tmp_path / "out" / "tiny")
    runs = {p.name: p for p in (parent / "variants").iterdir()}
    assert set(runs) == {"lora", "full", "lora-r2"}
    reports = {name: report(run) for name, run in runs.items()}
    assert all(r["status"] == "complete" for r in reports.values())
    assert [reports[n]["model"]["method"] for n in ("lora", "full", "lora-r2")] == ["lora", "full", "lora"]

    # The same rows in every split of every run, and the experiment's own splits.json says so.
    splits = json.loads((parent / "splits.json").read_text())["tasks"]
    for run in runs.values():
        assert json.loads((run / "splits.json").read_text())["tasks"] == splits

    # The base model's zero- and few-shot rungs were scored once for the three runs (one
    # evaluate call each), the fine-tuned rung once per run; every run reports the same numbers.
    base_calls = sum(n for (task, few, tuned), n in calls.calls.items() if not tuned and task == "sentiment")
    assert base_calls == 2 + 1  # zero-shot, few-shot, and the full run's fine-tuned (no peft)
    assert sum(n for (_, _, tuned), n in calls.calls.items() if tuned) == 2  # the two LoRA runs
    for rung in ("base_zero_shot", "base_few_shot"):
        values = {json.dumps(r["tasks"]["sentiment"]["test"][rung]["accuracy"]) for r in reports.values()}
        assert len(values) == 1
    shared = [r for r in reports.values() if any("scored once for the whole experiment" in n for n in r["notes"])]
    assert len(shared) == 2  # every run after the first
    assert len(list((parent / "base_scores").glob("*.json"))) == 2

    # The comparison: every variant, paired deltas to the best, cost, a recommendation.
    result = json.loads((parent / "comparison.json").read_text())
    assert set(result["variants"]) == {"lora", "full", "lora-r2"}
    assert result["test_rows"] == reports["lora"]["tasks"]["sentiment"]["data"]["test"]
    best = result["best"]
    for name, entry in result["variants"].items():
        assert entry["cost"]["trainable_params"] == reports[name]["cost"]["trainable_params"]
        assert entry["cost"]["ms_per_example"] > 0
        assert ("delta_ci95" in entry) == (name != best)
    assert (
        result["variants"]["full"]["cost"]["trainable_params"] > result["variants"]["lora"]["cost"]["trainable_params"]
    )
    assert result["recommendation"]["sentence"]
    md = (parent / "comparison.md").read_text()
    assert "Recommendation" in md and "| lora-r2 |" in md
    assert (parent / "comparison.html").read_text().startswith("<!DOCTYPE html>")
    assert (parent / "plots" / "variants.png").is_file()
    # TensorBoard: every run logs its settings and results to the HParams tab.
    for run in runs.values():
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_seeds_repeat_each_variant_and_report_mean_and_sd(workdir, tmp_path):
    spec = experiment_spec(workdir, seeds=[1, 2], variants=[{"name": "lora"}])
    assert main(["run", str(spec), "--output-dir", str(tmp_path / "out")]) == 0
    parent = only_child(tmp_path / "out" / "tiny")
    assert sorted(p.name for p in (parent / "variants").iterdir()) == ["lora-seed1", "lora-seed2"]
    seeds = {report(parent / "variants" / n)["training_data"]["seed"] for n in ("lora-seed1", "lora-seed2")}
    assert seeds == {1, 2}
    entry = json.loads((parent / "comparison.json").read_text())["variants"]["lora"]
    assert entry["seeds_done"] == 2 and len(entry["per_seed"]) == 2
    assert entry["sd"] is not None and entry["sd"] >= 0
    assert "± " in (parent / "comparison.md").read_text()


def test_training_seeds_change_training_not_the_splits_or_base(workdir):
    spec = load_spec(experiment_spec(workdir, seeds=[3, 4]))
    first, second = spec.runs
    assert (first.training.seed, second.training.seed) == (3, 4)
    assert first.seed == second.seed == spec.seed  # splits, few-shot draw and base weights
    a, b = prepare_inputs(first), prepare_inputs(second)
    assert [e.row for e in a.tasks[0].test] == [e.row for e in b.tasks[0].test]
    order = [list(make_datamodule(x, s).train_dataloader().sampler) for x, s in ((a, first), (b, second))]
    assert sorted(order[0]) == sorted(order[1]) and order[0] != order[1]


def test_a_failed_run_keeps_the_others_and_a_rerun_finishes_only_it(workdir, tmp_path, monkeypatch, capsys):
    import runner.flows.run

    spec = experiment_spec(workdir, variants=[{"name": "a"}, {"name": "b", "set": {"method.lora.r": 2}}, {"name": "c"}])
    real_fit = runner.training.trainer.fit

    def fit_failing_for_b(module, datamodule, spec, run_dir, resume_from):
        if run_dir.name == "b":
            raise RuntimeError("out of memory (simulated)")
        return real_fit(module, datamodule, spec, run_dir, resume_from)

    monkeypatch.setattr(runner.flows.run, "fit", fit_failing_for_b)
    assert main(["run", str(spec), "--output-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 runs failed" in err and "b: RuntimeError: out of memory (simulated)" in err
    parent = only_child(tmp_path / "out" / "tiny")
    assert f"--resume {parent}" in err
    assert json.loads((parent / "experiment.json").read_text())["runs"] == {
        "a": "complete",
        "b": "failed",
        "c": "complete",
    }
    assert report(parent / "variants" / "b")["status"] == "failed"
    finished = {n: report(parent / "variants" / n)["finished_at"] for n in ("a", "c")}
    first = json.loads((parent / "comparison.json").read_text())
    assert "cost" not in first["variants"]["b"] and "cost" in first["variants"]["a"]

    monkeypatch.setattr(runner.flows.run, "fit", real_fit)
    assert main(["run", str(spec), "--resume", str(parent)]) == 0
    assert "a: complete already, kept" in capsys.readouterr().err
    assert {n: report(parent / "variants" / n)["finished_at"] for n in ("a", "c")} == finished  # untouched
    assert report(parent / "variants" / "b")["status"] == "complete"
    assert json.loads((parent / "experiment.json").read_text())["runs"]["b"] == "complete"
    assert "cost" in json.loads((parent / "comparison.json").read_text())["variants"]["b"]


def test_resume_refuses_an_edited_spec_and_only_runs_the_named_variant(workdir, tmp_path, capsys):
    spec = experiment_spec(workdir, variants=[{"name": "a"}, {"name": "b", "set": {"method.lora.r": 2}}])
    assert main(["run", str(spec), "--only", "b", "--output-dir", str(tmp_path / "out")]) == 0
    parent = only_child(tmp_path / "out" / "tiny")
    assert [p.name for p in (parent / "variants").iterdir()] == ["b"]
    capsys.readouterr()
    assert main(["run", str(spec), "--resume", str(parent), "--set", "training.epochs=2"]) == 1
    assert "the spec changed since this experiment started (training)" in capsys.readouterr().err
    assert main(["run", str(spec), "--only", "nope"]) == 1
    assert "--only nope: not a run of tiny; runs: a, b." in capsys.readouterr().err


def test_a_curve_trains_on_nested_stratified_samples_with_the_same_val_and_test(workdir, tmp_path):
    write_jsonl(workdir / "data" / "sentiment.jsonl", sentiment_rows(80))
    spec = experiment_spec(workdir, curve={"train_rows": [10, 20, "all"]})
    loaded = load_spec(spec)
    assert [r.run.name for r in loaded.runs] == ["rows-10", "rows-20", "rows-all"]
    inputs = prepare_inputs(loaded.runs[0])
    modules = [make_datamodule(inputs, r) for r in loaded.runs]
    rows = [{tuple(r["input_ids"]) for r in m.train_sets[0]} for m in modules]
    assert [len(r) for r in rows] == [10, 20, len(inputs.tasks[0].train)]
    assert rows[0] < rows[1] < rows[2]  # nested
    labels = Counter(json.loads(line)["sentiment"] for line in (workdir / "data" / "sentiment.jsonl").open())
    assert len(labels) == 2
    sample = make_datamodule(inputs, loaded.runs[0])
    counts = Counter(next(t for t in r["labels"] if t != -100) for r in sample.train_sets[0])  # label's first token
    assert sorted(counts.values()) == [5, 5]  # stratified: half each, as in the train split

    assert main(["run", str(spec), "--output-dir", str(tmp_path / "out")]) == 0
    parent = only_child(tmp_path / "out" / "tiny")
    result = json.loads((parent / "comparison.json").read_text())
    assert [p["train_rows"] for p in result["curve"]] == [10, 20, len(inputs.tasks[0].train)]
    assert all(p["ci95"] is not None for p in result["curve"])
    assert (parent / "plots" / "curve.png").is_file()
    reports = [report(parent / "variants" / n) for n in ("rows-10", "rows-all")]
    assert reports[0]["tasks"]["sentiment"]["data"]["test"] == reports[1]["tasks"]["sentiment"]["data"]["test"]
    assert "stratified sample of 10 of the" in (parent / "variants" / "rows-10" / "report.md").read_text()


# --- spec errors ---------------------------------------------------------------------------------


def test_variants_may_not_change_what_fixes_the_base_scores(workdir):
    path = experiment_spec(
        workdir,
        variants=[
            {"name": "other-model", "set": {"model.source": "somewhere", "evaluation.few_shot_k": 1}},
            {"name": "new-template", "set": {"tasks.0.template": "x.jinja", "tasks.0.weight": 0.5}},
            {"name": "bad-value", "set": {"method.lora.r": 0}},
            {"name": "bad-value"},
        ],
        curve={"train_rows": [5]},
    )
    with pytest.raises(SpecError) as err:
        load_spec(path)
    problems = err.value.problems
    assert any(p.startswith("$.variants[0].set['model.source']: a variant may change method.*") for p in problems)
    assert any(p.startswith("$.variants[0].set['evaluation.few_shot_k']:") for p in problems)
    assert any(
        p.startswith("$.variants[1].set['tasks.0.template']: the primary task (tasks.0) keeps its data, template")
        for p in problems
    )
    assert not any("tasks.0.weight" in p.split(":")[0] for p in problems)  # the primary's weight may change
    assert "$.variants[2] (bad-value): $.method.lora.r: got 0, expected a value >= 1." in problems
    assert any(p.startswith("$.variants[3].name: 'bad-value' is also the name of $.variants[2]") for p in problems)


def test_experiments_need_one_process_and_a_known_primary_task(workdir):
    raw = base_spec(variants=[{"name": "a"}], primary_task="nope")
    raw["trainer"]["devices"] = 2
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(workdir / "spec.yaml", raw))
    assert err.value.problems == ["$.primary_task: 'nope' is not a task; tasks: sentiment."]
    raw.pop("primary_task")
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(workdir / "spec.yaml", raw))
    assert err.value.problems[0].startswith("$.trainer: an experiment's runs train one after another in one process")


def test_a_task_added_on_the_primary_file_must_keep_its_split(workdir, tmp_path, capsys):
    (workdir / "templates" / "length.jinja").write_text(
        "Review: {{ text }}\nLong?\n|||\n{{ 'yes' if text|length > 22 else 'no' }}\n"
    )
    added = {"name": "length", "data": "data/sentiment.jsonl", "template": "length.jinja", "labels": ["yes", "no"]}
    spec = experiment_spec(workdir, variants=[{"name": "single"}, {"name": "multi", "add_tasks": [added]}])
    assert (
        main(["run", str(spec), "--output-dir", str(tmp_path / "out")]) == 2
    )  # a located spec problem, found before any folder
    err = capsys.readouterr().err
    assert "run 'multi' splits the rows of task 'sentiment' differently from run 'single'" in err
    assert "same data.stratify_by" in err
    assert not (tmp_path / "out").exists()  # stopped before any folder


# --- the recommendation ------------------------------------------------------------------------


def entry(accuracy: float, delta_ci=None, params: int = 1000, seconds: float = 10.0, forgot: bool = False) -> dict:
    e = {
        "accuracy": accuracy,
        "ci95": [accuracy - 0.1, accuracy + 0.1],
        "cost": {"trainable_params": params, "train_seconds": seconds},
        "forgetting": {"general_mc": {"kind": "multiple_choice", "delta": -0.05 if forgot else 0.0, "forgot": forgot}},
    }
    if delta_ci is not None:
        e["delta_ci95"] = delta_ci
    return e


def test_recommendation_is_inconclusive_when_the_test_set_cannot_tell():
    entries = {"full": entry(0.80, params=100_000), "lora": entry(0.78, [-0.12, 0.08])}
    result = comparison.recommend(entries, "full", 0.02, 104)
    assert result["verdict"] == "inconclusive"
    assert result["sentence"].startswith("Inconclusive: the test set cannot tell these apart.")
    assert "paired 95% CI of lora − full: -12.0..+8.0 points on 104 test rows" in result["sentence"]


def test_recommendation_takes_the_cheapest_non_inferior_variant():
    entries = {
        "full": entry(0.80, params=135_000, seconds=100),
        "lora": entry(0.795, [-0.015, 0.005], params=5_000, seconds=60),
        "tiny-lora": entry(0.60, [-0.3, -0.1], params=500, seconds=50),
    }
    result = comparison.recommend(entries, "full", 0.02, 500)
    assert result["verdicts"] == {"lora": "non-inferior", "tiny-lora": "worse"}
    assert result["variant"] == "lora"
    assert result["sentence"] == (
        "Use lora: it is within 2 points of full (paired 95% CI -1.5..+0.5 points) at 1/27 of the trainable "
        "parameters, in 60% of the training time and with no measurable forgetting on general_mc."
    )
    # Forgetting outweighs parameter count: a cheaper variant that forgets is not preferred.
    entries["lora"] = entry(0.795, [-0.015, 0.005], params=5_000, seconds=60, forgot=True)
    assert comparison.recommend(entries, "full", 0.02, 500)["variant"] == "full"


def test_recommendation_names_the_best_when_all_others_are_worse():
    entries = {"full": entry(0.9), "lora": entry(0.7, [-0.3, -0.1])}
    sentence = comparison.recommend(entries, "full", 0.02, 500)["sentence"]
    assert sentence.startswith("Use full: it scored highest (accuracy 0.900, 95% CI 0.80..1.00)")
    assert "every other variant is measurably worse (lora: -30.0..-10.0 points). It shows no measurable" in sentence


def test_recommendation_warns_when_the_pick_does_not_beat_the_majority_class():
    entries = {"full": entry(0.45, params=100_000), "lora": entry(0.44, [-0.015, 0.0])}
    majority = {"majority": {"accuracy": 0.40}}
    sentence = comparison.recommend(entries, "full", 0.02, 104, majority)["sentence"]
    assert sentence.startswith("Use lora:")
    assert sentence.endswith(
        "But it does not clearly beat always answering the most frequent label (accuracy 0.400, inside its 95% CI): more data or training would."
    )
    assert (
        "does not clearly beat"
        not in comparison.recommend(entries, "full", 0.02, 104, {"majority": {"accuracy": 0.3}})["sentence"]
    )


def test_paired_interval_is_narrower_than_comparing_two_intervals():
    """Why the comparison pairs: two variants that mostly agree row by row."""
    generator = torch.Generator().manual_seed(0)
    a = (torch.rand(200, generator=generator) < 0.7).float()
    b = a.clone()
    b[:6] = 1 - b[:6]
    idx = stats.resample_indices(200, 1000, 0)
    paired = stats.interval(stats.accuracy_samples(b, idx) - stats.accuracy_samples(a, idx))
    one = stats.interval(stats.accuracy_samples(a, idx))
    assert paired[1] - paired[0] < (one[1] - one[0]) / 2


# --- the mixture sampler and replay ------------------------------------------------------------


def test_sampler_sees_every_row_once_per_epoch_and_reshuffles_each_epoch():
    sampler = MixtureSampler([range(30), range(30, 50)], [30, 20], seed=1)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
        assert sorted(epochs[-1]) == list(range(50))
    assert epochs[0] != epochs[1] != epochs[2]
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]  # an epoch's order depends only on the seed and its number


def test_sampler_draws_quotas_without_replacement_across_epochs():
    # Set 0 (40 rows) gives 10 per epoch: four epochs see each of its rows exactly once. Set 1
    # (5 rows) gives 12 per epoch from a stream of fresh shuffles: no row more than 4 times in an
    # epoch, and five epochs (12 shuffles) see every row exactly 12 times.
    sampler = MixtureSampler([range(40), range(40, 45)], [10, 12], seed=2, lengths=list(range(45)), batch_size=4)
    seen, small = Counter(), Counter()
    for epoch in range(5):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == 22
        first = [i for i in drawn if i < 40]
        assert len(first) == len(set(first)) == 10
        counts = Counter(i for i in drawn if i >= 40)
        assert max(counts.values()) <= 4  # a window of 12 spans at most 4 shuffles of 5
        small.update(counts)
        if epoch < 4:
            seen.update(first)
    assert sorted(seen) == list(range(40)) and set(seen.values()) == {1}
    assert dict(small) == {i: 12 for i in range(40, 45)}


def test_replay_share_of_tokens_and_of_rows(workdir):
    spec = load_spec(experiment_spec(workdir, replay={"share": 0.2}))
    assert spec.replay.data.name == "general.jsonl" and spec.replay.of == "tokens"
    inputs = prepare_inputs(spec)
    assert len(inputs.replay) == 300
    module = make_datamodule(inputs, spec)
    mix = module.mixture()
    assert set(mix) == {"sentiment", "replay"}
    assert mix["sentiment"]["rows"] == len(inputs.tasks[0].train)  # the task keeps every row
    # 20% of the loss tokens, to within one replay row (quotas are whole rows).
    one_row = mean_targets(module.train_sets[1]) / (mix["sentiment"]["loss_tokens"] + mix["replay"]["loss_tokens"])
    assert mix["replay"]["token_share"] == pytest.approx(0.2, abs=one_row)
    assert len(module.val_dataloader().dataset) == len(inputs.tasks[0].val)  # no replay in validation
    assert all(r["task_index"] == 1 for r in module.train_sets[1])

    by_rows = epoch_quotas(module.train_sets, [None], ReplaySpec(0.2, "rows", spec.replay.data, spec.replay.template))
    assert by_rows[1] == round(0.25 * by_rows[0])  # 20% of the epoch's rows
    assert mean_targets(module.train_sets[1]) > mean_targets(module.train_sets[0])


def test_replay_from_the_users_file_with_prompt_and_completion(workdir, tmp_path):
    write_jsonl(
        workdir / "data" / "mine.jsonl", [{"prompt": f"Count to {i}.", "completion": "1 2 3"} for i in range(12)]
    )
    spec = experiment_spec(workdir, replay={"share": 0.1, "of": "rows", "data": "data/mine.jsonl"})
    assert main(["run", str(spec), "--output-dir", str(tmp_path / "out")]) == 0
    run = only_child(tmp_path / "out" / "tiny")
    data = report(run)["training_data"]
    assert data["replay"]["of"] == "rows" and data["per_epoch"]["replay"]["available"] == 12
    assert "Replay: share 0.1 of rows from mine.jsonl" in (run / "report.md").read_text()
    assert "replay" not in report(run)["tasks"]  # trained on, not reported as a task


def test_replay_file_problems_are_spec_errors(workdir):
    raw = base_spec(replay={"share": 1.5, "data": "data/missing.jsonl"})
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(workdir / "spec.yaml", raw))
    assert err.value.problems == ["$.replay.share: got 1.5, expected a value < 1."]
    raw["replay"]["share"] = 0.1
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(workdir / "spec.yaml", raw))
    (problem,) = err.value.problems
    assert problem.startswith("$.replay.data: file 'data/missing.jsonl' not found (relative to ")


def test_peak_memory_restarts_for_each_run():
    # Reset first: the test process may already have peaked higher than the block below would.
    if not reset_peak_rss():
        pytest.skip("this system cannot reset the peak resident memory")
    # An anonymous mapping, not a bytearray: the allocator of a long test process may serve a
    # bytearray from its heap and keep the pages after it is freed; closing a mapping unmaps it.
    block = mmap.mmap(-1, 200 * 2**20)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    high = peak_rss_mb()
    block.close()
    assert reset_peak_rss()
    assert peak_rss_mb() < high - 150


def test_a_multi_task_variant_on_the_primary_file_shares_its_split(workdir, tmp_path):
    (workdir / "templates" / "length.jinja").write_text(
        "Review: {{ text }}\nLong?\n|||\n{{ 'yes' if text|length > 22 else 'no' }}\n"
    )
    data = {"path": "data/sentiment.jsonl", "stratify_by": "sentiment"}
    added = {"name": "length", "data": data, "template": "length.jinja", "labels": ["yes", "no"], "weight": 0.3}
    raw = base_spec()
    raw["tasks"][0]["data"] = data
    write_spec(workdir / "spec.yaml", raw)
    spec = experiment_spec(
        workdir,
        tasks=raw["tasks"],
        variants=[{"name": "single"}, {"name": "multi", "add_tasks": [added], "set": {"tasks.0.weight": 0.7}}],
    )
    assert main(["run", str(spec), "--output-dir", str(tmp_path / "out")]) == 0
    parent = only_child(tmp_path / "out" / "tiny")
    single, multi = (report(parent / "variants" / n) for n in ("single", "multi"))
    assert set(multi["tasks"]) == {"sentiment", "length"} and set(single["tasks"]) == {"sentiment"}
    split = json.loads((parent / "splits.json").read_text())["tasks"]["sentiment"]
    multi_split = json.loads((parent / "variants" / "multi" / "splits.json").read_text())["tasks"]["sentiment"]
    assert all(split[s] == multi_split[s] for s in ("train", "val", "test"))
    per_epoch = multi["training_data"]["per_epoch"]
    total = per_epoch["sentiment"]["rows"] + per_epoch["length"]["rows"]
    assert per_epoch["sentiment"]["rows"] == round(0.7 * total)
    result = json.loads((parent / "comparison.json").read_text())
    assert set(result["variants"]["multi"]["other_tasks"]) == {"length"}
    assert "Other tasks trained in a variant" in (parent / "comparison.md").read_text()
