"""The spec loader: defaults, overrides, every problem at once with pinned messages."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
from conftest import PROJECT, SHARED_DATA, base_spec, write_spec

from runner.errors import SpecError
from runner.spec import types as spec_module
from runner.spec.load import load_spec
from runner.spec.types import Spec, schema


def problems_of(path: Path, overrides=()) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return info.value.problems


def test_valid_spec_fills_schema_defaults(workdir):
    spec = load_spec(workdir / "spec.yaml")
    assert isinstance(spec, Spec)
    task = spec.tasks[0]
    assert task.labels == ("positive", "negative")
    assert (task.split.train, task.split.val, task.split.test) == (0.7, 0.2, 0.1)
    assert task.data.path == (workdir / "data" / "sentiment.jsonl").resolve()
    assert task.data.format == "jsonl"
    assert task.template == (workdir / "templates" / "sentiment.jinja").resolve()
    assert spec.method.kind == "lora" and spec.method.settings["r"] == 16
    assert spec.method.settings["target_modules"] == "all-linear" and spec.method.settings["use_dora"] is False
    assert spec.training.early_stopping.enabled and spec.training.early_stopping.patience == 1
    assert spec.output_dir == (workdir / "runs").resolve()


def test_learning_rate_default_depends_on_method(workdir):
    raw = base_spec(training={"epochs": 1})
    write_spec(workdir / "lora.yaml", raw)
    assert load_spec(workdir / "lora.yaml").training.learning_rate == 5e-4
    raw["method"] = {"kind": "full"}
    write_spec(workdir / "full.yaml", raw)
    assert load_spec(workdir / "full.yaml").training.learning_rate == 2e-5


def test_three_planted_errors_are_all_reported(workdir):
    raw = base_spec()
    raw["training"]["lerning_rate"] = 1e-4  # unknown key
    raw["training"]["epochs"] = "three"  # wrong type
    raw["method"] = {"kind": "lorra"}  # unknown method
    problems = problems_of(write_spec(workdir / "bad.yaml", raw))
    assert problems == [
        "$.method.kind: got 'lorra', expected one of: lora, ia3, prompt_tuning, full, freeze; did you mean 'lora'?",
        "$.training.lerning_rate: unknown key 'lerning_rate'; did you mean 'learning_rate'?",
        "$.training.epochs: got 'three', expected an integer.",
    ]


def test_error_message_has_header_and_one_line_per_problem(workdir):
    raw = base_spec()
    raw["method"] = {"kind": "lora", "lora": {"r": 0}}
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(workdir / "bad.yaml", raw))
    assert str(info.value).splitlines() == [
        f"{workdir / 'bad.yaml'} is not a valid spec (1 problem):",
        "  $.method.lora.r: got 0, expected a value >= 1.",
    ]


def test_semantic_problems_name_path_and_fix(workdir):
    raw = base_spec()
    task = raw["tasks"][0]
    raw["tasks"].append(
        {
            **task,
            "data": "data/missing.jsonl",
            "template": "qa_v2.jinja",
            "split": {"train": 0.5, "val": 0.2, "test": 0.1},
        }
    )
    problems = problems_of(write_spec(workdir / "bad.yaml", raw))
    assert problems[0] == "$.tasks[1].name: 'sentiment' is used by an earlier task; give each task its own name."
    assert (
        problems[1]
        == "$.tasks[1].data: file 'data/missing.jsonl' not found (relative to " + workdir.name + "/); check the path."
    )
    assert problems[2].startswith(
        "$.tasks[1].template: 'qa_v2.jinja' not found in templates/; available: sentiment.jinja"
    )
    assert (
        problems[3] == "$.tasks[1].split: train + val + test = 0.8, expected 1; e.g. train: 0.7, val: 0.2, test: 0.1."
    )


def test_missing_required_and_data_source_shape(workdir):
    raw = base_spec()
    del raw["name"]
    raw["tasks"][0]["data"] = {"path": "data/sentiment.jsonl", "hub": "imdb"}
    problems = problems_of(write_spec(workdir / "bad.yaml", raw))
    assert problems[0].startswith("$: missing required key 'name'; Experiment name")
    assert problems[1] == "$.tasks[0].data: got 'path' and 'hub', expected exactly one of path, glob, hub."


def test_set_overrides_are_validated_like_the_file(workdir):
    spec = load_spec(
        workdir / "spec.yaml", ["training.epochs=5", "tasks.0.labels=[negative, positive]", "model.chat_template=false"]
    )
    assert spec.training.epochs == 5
    assert spec.tasks[0].labels == ("negative", "positive")
    assert spec.model.chat_template is False
    assert problems_of(workdir / "spec.yaml", ["training.epochs=0"]) == [
        "$.training.epochs: got 0, expected a value >= 1."
    ]
    assert problems_of(workdir / "spec.yaml", ["tasks.3.name=x", "epochs"]) == [
        "--set 'tasks.3.name=x': tasks.3: expected a list index from 0 to 0.",
        "--set 'epochs': expected KEY=VALUE, e.g. --set training.epochs=2.",
    ]


def test_unparseable_and_non_mapping_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert problems_of(bad)[0].startswith("cannot be parsed:")
    bad.write_text("- a\n- b\n")
    assert problems_of(bad) == ["$: got a list, expected a mapping of keys such as name, model, tasks."]
    assert problems_of(tmp_path / "nope.yaml") == ["file not found; give the path to a .yaml, .yml or .json spec."]


def test_json_specs_are_accepted(workdir):
    path = workdir / "spec.json"
    path.write_text(json.dumps(base_spec()))
    assert load_spec(path).name == "tiny"


def test_dataclasses_and_schema_stay_in_step():
    """Every schema property has a dataclass field of the same name, and the reverse."""
    props = schema()["properties"]
    defs = schema()["$defs"]
    pairs = [
        (Spec, props, {"source_path", "written", "runs", "run", "smoke"}, {"$schema"}),
        (spec_module.ReplaySpec, props["replay"]["properties"], set(), set()),
        (spec_module.VariantSpec, props["variants"]["items"]["properties"], set(), set()),
        (spec_module.CurveSpec, props["curve"]["properties"], set(), set()),
        (spec_module.ComparisonSpec, props["comparison"]["properties"], set(), set()),
        (spec_module.ModelSpec, props["model"]["properties"], set(), set()),
        (spec_module.TrainingSpec, props["training"]["properties"], set(), set()),
        (spec_module.CheckpointingSpec, props["checkpointing"]["properties"], set(), set()),
        (spec_module.EarlyStoppingSpec, props["training"]["properties"]["early_stopping"]["properties"], set(), set()),
        (spec_module.EvaluationSpec, props["evaluation"]["properties"], set(), set()),
        (spec_module.TrainerSpec, props["trainer"]["properties"], set(), set()),
        (spec_module.TaskSpec, defs["task"]["properties"], set(), set()),
        (spec_module.SplitSpec, defs["task"]["properties"]["split"]["properties"], set(), set()),
        (spec_module.DataSource, defs["data_source"]["properties"], set(), set()),
    ]
    for cls, properties, code_only, schema_only in pairs:
        fields = {f.name for f in dataclasses.fields(cls)} - code_only
        assert fields == set(properties) - schema_only, cls.__name__
    assert all(typing.get_type_hints(Spec))
    # Methods: the schema's kinds are the table's, and each settings section belongs to one.
    from runner.model.methods import METHODS

    method = props["method"]["properties"]
    assert method["kind"]["enum"] == list(METHODS)
    assert set(method) - {"kind"} <= set(METHODS)


def test_every_schema_property_is_documented():
    def walk(node, where):
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{where}.{key} has no description"
            walk(sub, f"{where}.{key}")

    walk(schema(), "$")
    for name, node in schema()["$defs"].items():
        walk(node, f"$defs.{name}")


@pytest.mark.parametrize("path", sorted((PROJECT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_validates(path):
    if "shared/data" in path.read_text() and not SHARED_DATA.is_dir():
        pytest.skip("this spec reads the public benchmark files in ../shared/data, absent here")
    spec = load_spec(path)
    assert spec.tasks


def test_benchmark_spec_names_missing_benchmark_files(tmp_path):
    """Copied where ../../shared/data does not exist, the spec fails naming every missing file."""
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "data").symlink_to(PROJECT / "experiments" / "data")
    spec = tmp_path / "experiments" / "ticket_urgency_benchmarks.yaml"
    spec.write_text((PROJECT / "experiments" / "ticket_urgency_benchmarks.yaml").read_text())
    problems = problems_of(spec)
    assert problems[0] == (
        "$.evaluation.forgetting[1].data: file '../../shared/data/arc_easy/test.jsonl' not found "
        "(relative to experiments/); check the path."
    )
    assert len(problems) == 4 and all("shared/data" in p for p in problems)
