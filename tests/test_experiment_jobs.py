"""An experiment's runs as separate jobs into one experiment folder (`runner run SPEC --run-dir
EXP`): the first job writes the header, each claims its runs, the last writes the comparison, and
the result is the comparison one process would have written."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import base_spec, make_workdir, sentiment_rows, write_jsonl, write_spec

from runner.cli import main
from runner.flows.experiment import finish_experiment, selected_runs
from runner.rundir.experiment import claim_run, read_document, release_run, write_state
from runner.spec.load import load_spec

# What legitimately differs between two jobs running side by side and one process running both
# runs, and why; every other value (accuracy, CIs, deltas, verdicts, parameters) must be equal.
DIFFERS = {
    "folder",  # the experiment folder's path: two folders
    "train_seconds",  # wall time: two jobs share the CPU cores, one process has them alone
    "tokens_per_second",  # follows from train_seconds
    "ms_per_example",  # inference latency, timed like train_seconds
    "peak_rss_mb",  # one process holds both runs' allocations; each job only its own
}
# The recommendation sentence quotes measured training time when it names a cheaper variant.
TIME_PHRASE = re.compile(r",? in \d+% of the training time")


def without_measurements(value):
    """The value with the DIFFERS keys dropped at every depth and times cut from sentences."""
    if isinstance(value, dict):
        return {k: without_measurements(v) for k, v in value.items() if k not in DIFFERS}
    if isinstance(value, list):
        return [without_measurements(v) for v in value]
    if isinstance(value, str):
        return TIME_PHRASE.sub("", value)
    return value


def jobs_spec(root: Path) -> Path:
    """Two variants that differ in LoRA rank and learning rate. Different ranks give different
    trainable parameters, so the recommendation never falls back to comparing training times,
    which depend on how the jobs shared the machine."""
    write_jsonl(root / "data" / "sentiment.jsonl", sentiment_rows(100))
    raw = base_spec()
    raw["training"] = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_steps": 2}
    raw["evaluation"].update({"baselines": ["majority", "base_zero_shot", "fine_tuned"], "bootstrap_samples": 100})
    raw["variants"] = [
        {"name": "a"},
        {"name": "b", "set": {"method.lora.r": 2, "training.learning_rate": 5e-3}},
    ]
    return write_spec(root / "jobs.yaml", raw)


def job(spec: Path, *args: str) -> subprocess.Popen:
    # The user's score cache off: the two jobs share base scores only through the experiment's
    # base_scores/ folder, which both may write at the same moment.
    env = {**os.environ, "RUNNER_NO_CACHE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(spec), *args],
        cwd=spec.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finished(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory) -> dict:
    """Two jobs started together into one shared folder (one picks its run by name, the other by
    index), and one process running both runs into another folder: all three at once."""
    root = make_workdir(tmp_path_factory.mktemp("jobs"))
    spec = jobs_spec(root)
    shared = root / "shared-exp"
    procs = {
        "a": job(spec, "--run-dir", str(shared), "--only", "a"),
        "b": job(spec, "--run-dir", str(shared), "--run-index", "1"),
        "one": job(spec, "--output-dir", str(root / "one")),
    }
    errs = {name: finished(proc) for name, proc in procs.items()}
    (alone,) = (root / "one" / "tiny").iterdir()
    return {"root": root, "spec": spec, "shared": shared, "alone": alone, "errs": errs}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_two_jobs_write_the_comparison_one_process_writes(two_jobs):
    shared, alone = two_jobs["shared"], two_jobs["alone"]
    # One header, by whichever job came first; the other joined it.
    messages = two_jobs["errs"]["a"] + two_jobs["errs"]["b"]
    assert messages.count("Created experiment") == 1 and messages.count("Joined experiment") == 1
    assert "[1/1] b" in two_jobs["errs"]["b"]  # --run-index 1 is run b
    assert read(shared / "experiment.json") == {"runs": {"a": "complete", "b": "complete"}, "claims": {}}
    assert read(shared / "splits.json") == read(alone / "splits.json")
    for name in ("a", "b"):
        report, same = (read(folder / "variants" / name / "report.json") for folder in (shared, alone))
        assert report["status"] == "complete"
        # The same training as in one process: the same seeds and rows give the same losses.
        assert report["training"]["epochs"] == same["training"]["epochs"]
    # Both jobs scored the base model at once into base_scores/: one whole entry, no leftovers.
    entries = [p.name for p in (shared / "base_scores").iterdir()]
    assert len(entries) == 1 and entries[0].endswith(".json")

    together, apart = read(alone / "comparison.json"), read(shared / "comparison.json")
    assert without_measurements(apart) == without_measurements(together)
    assert apart["variants"]["a"]["cost"]["trainable_params"] != apart["variants"]["b"]["cost"]["trainable_params"]
    assert apart["incomplete"] == {} and "delta_ci95" in apart["variants"]["b" if apart["best"] == "a" else "a"]
    assert (shared / "comparison.md").is_file() and (shared / "comparison.html").is_file()


def test_a_job_whose_runs_are_complete_keeps_them_and_writes_the_comparison(two_jobs, capsys):
    shared = two_jobs["shared"]
    before = read(shared / "variants" / "a" / "report.json")["finished_at"]
    args = ["run", str(two_jobs["spec"]), "--run-dir", str(shared), "--only", "a"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "[1/1] a: complete already, kept." in err and "which approach?" in out
    assert read(shared / "variants" / "a" / "report.json")["finished_at"] == before


def test_run_index_out_of_range_lists_the_runs(two_jobs, capsys):
    spec = two_jobs["spec"]
    assert [r.run.name for r in selected_runs(load_spec(spec), ["a"], [1])] == ["a", "b"]
    assert main(["run", str(spec), "--run-dir", str(two_jobs["root"] / "x"), "--run-index", "2"]) == 1
    err = capsys.readouterr().err
    assert "--run-index 2: out of range; tiny has 2 runs, numbered 0 to 1" in err
    assert "  0  a\n  1  b" in err
    assert not (two_jobs["root"] / "x").exists()  # refused before any folder
    write_spec(two_jobs["root"] / "single.yaml", base_spec())
    assert main(["run", str(two_jobs["root"] / "single.yaml"), "--run-index", "0"]) == 1
    assert "pick runs of an experiment" in capsys.readouterr().err


def test_a_different_spec_is_refused_by_an_existing_experiment_folder(two_jobs, capsys):
    shared = two_jobs["shared"]
    args = ["run", str(two_jobs["spec"]), "--run-dir", str(shared), "--only", "a"]
    assert main([*args, "--set", "training.learning_rate=0.01"]) == 1
    err = capsys.readouterr().err
    assert f"--run-dir {shared}: holds a different experiment" in err
    assert "differs from its spec.yaml in training," in err
    assert read(shared / "experiment.json")["runs"] == {"a": "complete", "b": "complete"}
    # A folder that holds something else is not made into an experiment.
    (two_jobs["root"] / "other").mkdir()
    (two_jobs["root"] / "other" / "notes.txt").write_text("mine")
    assert main(["run", str(two_jobs["spec"]), "--run-dir", str(two_jobs["root"] / "other")]) == 2
    assert "not empty and not an experiment folder" in capsys.readouterr().err


def test_compare_and_the_last_job_say_which_runs_are_missing(two_jobs, tmp_path, capsys):
    spec = load_spec(two_jobs["spec"])
    copy = tmp_path / "exp"
    shutil.copytree(two_jobs["shared"], copy)
    shutil.rmtree(copy / "variants" / "b")
    write_state(copy, {"a": "complete", "b": "pending"}, {})
    # A job that finished its runs while others are not done leaves the comparison to the last.
    (copy / "comparison.json").unlink()
    assert finish_experiment(copy, spec, shared=True) is False
    err = capsys.readouterr().err
    assert "Not complete yet: b (pending)." in err and f"runner compare {copy}" in err
    assert not (copy / "comparison.json").exists()
    # `runner compare` writes what there is and names what is missing.
    assert main(["compare", str(copy)]) == 0
    assert "**Not complete:** b (pending)." in capsys.readouterr().out
    assert read(copy / "comparison.json")["incomplete"] == {"b": "pending"}


# --- claims: a run is trained by one job at a time -------------------------------------------------


def claimed_folder(tmp_path: Path, claim: dict) -> Path:
    (tmp_path / "variants").mkdir()
    write_state(tmp_path, {"a": "running"}, {"a": claim})
    return tmp_path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_claimed_by_a_live_job_here_is_skipped(tmp_path):
    here = socket.gethostname()
    parent = claimed_folder(tmp_path, {"host": here, "pid": os.getppid(), "since": "then"})
    assert "being trained by pid" in claim_run(parent, "a", reclaim=False)
    assert read_document(parent)["claims"]["a"]["pid"] == os.getppid()


def test_a_run_claimed_by_a_job_that_is_gone_is_claimed_again(tmp_path, capsys):
    parent = claimed_folder(tmp_path, {"host": socket.gethostname(), "pid": dead_pid(), "since": "then"})
    assert claim_run(parent, "a", reclaim=False) is None
    assert "is gone; training it again" in capsys.readouterr().err
    claim = read_document(parent)["claims"]["a"]
    assert claim["pid"] == os.getpid() and claim["host"] == socket.gethostname()
    release_run(parent, "a", "failed")
    assert read_document(parent) == {"runs": {"a": "failed"}, "claims": {}}


def test_another_machines_claim_is_trusted_unless_reclaimed(tmp_path):
    parent = claimed_folder(tmp_path, {"host": "node-elsewhere", "pid": 1, "since": "then"})
    why = claim_run(parent, "a", reclaim=False)
    assert "another machine" in why and "--reclaim" in why
    assert claim_run(parent, "a", reclaim=True) is None
    assert read_document(parent)["claims"]["a"]["host"] == socket.gethostname()
