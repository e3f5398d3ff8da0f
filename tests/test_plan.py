"""`runner plan`: the cost of a run before paying for it, from the same inputs and steps."""

from __future__ import annotations

import json

import pytest
from conftest import base_spec, write_spec

from runner.cli import main


def test_plan_counts_steps_and_estimates_time_and_memory(workdir, capsys):
    spec = base_spec()
    spec["training"] = {**spec["training"], "epochs": 3, "batch_size": 4}
    write_spec(workdir / "spec.yaml", spec)
    assert main(["plan", str(workdir / "spec.yaml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    train = plan["rows"]["sentiment"]["train"]
    assert plan["batches_per_epoch"] == -(-train // 4)
    assert plan["steps"] == 3 * plan["steps_per_epoch"]
    assert 0 < plan["trainable_params"] < plan["total_params"]
    estimate = plan["estimate_seconds"]
    for stage in ("load_model", "score_base", "train", "validate", "score_tuned"):
        assert estimate[stage] >= 0, stage
    assert estimate["train"] > 0
    assert estimate["total"] == pytest.approx(sum(v for k, v in estimate.items() if k != "total"), abs=0.01)
    assert plan["peak_rss_mb_estimate"] > 100
    assert not (workdir / "runs").exists()  # a plan writes no run folder


def test_plan_text_names_the_data_and_the_estimate(workdir, capsys):
    spec = base_spec()
    spec["training"] = {**spec["training"], "max_steps": 2}
    write_spec(workdir / "spec.yaml", spec)
    assert main(["plan", str(workdir / "spec.yaml")]) == 0
    out = capsys.readouterr().out
    assert "task sentiment" in out and "Data checks" in out  # runner preview's statistics
    assert "Training: 2 optimizer steps" in out
    assert "total" in out and "Peak memory" in out


def test_plan_of_a_bad_spec_is_a_located_error(workdir, capsys):
    spec = base_spec()
    spec["training"] = {**spec["training"], "max_time": "soon"}
    write_spec(workdir / "spec.yaml", spec)
    assert main(["plan", str(workdir / "spec.yaml")]) == 2
    assert "max_time" in capsys.readouterr().err


def test_plan_counts_base_scores_already_cached_as_free(workdir, capsys, monkeypatch, tmp_path):
    # A cache of its own: other tests of this session score the same tiny spec.
    monkeypatch.setenv("RUNNER_SCORE_CACHE", str(tmp_path / "scores"))
    write_spec(workdir / "spec.yaml", base_spec())
    assert main(["plan", str(workdir / "spec.yaml"), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["score_base_cached"] == 0
    assert main(["eval", str(workdir / "spec.yaml"), "--base"]) == 0  # stores the base scores
    capsys.readouterr()
    assert main(["plan", str(workdir / "spec.yaml"), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["score_base_cached"] == 2  # zero-shot and few-shot of the one task
    assert after["estimate_seconds"]["score_base"] == 0  # nothing left to score


def test_plan_of_an_experiment_plans_every_run_and_scores_the_base_once(workdir, capsys):
    spec = base_spec(variants=[{"name": "lora"}, {"name": "full", "set": {"method.kind": "full"}}])
    write_spec(workdir / "spec.yaml", spec)
    assert main(["plan", str(workdir / "spec.yaml"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    lora, full = result["runs"]["lora"], result["runs"]["full"]
    assert full["trainable_params"] > lora["trainable_params"]
    assert lora["estimate_seconds"]["score_base"] >= 0 and full["estimate_seconds"]["score_base"] == 0
    assert result["total_seconds"] == pytest.approx(
        lora["estimate_seconds"]["total"] + full["estimate_seconds"]["total"], abs=0.01
    )
    assert main(["plan", str(workdir / "spec.yaml")]) == 0
    out = capsys.readouterr().out
    assert "Experiment: 2 runs, one after another" in out and "  full " in out
