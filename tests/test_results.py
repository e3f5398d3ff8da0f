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


def number_paths(value, prefix: str = "") -> set[str]:
    """Where a JSON document holds a number: dotted keys, `[]` for any list item."""
    if isinstance(value, dict):
        return set().union(set(), *(number_paths(v, f"{prefix}.{k}") for k, v in value.items()))
    if isinstance(value, list):
        return set().union(set(), *(number_paths(v, f"{prefix}[]") for v in value))
    return {prefix} if isinstance(value, (int, float)) and not isinstance(value, bool) else set()


# Numbers whose presence depends on what an earlier test left in the session's score cache: a
# base rung read from the cache has no scoring time of this run.
VOLATILE = ("score_base_cached", "_shot.seconds", "_shot.ms_per_example")
GOLDEN = json.loads((Path(__file__).parent / "golden" / "numbers.json").read_text())


def missing_numbers(golden: list[str], written: dict) -> list[str]:
    """The golden paths a written document no longer has a number at."""
    have = number_paths(written)
    return [p for p in golden if p not in have and not any(v in p for v in VOLATILE)]


def test_report_json_still_carries_every_number_it_carried(finished: dict) -> None:
    # tests/golden/numbers.json: every number report.json and comparison.json held before the
    # report was reworked for people (the same specs, the code of c4a1f7e); rounding is allowed,
    # losing a number is not.
    assert missing_numbers(GOLDEN["report"], finished) == []
    floats = [v for v in _numbers(finished) if isinstance(v, float)]
    assert floats and all(v == float(f"{v:.6g}") for v in floats)  # measurements rounded, not 0.013000000268…


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def test_comparison_json_still_carries_every_number_it_carried(tmp_path: Path) -> None:
    from test_experiment import experiment_spec

    workdir = make_workdir(tmp_path)
    variants = [{"name": "lora", "description": "LoRA"}, {"name": "lora-r2", "set": {"method.lora.r": 2}}]
    variants[1]["set"]["training.learning_rate"] = 5e-3
    spec = experiment_spec(workdir, variants=variants)
    assert main(["run", str(spec), "--output-dir", str(tmp_path / "out")]) == 0
    (parent,) = (tmp_path / "out" / "tiny").iterdir()
    assert missing_numbers(GOLDEN["comparison"], json.loads((parent / "comparison.json").read_text())) == []
    run_report = json.loads((parent / "variants" / "lora" / "report.json").read_text())
    assert missing_numbers(GOLDEN["variant_report"], run_report) == []
