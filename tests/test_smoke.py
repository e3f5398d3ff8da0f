"""`runner run --smoke`: the spec's own data and templates through the whole road, quickly."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import PROJECT, base_spec, make_workdir, write_spec

from runner.cli import main
from runner.spec.load import load_spec
from runner.spec.smoke import SMOKE_ROWS, SMOKE_STEPS, SMOKE_TEST_ROWS, smoke_spec


def test_smoke_keeps_the_spec_and_changes_only_what_makes_a_run_long() -> None:
    spec = load_spec(PROJECT / "experiments" / "ticket_urgency.yaml", smoke=True)
    plain = load_spec(PROJECT / "experiments" / "ticket_urgency.yaml")
    assert spec.name == "ticket_urgency-smoke"
    assert spec.model.source == "random-tiny" and spec.model.tokenizer == plain.model.source
    assert spec.model.max_length == plain.model.max_length and spec.tasks[0].template == plain.tasks[0].template
    assert spec.method == plain.method and spec.training.learning_rate == plain.training.learning_rate
    assert spec.training.max_steps == SMOKE_STEPS and spec.evaluation.test_rows == SMOKE_TEST_ROWS
    assert "base_few_shot" not in spec.evaluation.baselines and spec.evaluation.forgetting == ()
    assert spec.tasks[0].max_rows == SMOKE_ROWS
    assert any("few-shot" in s for s in spec.smoke) and any("forgetting" in s for s in spec.smoke)


def test_smoke_of_an_experiment_fits_every_variant() -> None:
    raw = yaml.safe_load((PROJECT / "experiments" / "ticket_urgency_methods.yaml").read_text())
    raw["variants"][0].setdefault("set", {})["training.max_steps"] = 500
    smoked, _ = smoke_spec(raw)
    assert all("training.max_steps" not in v.get("set", {}) for v in smoked["variants"])
    assert smoked["method"]["freeze"]["blocks"] <= 2  # the tiny model's blocks
    spec = load_spec(PROJECT / "experiments" / "ticket_urgency_compare.yaml", smoke=True)
    assert all(run.training.max_steps == SMOKE_STEPS for run in spec.runs)
    assert {t.max_rows for run in spec.runs for t in run.tasks} == {SMOKE_ROWS}  # added tasks too
    assert any(
        "--only" in s for s in load_spec(PROJECT / "experiments" / "ticket_urgency_methods.yaml", smoke=True).smoke
    )


def test_a_smoke_run_goes_through_the_whole_road_with_the_users_overrides(tmp_path: Path, capsys) -> None:
    root = make_workdir(tmp_path)
    spec = write_spec(root / "spec.yaml", base_spec())
    assert main(["run", str(spec), "--smoke", "--set", "training.learning_rate=0.01"]) == 0
    err = capsys.readouterr().err
    assert "Smoke run tiny-smoke: leaves out" in err and "training after 4 optimizer steps" in err
    (run_dir,) = (root / "runs" / "tiny-smoke").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "complete" and report["training"]["global_steps"] <= SMOKE_STEPS
    assert all(r["n"] <= SMOKE_TEST_ROWS for r in report["tasks"]["sentiment"]["test"].values())
    assert yaml.safe_load((run_dir / "spec.yaml").read_text())["training"]["learning_rate"] == 0.01


def test_random_tiny_is_sized_to_the_tokenizer_it_is_given(tmp_path: Path) -> None:
    from runner.model.load import load_model
    from runner.model.tiny import byte_tokenizer, random_tiny_config

    folder = tmp_path / "tok"
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(37)])  # a vocabulary random-tiny does not have
    tokenizer.save_pretrained(folder)
    random_tiny_config(tokenizer).save_pretrained(folder)
    model, loaded = load_model("random-tiny", seed=0, tokenizer_source=str(folder))
    assert len(loaded) == len(tokenizer) == len(byte_tokenizer()) + 37
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
