"""`runner compare RUN RUN ...`: paired deltas, a verdict, compare.json and the chart for separate
runs that share test rows; runs on other rows, or with damaged predictions, are said so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import base_spec, make_workdir, write_jsonl, write_spec

from runner.cli import main
from runner.report import run_comparison
from runner.report import uncertainty as stats
from runner.report.run_comparison import run_labels
from runner.results import RunResult

# 60 rows, a quarter of them test rows: 15 test rows, enough to resample, small enough to run fast.
SPLIT = {"train": 0.6, "val": 0.15, "test": 0.25}
SAMPLES, SEED = 300, 7


def one_run(root: Path, name: str, learning_rate: float, seed: int = SEED, training_seed: int | None = None) -> Path:
    """A real `runner run` of the tiny model; its run folder."""
    spec = base_spec(name=name, seed=seed, output_dir=str(root / "runs"))
    spec["tasks"][0]["split"] = SPLIT
    spec["training"] = {"epochs": 1, "batch_size": 8, "learning_rate": learning_rate}
    if training_seed is not None:
        spec["training"]["seed"] = training_seed
    spec["evaluation"].update({"baselines": ["majority", "base_zero_shot", "fine_tuned"], "bootstrap_samples": SAMPLES})
    assert main(["run", str(write_spec(root / f"{name}.yaml", spec))]) == 0
    (folder,) = (root / "runs" / name).iterdir()
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs on the same rows (other learning rate and training seed) and one on another split."""
    root = make_workdir(tmp_path_factory.mktemp("compare"), rows=60)
    return {
        "slow": one_run(root, "slow", 1e-3),
        "fast": one_run(root, "fast", 3e-2, training_seed=3),
        "other": one_run(root, "other-split", 1e-3, seed=8),  # `seed` draws the split: other test rows
    }


def compare(tmp_path: Path, *folders: Path) -> tuple[dict, str, Path]:
    """`runner compare` of the folders: compare.json, compare.md and the output folder."""
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, folders), "--output", str(out)]) == 0
    return json.loads((out / "compare.json").read_text()), (out / "compare.md").read_text(), out


def fine_tuned_rows(folder: Path) -> dict[int, tuple[str, float]]:
    """Test row -> (gold, correct) of the fine-tuned model, read straight from predictions.jsonl."""
    records = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return {r["row"]: (r["gold"], float(r["correct"])) for r in records if r["rung"] == "fine_tuned"}


def test_paired_runs_get_a_delta_with_its_interval_and_a_verdict(runs, tmp_path):
    result, markdown, _ = compare(tmp_path, runs["slow"], runs["fast"])
    task = result["tasks"]["sentiment"]
    test_rows = json.loads((runs["slow"] / "report.json").read_text())["tasks"]["sentiment"]["data"]["test"]
    assert task["paired"] == ["slow", "fast"] and task["test_rows"] == test_rows and not task["not_paired"]
    other = next(label for label in task["paired"] if label != task["best"])
    entry = task["runs"][other]
    low, high = entry["delta_ci95"]
    assert low <= entry["delta_to_best"] <= high
    verdict = task["recommendation"]
    assert verdict["verdicts"][other] in ("non-inferior", "worse", "undecided")
    assert verdict["sentence"].startswith(("Use ", "Inconclusive")) and task["best"] in verdict["sentence"]
    assert "variant" not in verdict["sentence"]  # runs are called runs
    assert f"**Verdict.** {verdict['sentence']}" in markdown
    assert (
        "Δ to best, points (95% CI)" in markdown and f"Paired on the {test_rows} test rows slow, fast share" in markdown
    )


def better_copy(source: Path, target: Path, fixed: int) -> Path:
    """A copy of a run whose fine-tuned model got `fixed` more test rows right (report.json's
    accuracy to match): the tiny model's runs all answer alike, and a delta of zero tests little."""
    copy_run(source, target)
    records = [json.loads(line) for line in (target / "predictions.jsonl").read_text().splitlines()]
    wrong = [r for r in records if r["rung"] == "fine_tuned" and not r["correct"]][:fixed]
    for r in wrong:
        r.update(prediction=r["gold"], correct=True)
    write_jsonl(target / "predictions.jsonl", records)
    report = json.loads((target / "report.json").read_text())
    outcomes = [r["correct"] for r in records if r["rung"] == "fine_tuned"]
    report["name"] = "better"
    report["tasks"]["sentiment"]["test"]["fine_tuned"]["accuracy"] = round(sum(outcomes) / len(outcomes), 4)
    (target / "report.json").write_text(json.dumps(report))
    return target


def test_compare_json_holds_what_predictions_jsonl_gives(runs, tmp_path):
    better = better_copy(runs["slow"], tmp_path / "better", fixed=4)
    result, markdown, _ = compare(tmp_path, runs["slow"], runs["fast"], better)
    settings = result["settings"]
    assert (settings["bootstrap_samples"], settings["seed"]) == (SAMPLES, SEED)  # from the runs' spec.yaml
    assert settings["margin"] == 0.02 and settings["margin_from"] == "the schema's default"
    outcomes = {
        label: fine_tuned_rows(folder)
        for label, folder in (("slow", runs["slow"]), ("fast", runs["fast"]), ("better", better))
    }
    rows = sorted(outcomes["slow"])
    correct = {label: torch.tensor([o[r][1] for r in rows]) for label, o in outcomes.items()}
    idx = stats.resample_indices(len(rows), SAMPLES, SEED)
    drawn = {label: stats.accuracy_samples(c, idx) for label, c in correct.items()}
    task = result["tasks"]["sentiment"]
    assert task["best"] == "better" and task["paired"] == ["slow", "fast", "better"]
    verdicts = {}
    for label in ("slow", "fast", "better"):
        entry = task["runs"][label]
        assert entry["accuracy"] == round(float(correct[label].mean()), 4)
        assert entry["ci95"] == stats.interval(drawn[label]) and entry["ci_from"] == "paired bootstrap"
        assert f"| {label} | {entry['accuracy']:.3f} | {entry['ci95'][0]:.2f}..{entry['ci95'][1]:.2f} |" in markdown
        if label == "better":
            continue
        assert entry["delta_to_best"] == round(float(correct[label].mean() - correct["better"].mean()), 4) < 0
        assert entry["delta_ci95"] == stats.interval(drawn[label] - drawn["better"])
        low, high = entry["delta_ci95"]
        verdicts[label] = "non-inferior" if low > -0.02 else "worse" if high < 0 else "undecided"
    assert task["recommendation"]["verdicts"] == verdicts
    # The side-by-side numbers come from each report.json, and compare.json holds them too.
    report = json.loads((runs["slow"] / "report.json").read_text())
    rung = report["tasks"]["sentiment"]["test"]["majority"]
    assert result["runs"][0]["tests"]["sentiment"]["majority"]["accuracy"] == rung["accuracy"]
    assert result["runs"][0]["cost"]["trainable_params"] == report["cost"]["trainable_params"]


def test_a_run_on_other_test_rows_is_not_paired_and_says_so(runs, tmp_path):
    result, markdown, _ = compare(tmp_path, runs["slow"], runs["other"])
    task = result["tasks"]["sentiment"]
    assert task["paired"] == [] and "delta_ci95" not in task["runs"]["other-split"]
    assert task["recommendation"]["verdict"] == "not paired"
    assert task["recommendation"]["sentence"].startswith("No verdict: no two runs could be paired on this task")
    assert "other test rows than" in task["not_paired"]["other-split"]
    own = json.loads((runs["other"] / "report.json").read_text())["tasks"]["sentiment"]["test"]["fine_tuned"]
    entry = task["runs"]["other-split"]
    assert (entry["accuracy"], entry["ci95"], entry["ci_from"]) == (
        own["accuracy"],
        own["ci95"]["accuracy"],
        "report.json",
    )
    assert "**Not paired:** slow: it was scored on other test rows than other-split" in markdown
    assert "(own)" in markdown and "not paired" in markdown


def copy_run(source: Path, target: Path) -> Path:
    """The files compare reads (report, spec, predictions), without checkpoints and model."""
    target.mkdir(parents=True)
    for name in ("report.json", "spec.yaml", "predictions.jsonl"):
        shutil.copy(source / name, target / name)
    return target


def test_same_row_numbers_with_other_gold_answers_are_not_paired(runs, tmp_path):
    relabelled = copy_run(runs["fast"], tmp_path / "relabelled")
    lines = (relabelled / "predictions.jsonl").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if json.loads(line)["rung"] == "fine_tuned")
    record = json.loads(lines[index])
    record["gold"] = "neutral"  # the score stays the same: only the pairing can notice
    lines[index] = json.dumps(record)
    (relabelled / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    result, _, _ = compare(tmp_path, runs["slow"], relabelled)
    task = result["tasks"]["sentiment"]
    assert task["paired"] == []
    assert "the gold answer differs on 1 of them" in task["not_paired"]["fast"]


def test_unusable_predictions_are_reported_not_tracebacked(runs, tmp_path, capsys):
    damaged = copy_run(runs["fast"], tmp_path / "damaged")
    lines = (damaged / "predictions.jsonl").read_text().splitlines(keepends=True)
    lines[2] = '{"task": "sentiment", "rung": "fine_tun\n'  # cut off mid-record
    lines[4] = "[1, 2]\n"
    (damaged / "predictions.jsonl").write_text("".join(lines))
    missing = copy_run(runs["fast"], tmp_path / "missing")
    (missing / "predictions.jsonl").unlink()
    oversized = copy_run(runs["fast"], tmp_path / "oversized")
    with open(oversized / "predictions.jsonl", "ab") as f:
        f.truncate(run_comparison.PREDICTIONS_MAX_BYTES + 1)  # sparse: costs no disk
    failed = copy_run(runs["fast"], tmp_path / "failed")
    report = json.loads((failed / "report.json").read_text())
    (failed / "report.json").write_text(json.dumps({**report, "status": "failed"}))
    result, markdown, out = compare(tmp_path, runs["slow"], runs["fast"], damaged, missing, oversized, failed)
    task = result["tasks"]["sentiment"]
    assert task["paired"] == ["slow", f"fast ({runs['fast'].name})"]  # the others still pair
    reasons = task["not_paired"]
    assert set(reasons) == {"fast (damaged)", "fast (missing)", "fast (oversized)", "fast (failed)"}
    assert (
        "line 3: not valid JSON" in reasons["fast (damaged)"]
        and "line 5: not a JSON object" in reasons["fast (damaged)"]
    )
    assert "no predictions.jsonl" in reasons["fast (missing)"]
    assert f"over the {run_comparison.PREDICTIONS_MAX_BYTES:,} that compare reads" in reasons["fast (oversized)"]
    assert "says `failed`, not complete" in reasons["fast (failed)"]
    for label, reason in reasons.items():
        assert f"{label}: {reason}" in markdown
    assert "Traceback" not in capsys.readouterr().err


def test_a_line_past_the_bound_stops_the_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(run_comparison, "LINE_MAX_BYTES", 64)
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({"task": "t", "rung": "fine_tuned", "row": 0, "gold": "x" * 100, "correct": True}))
    rows: dict = {}
    assert run_comparison._read_lines(path, rows, {"t": 1}) == ["line 1 is longer than 64 bytes or the file grew"]
    assert rows == {}


def test_the_chart_is_a_png_beside_compare_md_and_inside_compare_html(runs, tmp_path):
    _, markdown, out = compare(tmp_path, runs["slow"], runs["fast"], runs["other"])
    png = (out / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
    assert "![fine-tuned test score per run with its 95% CI, per task](compare.png)" in markdown
    html = (out / "compare.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 1


def test_labels_are_short_and_unique():
    def report(name: str, variant: str | None = None) -> RunResult:
        return RunResult(
            name=name, mode="train", run_dir="", primary_task="t", model={}, variant=variant and {"variant": variant}
        )

    reports = [report("tiny"), report("tiny"), report("exp", "lora"), report("tiny")]
    folders = [Path("a/1"), Path("b/2"), Path("c/lora"), Path("d/1")]
    assert run_labels(reports, folders) == ["tiny (1) #1", "tiny (2)", "lora", "tiny (1) #2"]


def crafted_run(folder: Path, report: dict, predictions: str) -> Path:
    """A run folder with only a report.json and a predictions.jsonl, as anyone could write them."""
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "predictions.jsonl").write_text(predictions)
    return folder


def test_a_report_with_fields_of_the_wrong_kind_is_compared_without_a_traceback(tmp_path):
    record = {"task": "t", "rung": "fine_tuned", "row": 1, "gold": "a", "correct": True}
    good = {
        "name": "good",
        "status": "complete",
        "tasks": {"t": {"kind": "classification", "data": {}, "test": {"fine_tuned": {"accuracy": 1.0, "n": 1}}}},
    }
    odd = {
        "name": "odd",
        "status": "complete",
        "variant": "not a mapping",
        "tasks": {
            "t": {
                "kind": "classification",
                "data": {},
                "test": {"fine_tuned": {"accuracy": 0.5, "n": "one", "ci95": {"accuracy": [0.9, 0.1]}}},
            }
        },
    }
    a = crafted_run(tmp_path / "a", good, json.dumps(record) + "\n")
    b = crafted_run(tmp_path / "b", odd, json.dumps(record) + "\n")
    result, markdown, out = compare(tmp_path, a, b)
    task = result["tasks"]["t"]
    assert task["paired"] == [] and "report.json says one" in task["not_paired"]["odd"]
    assert task["runs"]["odd"]["ci95"] == [0.9, 0.1] and (out / "compare.png").is_file()


def test_a_folder_whose_report_is_not_a_report_is_named_with_the_others(tmp_path, capsys):
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "report.json").write_text("[1, 2]")
    assert main(["compare", str(tmp_path / "list"), str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "report.json: not a run report (AttributeError)" in err and "none: no report.json" in err
