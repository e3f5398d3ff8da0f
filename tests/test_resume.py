"""Runs that survive: a signal mid-training saves a checkpoint and says how to continue; a run
killed mid-epoch continues exactly where its last checkpoint was; --resume refuses a spec that
would change the training; a loss that turns NaN stops cleanly.

Real processes, real signals, the tiny model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT, base_spec, sentiment_rows, write_jsonl, write_spec

from runner.cli import main


def loads_strict(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def long_spec(workdir: Path, rows: int = 600, epochs: int = 2, **training) -> Path:
    write_jsonl(workdir / "data" / "many.jsonl", sentiment_rows(rows))
    raw = base_spec()
    raw["tasks"][0]["data"] = "data/many.jsonl"
    raw["training"].update(epochs=epochs, early_stopping={"enabled": False}, **training)
    raw["evaluation"]["baselines"] = ["majority", "base_zero_shot", "fine_tuned"]
    raw["checkpointing"] = {"every_n_steps": 5, "every_n_minutes": None}
    return write_spec(workdir / "long.yaml", raw)


def start(spec: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(spec)],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(proc: subprocess.Popen, runs: Path, timeout: float = 90) -> Path:
    """The run folder, once its first mid-epoch checkpoint exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(runs.glob("*/*/checkpoints/last.ckpt"))
        if found:
            return found[0].parent.parent
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no checkpoint appeared; stderr: {proc.communicate()[1][-2000:]}")


def test_sigint_mid_training_checkpoints_and_resume_covers_every_epoch(workdir):
    spec = long_spec(workdir, epochs=3)
    proc = start(spec)
    run_dir = wait_for_checkpoint(proc, workdir / "runs")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "stopping after this training step" in err
    # The resume command names the run folder's own spec.yaml: every override the run had is in it.
    assert f"runner run {run_dir / 'spec.yaml'} --resume {run_dir}" in err
    report = loads_strict((run_dir / "report.json").read_text())
    assert report["status"] == "interrupted" and f"--resume {run_dir}" in report["error"]
    scored_before = report["cost"]["score_base_seconds"]
    assert (run_dir / "report.md").is_file() and (run_dir / "report.html").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    from runner.flows.runs import runs_table

    line = next(line for line in runs_table(workdir / "runs").splitlines() if "interrupted" in line)
    assert f"runner run {run_dir / 'spec.yaml'} --resume {run_dir}" in line

    assert main(["run", str(spec), "--resume", str(run_dir)]) == 0
    report = loads_strict((run_dir / "report.json").read_text())
    assert report["status"] == "complete"
    assert [e["epoch"] for e in report["training"]["epochs"]] == [0, 1, 2]
    assert all("train_loss" in e and "val_loss" in e for e in report["training"]["epochs"])
    assert report["training"]["resumed_from_step"] > 0
    # The base model was scored before the stop and is not scored again; the report keeps what
    # scoring took before the stop, not only the reload's seconds.
    assert any(n.startswith("Resumed run: ") and "base_zero_shot" in n for n in report["notes"])
    assert report["cost"]["before_resume"]["score_base_seconds"] == round(scored_before, 1)
    assert "before the resume" in (run_dir / "report.md").read_text()


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    from conftest import make_workdir

    def tuned_scores(run_dir: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
        return [r["label_logprobs"] for r in rows if r["rung"] == "fine_tuned"]

    (tmp_path / "straight").mkdir()
    (tmp_path / "killed").mkdir()
    straight = make_workdir(tmp_path / "straight")
    assert main(["run", str(long_spec(straight))]) == 0
    (expected_dir,) = (straight / "runs" / "tiny").iterdir()

    killed = make_workdir(tmp_path / "killed")
    spec = long_spec(killed)
    proc = start(spec)
    run_dir = wait_for_checkpoint(proc, killed / "runs")
    proc.kill()  # SIGKILL: no handler runs, the last periodic checkpoint is all there is
    proc.wait()
    from runner.flows.runs import runs_table

    table = runs_table(killed / "runs")  # the report still says running; its process is gone
    assert "stopped" in table and f"--resume {run_dir}" in table
    import torch

    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    batches_per_epoch = -(-420 // 8)  # 70% of 600 rows, batch 8
    assert state["global_step"] % batches_per_epoch != 0, "the kill was meant to land mid-epoch"

    assert main(["run", str(spec), "--resume", str(run_dir)]) == 0
    got, expected = tuned_scores(run_dir), tuned_scores(expected_dir)
    assert len(got) == len(expected) > 0
    for mine, theirs in zip(got, expected):
        for label in theirs:
            assert mine[label] == pytest.approx(theirs[label], abs=1e-4)
    history = json.loads((run_dir / "report.json").read_text())["training"]["epochs"]
    reference = json.loads((expected_dir / "report.json").read_text())["training"]["epochs"]
    assert [round(e["val_loss"], 5) for e in history] == [round(e["val_loss"], 5) for e in reference]


def test_resume_refuses_settings_that_change_training_and_allows_evaluation_ones(workdir, capsys):
    raw = base_spec()
    raw["training"]["epochs"] = 1
    spec = write_spec(workdir / "spec.yaml", raw)
    assert main(["run", str(spec)]) == 0
    (run_dir,) = (workdir / "runs" / "tiny").iterdir()
    capsys.readouterr()
    args = ["run", str(spec), "--resume", str(run_dir)]
    assert main([*args, "--set", "training.learning_rate=0.5", "--set", "method.lora.r=4"]) == 2
    err = capsys.readouterr().err
    assert "training.learning_rate: 0.001 in the run, 0.5 now" in err and "method.lora.r: 16 in the run, 4 now" in err
    assert "Traceback" not in err

    write_jsonl(workdir / "data" / "sentiment.jsonl", sentiment_rows(41))  # one more row: other splits
    assert main(args) == 2
    assert "tasks.0 (sentiment): its rows as the model sees them" in capsys.readouterr().err
    write_jsonl(workdir / "data" / "sentiment.jsonl", sentiment_rows(40))

    assert main([*args, "--set", "evaluation.bootstrap_samples=100"]) == 0
    assert "evaluation.bootstrap_samples: 200 in the run, 100 now (allowed: does not change training)" in (
        capsys.readouterr().err
    )


def test_a_loss_that_turns_nan_stops_training_with_a_clear_message(workdir, capsys):
    raw = base_spec()
    raw["training"].update(learning_rate=1e30, gradient_clip=None, epochs=2)
    raw["checkpointing"] = {"every_n_steps": 1, "every_n_minutes": None}
    assert main(["run", str(write_spec(workdir / "spec.yaml", raw))]) == 1
    err = capsys.readouterr().err
    assert "training stopped: the loss became nan" in err and "Traceback" not in err
    (run_dir,) = (workdir / "runs" / "tiny").iterdir()
    report = loads_strict((run_dir / "report.json").read_text())  # no NaN written as JSON
    assert report["status"] == "failed" and "loss became nan" in report["error"]
    assert (run_dir / "report.md").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_a_setting_added_since_the_run_started_is_its_default_not_a_change(tmp_path: Path) -> None:
    """A run folder from before `training.objective` existed resumes: the setting's default is
    what that run did. A real change beside it is still refused."""
    import yaml

    from runner.rundir.folder import resume_problems
    from runner.spec.load import load_spec
    from runner.spec.written import written_spec

    spec = load_spec(Path(__file__).resolve().parent.parent / "experiments" / "ticket_urgency.yaml")
    old = json.loads(json.dumps(written_spec(spec), default=str))
    del old["training"]["objective"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(old))
    assert resume_problems(tmp_path, spec, {}) == ([], [])
    old["training"]["epochs"] = spec.training.epochs + 1
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(old))
    problems, _ = resume_problems(tmp_path, spec, {})
    assert problems == [f"training.epochs: {spec.training.epochs + 1} in the run, {spec.training.epochs} now"]
