"""Scale-out on Lightning's strategies under any launcher: ranks started all at once by
torchrun agree on one run folder without asking rank 0, and none waits on rank 0's scoring."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import base_spec, write_spec

from runner.cli import main

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.is_file() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_two_cpu_processes_share_one_run_folder(workdir):
    raw = base_spec(trainer={"accelerator": "cpu", "devices": 2, "strategy": "ddp", "precision": "32-true"})
    raw["evaluation"]["baselines"] = ["base_zero_shot", "fine_tuned"]
    spec = write_spec(workdir / "ddp.yaml", raw)
    command = [str(TORCHRUN) if TORCHRUN.is_file() else "torchrun", "--standalone", "--nproc_per_node", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("RUNNER_RUN_DIR", "RUNNER_RUN_ID", "SLURM_JOB_ID")}
    proc = subprocess.run(
        [*command, "-m", "runner", "run", str(spec)], cwd=workdir, capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (run_dir,) = (workdir / "runs" / "tiny").iterdir()  # one folder for both ranks
    assert run_dir.name.startswith("run-")  # named by torchrun's run id
    assert proc.stdout.count("Report:") == 1  # rank 0 reports
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "complete" and report["training"]["epochs_run"] == 2
    # Rank 0 scored the base model after training, not while rank 1 waited for the process group.
    assert set(report["tasks"]["sentiment"]["test"]) == {"base_zero_shot", "fine_tuned"}


def test_a_rank_that_cannot_name_the_run_folder_says_how(workdir, monkeypatch, capsys):
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    for name in ("RUNNER_RUN_DIR", "RUNNER_RUN_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert main(["run", str(workdir / "spec.yaml")]) == 1
    assert "pass --run-dir DIR (the same on every rank)" in capsys.readouterr().err
    assert not (workdir / "runs").exists()


def test_under_an_external_launcher_rank_0_scores_the_base_model_after_training(workdir, monkeypatch):
    """torchrun/srun start every rank at once: the others wait in the process group's setup
    while rank 0 works, so rank 0 must reach training without scoring the base model first."""
    import runner.flows.run

    monkeypatch.setenv("WORLD_SIZE", "2")  # as a launcher sets it; this process stays rank 0
    monkeypatch.setenv("RUNNER_RUN_ID", "ordering")
    monkeypatch.delenv("RUNNER_RUN_DIR", raising=False)
    seen = {}
    real_fit = runner.training.trainer.fit

    def fit(module, datamodule, spec, run_dir, resume_from=None):
        report = json.loads((run_dir / "report.json").read_text())
        seen["rungs_before_training"] = set(report["tasks"]["sentiment"].get("test", {}))
        monkeypatch.setenv("WORLD_SIZE", "1")  # train alone: no second process exists here
        return real_fit(module, datamodule, spec, run_dir, resume_from)

    monkeypatch.setattr(runner.flows.run, "fit", fit)
    raw = base_spec()
    raw["training"]["epochs"] = 1
    raw["evaluation"]["baselines"] = ["majority", "base_zero_shot", "fine_tuned"]
    assert main(["run", str(write_spec(workdir / "spec.yaml", raw))]) == 0
    assert seen["rungs_before_training"] <= {"majority"}  # no model scoring before training
    run_dir = workdir / "runs" / "tiny" / "run-ordering"  # named by the launcher's run id
    report = json.loads((run_dir / "report.json").read_text())
    assert {"base_zero_shot", "fine_tuned"} <= set(report["tasks"]["sentiment"]["test"])
