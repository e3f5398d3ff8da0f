"""A run folder's spec.yaml is itself a valid spec that re-runs the run: for every shipped spec,
a tiny run's spec.yaml loads to the run's resolved spec, field by field (the built-in forgetting
suite by name, max_time in the unit it was given), and gives the same splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT, SHARED_DATA

from runner.cli import main
from runner.spec.load import load_spec
from runner.spec.messages import schema_problems
from runner.spec.written import to_jsonable

SHIPPED = sorted((PROJECT / "experiments").glob("*.yaml"))
# A tiny run of any shipped spec: the random model, one step, a few scored rows. The forgetting
# suite stays as shipped (it must come back by name) and max_time is set in minutes here and as
# a clock time for the demo, so that both units come back as given.
TINY = [
    "--set", "model.source=random-tiny",
    "--set", "training.max_steps=1",
    "--set", "evaluation.baselines=[majority, fine_tuned]",
    "--set", "evaluation.bootstrap_samples=10",
]  # fmt: skip


def comparable(spec) -> dict:
    """The resolved spec minus what names where it was read from."""
    out = to_jsonable(spec)
    for key in ("source_path", "run"):
        out.pop(key, None)
    return out


def run_folder(output: Path) -> Path:
    reports = sorted(output.rglob("report.json"))
    assert reports, f"no run under {output}"
    return reports[0].parent


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_run_folder_spec_reruns_the_run(path: Path, tmp_path: Path) -> None:
    if "shared/data" in path.read_text() and not SHARED_DATA.is_dir():
        pytest.skip("this spec reads the public benchmark files in ../shared/data, absent here")
    max_time = "00:30:00" if path.name == "ticket_urgency.yaml" else "30"
    overrides = [*TINY, "--set", f"training.max_time={max_time}"]
    spec = load_spec(path, overrides[1::2])
    if spec.is_experiment:  # its first run alone, in the experiment's folder
        overrides += ["--only", spec.runs[0].run.name]
        spec = spec.runs[0]
    assert main(["run", str(path), *overrides, "--output-dir", str(tmp_path / "runs")]) == 0
    folder = run_folder(tmp_path / "runs")
    written = yaml.safe_load((folder / "spec.yaml").read_text())
    assert schema_problems(written) == []
    assert written["training"]["max_time"] == (max_time if ":" in max_time else int(max_time))
    assert "general" in written["evaluation"]["forgetting"]
    again = load_spec(folder / "spec.yaml")
    assert comparable(again) == comparable(spec)
    # A rerun from it is the same run: the same splits.json, and the same spec.yaml again.
    assert main(["run", str(folder / "spec.yaml"), "--output-dir", str(tmp_path / "again")]) == 0
    rerun = run_folder(tmp_path / "again")
    assert json.loads((rerun / "splits.json").read_text()) == json.loads((folder / "splits.json").read_text())
    assert yaml.safe_load((rerun / "spec.yaml").read_text()) == written


@pytest.mark.parametrize("name", ["ticket_urgency.yaml", "ticket_urgency_compare.yaml"])
def test_validate_prints_a_spec_that_loads_to_the_same_run(name: str, tmp_path: Path, capsys) -> None:
    """What `runner validate` prints is itself a valid spec, resolving to the same spec."""
    path = PROJECT / "experiments" / name
    assert main(["validate", str(path), *TINY]) == 0
    printed = capsys.readouterr().out
    written = yaml.safe_load(printed)
    assert schema_problems(written) == []
    (tmp_path / "printed.yaml").write_text(printed)
    again, spec = load_spec(tmp_path / "printed.yaml"), load_spec(path, TINY[1::2])
    # Variants hold their add_tasks as written (the paths absolute now): compared as the runs they make.
    assert {**comparable(again), "variants": None} == {**comparable(spec), "variants": None}
    assert [comparable(r) for r in again.runs] == [comparable(r) for r in spec.runs]
    assert [r.run for r in again.runs] == [r.run for r in spec.runs]
