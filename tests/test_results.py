"""Typed results (runner/results.py) and report.json's contract (schemas/report.schema.json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import REPORTS_CHECKED, base_spec, make_workdir, report_problems, write_spec

from runner.cli import main
from runner.results import ProbeResult, RungResult, RunResult, to_json


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    """One real tiny run with forgetting probes (one- and two-model), its report.json as written."""
    root = make_workdir(tmp_path_factory.mktemp("results"))
    (root / "general.txt").write_text("The cat sat on the mat. A dog ran in the park. " * 20)
    spec = base_spec(training={"epochs": 1, "batch_size": 4})
    spec["evaluation"] = {
        "baselines": ["majority", "base_zero_shot", "fine_tuned"],
        "bootstrap_samples": 20,
        "forgetting": [
            {"name": "text_perplexity", "kind": "perplexity", "data": "general.txt", "max_tokens": 256},
            {"name": "text_drift", "kind": "drift", "data": "general.txt", "max_tokens": 256},
        ],
    }
    write_spec(root / "spec.yaml", spec)
    assert main(["run", str(root / "spec.yaml"), "--output-dir", str(root / "runs")]) == 0
    (path,) = (root / "runs").rglob("report.json")
    return json.loads(path.read_text())


def test_a_written_report_reads_back_to_the_same_json(finished: dict) -> None:
    result = RunResult.from_json(finished)
    assert result.to_json() == finished
    assert result.status == "complete" and result.tasks["sentiment"].test["fine_tuned"].n == 4
    assert result.forgetting["text_drift"].two_model and not result.forgetting["text_perplexity"].two_model


def test_every_report_written_in_the_tests_was_checked_against_the_schema(finished: dict) -> None:
    assert any(path.parent.name == Path(finished["run_dir"]).name for path in REPORTS_CHECKED)
    assert report_problems(finished) == []


def test_the_schema_refuses_an_unknown_metric_and_a_missing_section(finished: dict) -> None:
    broken = copy.deepcopy(finished)
    broken["tasks"]["sentiment"]["test"]["fine_tuned"]["acuracy"] = 0.5
    del broken["cost"]
    broken["forgetting"]["text_perplexity"].pop("before")
    problems = report_problems(broken)
    assert "$.: 'cost' is a required property" in problems
    assert (
        "$.tasks.sentiment.test.fine_tuned: Additional properties are not allowed ('acuracy' was unexpected)"
        in problems
    )
    assert [p.split(":")[0] for p in problems if "text_perplexity" in p] == ["$.forgetting.text_perplexity"]
    assert len(problems) == 3


def test_a_metric_the_result_does_not_know_is_refused_when_scored() -> None:
    with pytest.raises(ValueError, match="acuracy"):
        RungResult.from_json({"accuracy": 0.5, "acuracy": 0.5, "n": 4}, strict=True)
    assert RungResult.from_json({"accuracy": 0.5, "acuracy": 0.5, "n": 4}).accuracy == 0.5  # an old report: read


def test_an_older_report_reads_with_defaults() -> None:
    old = {"name": "x", "status": "complete", "tasks": {"t": {"kind": "generation", "data": {}, "test": {}}}}
    result = RunResult.from_json(old)
    assert result.primary_task == "t" and result.training is None and result.cost.train_seconds is None


def test_a_one_model_probe_keeps_a_null_retention_and_a_two_model_probe_has_one_value() -> None:
    paired = ProbeResult("perplexity", "perplexity", 1.0, 0.0, -1.0, None, False, {}, {})
    assert to_json(paired)["retention"] is None
    assert to_json(ProbeResult("drift", "kl_per_token", value=0.1, tokens=9)) == {
        "kind": "drift",
        "metric": "kl_per_token",
        "value": 0.1,
        "tokens": 9,
    }
