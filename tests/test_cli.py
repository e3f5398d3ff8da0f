"""End to end through the real command line, on the random tiny model and tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT, base_spec, make_workdir, write_jsonl, write_spec

from runner.cli import main


def only_run_dir(root: Path) -> Path:
    runs = [p for p in (root / "runs" / "tiny").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def tensorboard_tags(run_dir: Path) -> set[str]:
    """Every scalar, image, text and plugin tag in the run's event files; a tag of a sub-run (one
    per rung, before/after training) is prefixed with the sub-run's name."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        run = events.parent.relative_to(run_dir / "tensorboard").as_posix()
        prefix = "" if run == "." else f"{run}:"
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "tensors": 0})
        acc.Reload()
        found = acc.Tags()
        tags |= {prefix + t for t in (*found["scalars"], *found["tensors"], *found["images"])}
        tags |= {f"plugin:{m.plugin_data.plugin_name}" for m in acc.summary_metadata.values()}
    return tags


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> tuple[Path, str]:
    """One real `runner run` on the tiny model, shared by the checks below."""
    root = make_workdir(tmp_path_factory.mktemp("cls"))
    # Room for few-shot prompts: the byte-level tiny tokenizer spends a token per character.
    write_spec(root / "spec.yaml", base_spec(model={"source": "random-tiny", "max_length": 256}))
    assert main(["run", str(root / "spec.yaml")]) == 0
    return only_run_dir(root), root


def test_run_folder_has_every_artifact(classification_run):
    run_dir, _ = classification_run
    for name in ("spec.yaml", "environment.json", "predictions.jsonl", "report.json", "report.md", "report.html"):
        assert (run_dir / name).is_file(), name
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(c.startswith("best-") for c in checkpoints)
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["seed"] == 7 and env["packages"]["torch"]


def test_report_json_contract(classification_run):
    run_dir, _ = classification_run
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "complete"
    task = report["tasks"]["sentiment"]
    assert task["kind"] == "classification"
    assert task["data"]["train"] + task["data"]["val"] + task["data"]["test"] == 40
    for rung in ("base_zero_shot", "base_few_shot", "fine_tuned"):
        metrics = task["test"][rung]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["f1_macro"] <= 1.0
        assert metrics["n"] == task["data"]["test"] == 4
        for key in ("accuracy", "f1_macro"):
            low, high = metrics["ci95"][key]
            assert low <= metrics[key] <= high
    tokens = {rung: task["test"][rung]["prompt_tokens_mean"] for rung in task["test"]}
    assert tokens["base_zero_shot"] == tokens["fine_tuned"] < tokens["base_few_shot"]
    delta = task["deltas"]["fine_tuned - base_zero_shot"]["accuracy"]
    assert delta["delta"] == pytest.approx(
        task["test"]["fine_tuned"]["accuracy"] - task["test"]["base_zero_shot"]["accuracy"], abs=1e-4
    )
    assert isinstance(delta["excludes_zero"], bool)
    training = report["training"]
    assert training["epochs_run"] == 2 and training["best_epoch"] in (0, 1)
    assert isinstance(training["stopped_early"], bool)
    assert [e["epoch"] for e in training["epochs"]] == [0, 1]
    assert all(e["train_loss"] > 0 and e["val_loss"] > 0 for e in training["epochs"])
    for label, entry in report["tasks"]["sentiment"]["test"]["fine_tuned"]["per_class"].items():
        low, high = entry["recall_ci95"]
        assert 0 <= low <= entry["recall"] <= high <= 1, label
    calibration = report["tasks"]["sentiment"]["test"]["fine_tuned"]["calibration"]
    assert 0 <= calibration["ece"] <= 1 and sum(b["count"] for b in calibration["bins"]) == len(
        [p for p in predictions_of(run_dir) if p["rung"] == "fine_tuned"]
    )
    assert (run_dir / "plots" / "calibration_sentiment.png").is_file()
    cost = report["cost"]
    assert 0 < cost["trainable_params"] < cost["total_params"]
    assert cost["train_seconds"] > 0 and cost["tokens_per_second"] > 0 and cost["peak_rss_mb"] > 0
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert {p["rung"] for p in predictions} == {
        "majority",
        "baseline_tfidf",
        "base_zero_shot",
        "base_few_shot",
        "fine_tuned",
    }
    # The majority rung answers the most frequent train label for every row.
    majority = task["test"]["majority"]
    train_counts = task["data"]["label_counts"]["train"]
    assert majority["answer"] == max(train_counts, key=train_counts.get)
    gold = [p["gold"] for p in predictions if p["rung"] == "majority"]
    assert majority["accuracy"] == pytest.approx(gold.count(majority["answer"]) / len(gold))
    assert task["test"]["base_few_shot"]["few_shot_k"] > 0
    fine = [p for p in predictions if p["rung"] == "fine_tuned"]
    assert sum(p["correct"] for p in fine) / len(fine) == pytest.approx(task["test"]["fine_tuned"]["accuracy"])


def test_tensorboard_events_hold_training_and_test_scalars(classification_run):
    run_dir, _ = classification_run
    tags = tensorboard_tags(run_dir)
    expected = {
        "train/loss",
        "val/loss",
        "val/sentiment/loss",
        "fine_tuned:test/sentiment/accuracy",
        "base_zero_shot:test/sentiment/f1_macro",
        "base_few_shot:test/sentiment/prompt_tokens_mean",
        "figures/confusion_sentiment",
        "samples/sentiment/text_summary",
        "report/0_overview/text_summary",
        "plugin:hparams",
    }
    assert expected <= tags, expected - tags
    assert not any(t.startswith("hparam/") for t in tags)  # the HParams tab points at the scalars above


def test_resume_of_a_finished_run_scores_it_again_without_training(classification_run, tmp_path):
    import shutil

    run_dir, root = classification_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = json.loads((copy / "report.json").read_text())
    assert main(["run", str(root / "spec.yaml"), "--resume", str(copy)]) == 0
    report = json.loads((copy / "report.json").read_text())
    assert report["status"] == "complete"
    assert report["training"]["global_steps"] == before["training"]["global_steps"]  # nothing left to train
    assert [e["epoch"] for e in report["training"]["epochs"]] == [0, 1]  # every epoch, from the checkpoint
    assert report["tasks"]["sentiment"]["test"]["fine_tuned"]["accuracy"] == pytest.approx(
        before["tasks"]["sentiment"]["test"]["fine_tuned"]["accuracy"]
    )


def test_generation_task_with_full_fine_tuning(workdir):
    rows = [
        {"word": f"{w}{i}", "answer": f"{w}{i}".upper()}
        for i in range(3)
        for w in ["cat", "dog", "sun", "sky", "red", "big", "hat", "cup", "pen", "box"]
    ]
    write_jsonl(workdir / "data" / "upper.jsonl", rows)
    (workdir / "templates" / "upper.jinja").write_text("Write {{ word }} in capitals. ||| {{ answer }}")
    raw = base_spec(
        method={"kind": "full"}, tasks=[{"name": "upper", "data": "data/upper.jsonl", "template": "upper.jinja"}]
    )
    raw["training"]["epochs"] = 1
    assert main(["run", str(write_spec(workdir / "spec.yaml", raw))]) == 0
    run_dir = only_run_dir(workdir)
    report = json.loads((run_dir / "report.json").read_text())
    task = report["tasks"]["upper"]
    assert task["kind"] == "generation"
    assert set(task["test"]) == {"majority", "base_zero_shot", "base_few_shot", "fine_tuned"}
    tuned = task["test"]["fine_tuned"]
    assert tuned["n"] == 3 and 0 <= tuned["exact_match"] <= tuned["token_f1"] <= 1
    assert set(tuned["ci95"]) == {"exact_match", "token_f1"}
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert all(0 <= r["token_f1"] <= 1 for r in rows if r["rung"] == "fine_tuned")
    assert "| token_f1 |" in (run_dir / "report.md").read_text()
    assert report["cost"]["trainable_params"] == report["cost"]["total_params"]
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_max_steps_smoke_run_validates_and_checkpoints(workdir):
    assert (
        main(
            [
                "run",
                str(workdir / "spec.yaml"),
                "--set",
                "training.max_steps=2",
                "--set",
                "evaluation.baselines=[fine_tuned]",
            ]
        )
        == 0
    )
    report = json.loads((only_run_dir(workdir) / "report.json").read_text())
    assert report["training"]["global_steps"] == 2
    assert report["training"]["best_val_loss"] is not None
    assert "base_zero_shot" not in report["tasks"]["sentiment"]["test"]


def test_bad_data_stops_before_training_with_exit_2(workdir, capsys):
    write_jsonl(workdir / "data" / "sentiment.jsonl", [{"text": "fine", "sentiment": "meh"}] * 20)
    assert main(["run", str(workdir / "spec.yaml")]) == 2
    err = capsys.readouterr().err
    assert "rows 1, 2, 3, 4, 5 and 15 more: completion 'meh' is not one of the task's labels" in err
    assert not (workdir / "runs").exists()  # stopped before a run folder was made


def test_bad_spec_exits_2_naming_every_problem_without_traceback(tmp_path):
    spec = (PROJECT / "experiments" / "ticket_urgency.yaml").read_text()
    spec = spec.replace("  epochs: 3", "  epochs: three\n  lerning_rate: 0.1").replace("kind: lora", "kind: qlora")
    bad = tmp_path / "experiments" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(spec)
    (tmp_path / "experiments" / "data").symlink_to(PROJECT / "experiments" / "data")
    proc = subprocess.run([sys.executable, "-m", "runner", "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "(3 problems)" in proc.stderr
    assert (
        "$.method.kind: got 'qlora', expected one of: lora, ia3, prompt_tuning, full, freeze; did you mean 'lora'?"
        in proc.stderr
    )
    assert "$.training.lerning_rate: unknown key 'lerning_rate'; did you mean 'learning_rate'?" in proc.stderr
    assert "$.training.epochs: got 'three', expected an integer." in proc.stderr


def test_validate_prints_the_resolved_spec_and_schema_prints_json(workdir, capsys):
    assert main(["validate", str(workdir / "spec.yaml")]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "learning_rate: 0.001" in out and "patience: 1" in out
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "runner experiment"


def test_report_html_is_self_contained_with_embedded_plots(classification_run):
    import base64
    import re

    run_dir, _ = classification_run
    page = (run_dir / "report.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', page)
    alts = {alt for _, alt in images}
    assert {
        "training and validation loss per epoch",
        "sentiment: metric per rung with token cost",
        "sentiment: confusion matrix of the fine-tuned model",
    } <= alts
    for data, _ in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page  # nothing fetched when opened offline
    markdown = (run_dir / "report.md").read_text()
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown):
        assert (run_dir / link).is_file()


def test_eval_base_and_checkpoint_then_compare(classification_run, tmp_path, capsys):
    run_dir, root = classification_run
    spec = str(root / "spec.yaml")
    assert main(["eval", spec, "--base", "--output-dir", str(tmp_path / "evals")]) == 0
    assert main(["eval", spec, "--checkpoint", str(run_dir / "model"), "--output-dir", str(tmp_path / "evals")]) == 0
    evals = sorted((tmp_path / "evals" / "tiny").iterdir())
    base_only = json.loads((evals[0] / "report.json").read_text())
    assert set(base_only["tasks"]["sentiment"]["test"]) == {
        "majority",
        "baseline_tfidf",
        "base_zero_shot",
        "base_few_shot",
    }
    with_ckpt = json.loads((evals[1] / "report.json").read_text())
    trained = json.loads((run_dir / "report.json").read_text())
    # Scoring the exported adapter reproduces the run's own fine-tuned numbers.
    assert (
        with_ckpt["tasks"]["sentiment"]["test"]["fine_tuned"]["accuracy"]
        == trained["tasks"]["sentiment"]["test"]["fine_tuned"]["accuracy"]
    )
    capsys.readouterr()
    assert main(["compare", str(run_dir), str(evals[1]), "--output", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert run_dir.name in table and evals[1].name in table
    assert "fine-tuned: accuracy" in table and "trainable parameters" in table
    assert (tmp_path / "cmp" / "compare.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["compare", str(tmp_path / "nope")]) == 2


def test_ddp_on_two_cpu_processes_writes_one_run_folder(workdir):
    """Lightning's own DDP strategy (gloo on CPU): ranks share one run folder; rank 0 reports."""
    raw = base_spec(trainer={"accelerator": "cpu", "devices": 2, "strategy": "ddp", "precision": "32-true"})
    raw["evaluation"]["baselines"] = ["fine_tuned"]
    spec = write_spec(workdir / "ddp.yaml", raw)
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(spec)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("Report:") == 1
    report = json.loads((only_run_dir(workdir) / "report.json").read_text())
    assert report["status"] == "complete" and report["training"]["epochs_run"] == 2


def test_resume_from_a_damaged_checkpoint_is_a_clear_error(classification_run, tmp_path, capsys):
    import shutil

    run_dir, root = classification_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    assert main(["run", str(root / "spec.yaml"), "--resume", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "checkpoints/last.ckpt cannot be read as a checkpoint" in err and "Traceback" not in err
    assert json.loads((copy / "report.json").read_text())["status"] == "complete"  # the earlier report is kept


def predictions_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_resume_with_another_number_of_ranks_is_refused(classification_run, tmp_path, capsys):
    """A checkpoint's data position is per rank: a run trained on 2 ranks does not continue on 1."""
    import shutil

    import torch

    run_dir, root = classification_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    last = copy / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    state["runner"]["world_size"] = 2  # as a two-rank DDP run saves it
    torch.save(state, last)
    assert main(["run", str(root / "spec.yaml"), "--resume", str(copy)]) == 1
    assert "this run trained on 2 rank(s), and this resume has 1" in capsys.readouterr().err


def test_runner_bounds_the_cpu_kernel_caches_unless_the_user_set_them(monkeypatch, capsys):
    # oneDNN and ideep keep one compiled kernel per matmul shape, 1,024 of each by default: bounded
    # by runner before any matmul (tests/benchmarks/kernel_caches.py measures the growth).
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["type"] == "object"
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "128"
    assert os.environ["LRU_CACHE_CAPACITY"] == "7"
