"""DDP that does not hang: ranks that split their batches into different numbers of
micro-batches (by their own token counts) still synchronise gradients once per optimizer step,
and end with the weights of one process training on the same global batches; a rank that never
reaches a collective turns into an error, not a hang."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import base_spec, write_jsonl, write_spec

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(
    not TORCHRUN.is_file() and shutil.which("torchrun") is None, reason="torchrun not installed"
)
PER_RANK_BATCH = 4
LEARNING_RATE = 1e-2
MAX_BATCH_TOKENS = 200  # four short rows fit in one micro-batch; a long row among them splits the batch


def varied_rows(n: int = 96) -> list[dict]:
    """Reviews from a few words to a few hundred characters: batches of them pad to very
    different sizes, so max_batch_tokens cuts them into different numbers of micro-batches."""
    rng = random.Random(3)
    words = ["good", "bad", "slow", "fast", "broken", "lovely", "awful", "fine"]
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.choice([1, 1, 1, 2, 20])))
        rows.append({"text": f"{i} {text}", "sentiment": "positive" if i % 2 else "negative"})
    return rows


def ddp_spec(workdir: Path, name: str, devices: int, accumulation: int) -> Path:
    write_jsonl(workdir / "data" / "sentiment.jsonl", varied_rows())
    raw = base_spec(name=name)
    raw["model"]["max_length"] = 256
    raw["method"] = {"kind": "lora", "lora": {"dropout": 0.0}}  # no randomness that differs per rank
    raw["training"] = {
        "epochs": 1,
        "max_steps": 3,
        "batch_size": PER_RANK_BATCH * (2 // devices),  # the same global batch in both runs
        "learning_rate": LEARNING_RATE,
        "gradient_accumulation": accumulation,
        "max_batch_tokens": MAX_BATCH_TOKENS,
        "group_by_length": False,  # the order must not depend on the batch size
        "early_stopping": {"enabled": False},
    }
    raw["checkpointing"] = {"every_n_steps": 1, "every_n_minutes": None}
    raw["evaluation"]["baselines"] = ["majority", "fine_tuned"]
    raw["evaluation"]["bootstrap_samples"] = 10
    raw["trainer"] = {"accelerator": "cpu", "devices": devices, "precision": "32-true"}
    if devices > 1:
        raw["trainer"]["strategy"] = "ddp"
    return write_spec(workdir / f"{name}.yaml", raw)


def clean_env() -> dict:
    drop = ("RUNNER_RUN_DIR", "RUNNER_RUN_ID", "SLURM_JOB_ID", "WORLD_SIZE", "RANK", "LOCAL_RANK")
    return {k: v for k, v in os.environ.items() if k not in drop}


def torchrun(spec: Path, workdir: Path) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN) if TORCHRUN.is_file() else "torchrun", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*command, "-m", "runner", "run", str(spec)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
    )


def trained_weights(run_root: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = run_root.glob("*/checkpoints/last.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    return {k: v for k, v in state["state_dict"].items() if "lora_" in k}


def micro_batch_counts(spec: Path) -> list[list[int]]:
    """Per rank, the micro-batches of each training batch, as DDP sees them: Lightning's own
    DistributedSamplerWrapper over runner's sampler, runner's collate and split."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from runner.preflight import preflight
    from runner.spec.load import load_spec
    from runner.training.module import micro_batches
    from runner.training.setup import make_datamodule

    loaded = load_spec(spec)
    (inputs,) = preflight(loaded, with_probes=False, enforce_checks=False)
    loader = make_datamodule(inputs, loaded).train_dataloader()
    counts = []
    for rank in range(2):
        sampler = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=rank, shuffle=False)
        order = list(sampler)
        rows = [loader.dataset[i] for i in order]
        batches = [rows[i : i + PER_RANK_BATCH] for i in range(0, len(rows), PER_RANK_BATCH)]
        counts.append([len(micro_batches(loader.collate_fn(b), MAX_BATCH_TOKENS)) for b in batches[:6]])
    return counts


@pytest.mark.parametrize("accumulation", [1, 2])
def test_ranks_with_uneven_micro_batches_train_like_one_process(workdir: Path, accumulation: int) -> None:
    ddp = ddp_spec(workdir, f"ddp{accumulation}", devices=2, accumulation=accumulation)
    counts = micro_batch_counts(ddp)
    steps = 3 * accumulation
    assert counts[0][:steps] != counts[1][:steps], f"the ranks split alike {counts}: the test shows nothing"
    proc = torchrun(ddp, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = ddp_spec(workdir, f"one{accumulation}", devices=1, accumulation=accumulation)
    from runner.cli import main

    assert main(["run", str(single)]) == 0
    # What a sync that went wrong would look like: one process on one rank's share of each batch.
    half = ddp_spec(workdir, f"half{accumulation}", devices=2, accumulation=accumulation)
    raw = yaml.safe_load(half.read_text())
    raw["trainer"] = {**raw["trainer"], "devices": 1, "strategy": "auto"}
    assert main(["run", str(write_spec(half, raw))]) == 0
    runs = workdir / "runs"
    a, b, c = (trained_weights(runs / f"{n}{accumulation}") for n in ("ddp", "one", "half"))
    assert a.keys() == b.keys() and a
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    wrong = max(float((c[k] - b[k]).abs().max()) for k in c)
    # Adam divides each gradient by its own root mean square, so float rounding in a sum taken
    # in another order shows in components with near-zero gradients: equal "within float
    # tolerance" is within 1% of one step's size (lr), while one rank's gradient alone is off by
    # about a whole step.
    assert worst < 1e-2 * LEARNING_RATE, f"DDP and one process differ by {worst}"
    assert wrong > 10 * worst and wrong > 0.1 * LEARNING_RATE, (wrong, worst)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def test_a_rank_that_never_arrives_fails_the_run_within_the_timeout(workdir: Path) -> None:
    """Rank 1 is stopped (SIGSTOP) mid-training: rank 0 waits in the next collective for at most
    trainer.collective_timeout, then the run fails with a message naming the step, the report
    says failed, and the exit code is 1."""
    spec = ddp_spec(workdir, "hang", devices=2, accumulation=1)
    raw = yaml.safe_load(spec.read_text())
    raw["training"]["max_steps"] = 500
    raw["training"]["epochs"] = 50
    raw["trainer"]["collective_timeout"] = 0.25  # 15 s
    write_spec(spec, raw)
    # Output to a file, not a pipe: the stopped rank holds the pipe open, and a reader would wait on it.
    log = workdir / "hang.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", str(spec)], cwd=workdir, stdout=out, stderr=out, env=clean_env()
        )
    rank1 = None
    try:
        deadline = time.monotonic() + 180
        while not list((workdir / "runs" / "hang").glob("*/checkpoints/last.ckpt")):  # training is under way
            assert proc.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.5)
        (rank1,) = children(proc.pid)  # Lightning's launcher started rank 1 as a child of rank 0
        os.kill(rank1, signal.SIGSTOP)
        stopped_at = time.monotonic()
        proc.wait(timeout=120)
        waited = time.monotonic() - stopped_at
    finally:
        # Rank 1 is no longer rank 0's child once rank 0 exits: killed by its own pid, or the
        # stopped process would outlive the test holding half a gigabyte.
        for pid in children(proc.pid) + [proc.pid] + ([rank1] if rank1 is not None else []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    err = log.read_text()
    assert proc.returncode == 1, err[-3000:]
    assert "waited more than trainer.collective_timeout (0.25 min) for the other ranks at step" in err
    assert "--resume" in err and "Traceback" not in err
    assert waited < 15 + 45  # the timeout, plus Lightning's teardown and the report
    (run_dir,) = (workdir / "runs" / "hang").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "failed" and "collective_timeout" in report["error"]
