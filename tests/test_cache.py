"""The score cache: base-model results scored once and reused, through the real CLI on the tiny model."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import base_spec, make_workdir, write_jsonl, write_spec
from transformers import LlamaModel

import runner.flows.evaluate
import runner.flows.run
from runner.cli import main
from runner.evaluation import cache

BASE_RUNGS = ("base_zero_shot", "base_few_shot")
PROBES = ("mc", "ppl", "gen")


@pytest.fixture(autouse=True)
def scores(tmp_path: Path, monkeypatch) -> Path:
    """A score cache of this test alone, switched on whatever the caller's environment says."""
    folder = tmp_path / "scores"
    monkeypatch.setenv(cache.FOLDER_ENV, str(folder))
    monkeypatch.delenv(cache.NO_CACHE_ENV, raising=False)
    return folder


def write_probes(workdir: Path) -> list[dict]:
    write_jsonl(
        workdir / "data" / "mc.jsonl",
        [
            {"q": "Which is a colour?", "options": ["red", "seven", "run"], "key": 0},
            {"q": "Which one flies?", "options": ["stone", "fish", "bird"], "key": 2},
        ],
    )
    (workdir / "templates" / "mc.jinja").write_text("Q: {{ q }}\nA: ||| {{ options[key] }}")
    write_jsonl(workdir / "data" / "gen.jsonl", [{"ask": "Say yes.", "answer": "yes"}])
    (workdir / "templates" / "gen.jinja").write_text("{{ ask }} ||| {{ answer }}")
    (workdir / "data" / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 8)
    return [
        {
            "name": "mc",
            "kind": "multiple_choice",
            "data": "data/mc.jsonl",
            "template": "mc.jinja",
            "choices": "options",
        },
        {"name": "ppl", "kind": "perplexity", "data": "data/prose.txt", "max_tokens": 200},
        {"name": "gen", "kind": "generation", "data": "data/gen.jsonl", "template": "gen.jinja"},
        {"name": "drift", "kind": "drift", "data": "data/prose.txt", "max_tokens": 100},
    ]


def spec_file(
    workdir: Path, name: str = "spec.yaml", probes: bool = False, max_length: int = 256, seed: int = 7, **evaluation
) -> str:
    # max_length 256: room for few-shot prompts (the tiny tokenizer spends a token per character)
    raw = base_spec(seed=seed, model={"source": "random-tiny", "max_length": max_length})
    raw["evaluation"].update(evaluation)
    if probes:
        raw["evaluation"]["forgetting"] = write_probes(workdir)
    return str(write_spec(workdir / name, raw))


def eval_base(spec: str, out: Path) -> tuple[dict, Path]:
    """`runner eval SPEC --base` into its own folder; its report and run folder."""
    assert main(["eval", spec, "--base", "--output-dir", str(out)]) == 0
    (run_dir,) = (out / "tiny").iterdir()
    return json.loads((run_dir / "report.json").read_text()), run_dir


def cached_units(report: dict) -> dict[str, str]:
    """Unit -> fingerprint of every base result the report says came from the cache."""
    units = {rung: m["cached"] for rung, m in report["tasks"]["sentiment"]["test"].items() if "cached" in m}
    for name, before in report.get("probes_base", {}).items():
        if "cached" in before:
            units[f"probe {name}"] = before["cached"]
    return units


TIMINGS = ("seconds", "ms_per_example")  # measured when a rung is scored, absent from a cache hit


def without(metrics: dict, key: str = "cached") -> dict:
    return {k: v for k, v in metrics.items() if k != key and k not in TIMINGS}


class ModelCalls:
    """Counts forward passes of the tiny model's decoder: every way of scoring runs it."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        original = LlamaModel.forward

        def forward(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(LlamaModel, "forward", forward)


def timed_score_base(monkeypatch) -> list[float]:
    seconds = []
    original = runner.evaluation.scoring.score_base

    def score_base(*args, **kwargs):
        started = time.perf_counter()
        original(*args, **kwargs)
        seconds.append(time.perf_counter() - started)

    monkeypatch.setattr(runner.flows.run, "score_base", score_base)
    monkeypatch.setattr(runner.flows.evaluate, "score_base", score_base)
    return seconds


def test_second_eval_reuses_every_base_result(workdir, tmp_path, scores, monkeypatch):
    spec = spec_file(workdir, probes=True)
    seconds = timed_score_base(monkeypatch)
    calls = ModelCalls(monkeypatch)
    first, first_dir = eval_base(spec, tmp_path / "first")
    assert cached_units(first) == {} and first["cost"]["score_base_cached"] == 0
    assert len(list(scores.glob("*.json"))) == len(BASE_RUNGS) + len(PROBES)  # majority is not cached
    assert calls.count > 0

    calls.count = 0
    second, second_dir = eval_base(spec, tmp_path / "second")
    assert calls.count == 0  # the model ran no forward pass
    assert seconds[1] < seconds[0]
    units = cached_units(second)
    assert set(units) == {*BASE_RUNGS, *(f"probe {p}" for p in PROBES)}
    assert all(re.fullmatch(r"[0-9a-f]{16}", key) for key in units.values())
    assert {p.stem for p in scores.glob("*.json")} == set(units.values())
    assert second["cost"]["score_base_cached"] == len(units)

    # The same numbers, intervals and per-row predictions as the fresh computation.
    for rung, metrics in first["tasks"]["sentiment"]["test"].items():
        assert without(second["tasks"]["sentiment"]["test"][rung]) == without(metrics), rung
    assert second["tasks"]["sentiment"].get("deltas") == first["tasks"]["sentiment"].get("deltas")
    for name, before in first["probes_base"].items():
        assert without(second["probes_base"][name]) == before, name
    predictions = [(d / "predictions.jsonl").read_text().splitlines() for d in (first_dir, second_dir)]
    assert (
        predictions[0] == predictions[1] and len(predictions[0]) == 4 * first["tasks"]["sentiment"]["data"]["test"]
    )  # majority, tfidf, zero-, few-shot

    markdown = (second_dir / "report.md").read_text()
    assert "base model, zero-shot (cached)" in markdown and "base model, few-shot (k = " in markdown
    assert "Base scores reused from cache" in markdown and units["base_zero_shot"] in markdown
    assert "(cached)" not in (first_dir / "report.md").read_text()
    assert "(cached)" in (second_dir / "report.html").read_text()


def test_training_run_reuses_the_base_scores_of_an_eval(workdir, tmp_path):
    spec = spec_file(workdir, probes=True)
    eval_base(spec, tmp_path / "eval")
    assert main(["run", spec, "--set", "training.max_steps=2", "--output-dir", str(tmp_path / "run")]) == 0
    (run_dir,) = (tmp_path / "run" / "tiny").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    tests = report["tasks"]["sentiment"]["test"]
    assert all("cached" in tests[rung] for rung in BASE_RUNGS) and "cached" not in tests["fine_tuned"]
    assert all("cached" in report["forgetting"][p]["details_before"] for p in PROBES)
    assert "cached" not in report["forgetting"]["mc"]["details_after"]
    assert "delta_ci95" in report["forgetting"]["mc"]  # the cached per-item scores, paired with the tuned ones
    assert report["cost"]["score_base_cached"] == len(BASE_RUNGS) + len(PROBES)
    assert "score_base_seconds" in report["cost"] and "train_seconds" in report["cost"]
    markdown = (run_dir / "report.md").read_text()
    assert re.search(r"\| mc \| acc \| [0-9.]+ \(chance 0\.33\) \(cached\) \|", markdown)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """A score cache holding the base rungs of the plain spec, scored once for this module in a
    folder of its own: entries hold no paths, so they serve every test's copy of the same data."""
    root = make_workdir(tmp_path_factory.mktemp("baseline"))
    folder = root / "scores"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cache.FOLDER_ENV, str(folder))
        patch.delenv(cache.NO_CACHE_ENV, raising=False)
        report, _ = eval_base(spec_file(root), root / "out")
    assert cached_units(report) == {} and len(list(folder.glob("*.json"))) == len(BASE_RUNGS)
    return folder


@pytest.fixture
def warm(baseline: Path, scores: Path) -> Path:
    """This test's score cache, holding the baseline's entries."""
    shutil.copytree(baseline, scores)
    return scores


def change_template(workdir: Path) -> str:
    template = workdir / "templates" / "sentiment.jinja"
    template.write_text("Customer review: {{ text }}\nSentiment:\n|||\n{{ sentiment }}\n")
    return spec_file(workdir)


def change_row(workdir: Path) -> str:
    path = workdir / "data" / "sentiment.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    write_jsonl(path, [{**r, "text": r["text"].replace("product", "item")} for r in rows])
    return spec_file(workdir)


@pytest.mark.parametrize(
    ("change", "still_cached"),
    [
        (lambda workdir: spec_file(workdir, bootstrap_samples=50, sample_predictions=2), set(BASE_RUNGS)),
        (change_template, set()),
        (change_row, set()),
        (lambda workdir: spec_file(workdir, few_shot_k=2), {"base_zero_shot"}),
        (lambda workdir: spec_file(workdir, batch_size=4), set()),
        (lambda workdir: spec_file(workdir, max_length=200), set()),
        (lambda workdir: spec_file(workdir, seed=8), set()),
    ],
    ids=["nothing that matters", "template", "data row", "few_shot_k", "batch_size", "max_length", "seed"],
)
def test_only_a_change_that_matters_is_a_miss(workdir, tmp_path, warm, change, still_cached):
    report, _ = eval_base(change(workdir), tmp_path / "out")
    assert set(cached_units(report)) == still_cached


def test_a_change_to_scoring_code_is_a_miss(workdir, tmp_path, warm, monkeypatch):
    monkeypatch.setattr(cache, "code_digest", lambda: "an edited evaluation.py")
    report, _ = eval_base(spec_file(workdir), tmp_path / "out")
    assert cached_units(report) == {}


def test_an_edit_under_the_evaluation_package_is_a_miss_and_one_under_report_is_not(
    workdir, tmp_path, warm, monkeypatch
):
    """The fingerprint reads the scoring code in every package (not a flat folder): a faithful copy
    of runner/ hits, a comment added to evaluation/rungs.py misses, one in report/ still hits."""
    copy = tmp_path / "runner"
    shutil.copytree(cache.RUNNER_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "RUNNER_DIR", copy)
    spec = spec_file(workdir)
    assert set(cached_units(eval_base(spec, tmp_path / "copy")[0])) == set(BASE_RUNGS)
    (copy / "report" / "document.py").write_text((copy / "report" / "document.py").read_text() + "\n# edited\n")
    assert set(cached_units(eval_base(spec, tmp_path / "report")[0])) == set(BASE_RUNGS)
    (copy / "evaluation" / "rungs.py").write_text((copy / "evaluation" / "rungs.py").read_text() + "\n# edited\n")
    assert cached_units(eval_base(spec, tmp_path / "evaluation")[0]) == {}


def test_a_corrupt_cache_file_is_a_miss_and_is_replaced(workdir, tmp_path, warm):
    spec = spec_file(workdir)
    damages = [b'{"fingerprint": "abc", "value"', b"\xff\xfe not utf-8", b'{"fingerprint": null, "value": [1]}']
    for i, damage in enumerate(damages):
        for path in warm.glob("*.json"):
            path.write_bytes(damage)
        report, _ = eval_base(spec, tmp_path / f"damaged{i}")
        assert cached_units(report) == {}, damage
    report, _ = eval_base(spec, tmp_path / "after")  # the misses stored good entries again
    assert set(cached_units(report)) == set(BASE_RUNGS)


def test_a_cached_rung_with_the_wrong_shape_is_a_miss(workdir, tmp_path, warm):
    for path in warm.glob("*.json"):
        entry = json.loads(path.read_text())
        entry["value"]["records"] = entry["value"]["records"][:1]  # fewer rows than the test split
        path.write_text(json.dumps(entry))
    report, _ = eval_base(spec_file(workdir), tmp_path / "out")
    assert cached_units(report) == {}


def test_cache_off_by_spec(workdir, tmp_path, scores):
    spec = spec_file(workdir, "off.yaml", cache=False)
    for out in ("a", "b"):
        report, _ = eval_base(spec, tmp_path / out)
        assert cached_units(report) == {} and "score_base_cached" not in report.get("cost", {})
    assert not scores.exists()


def test_cache_off_by_environment(workdir, tmp_path, warm, monkeypatch):
    monkeypatch.setenv(cache.NO_CACHE_ENV, "1")
    report, _ = eval_base(spec_file(workdir), tmp_path / "out")
    assert cached_units(report) == {} and "score_base_cached" not in report.get("cost", {})


def test_store_and_load_round_trip_tensors_and_never_raise(scores, tmp_path, monkeypatch):
    value = {
        "metrics": {"acc": 0.25, "n": 4, "nested": [1.5, {"x": float("inf")}]},
        "items": torch.tensor([1.0, 0.0, 1.0, 1.0]),
        "preds": torch.tensor([3, 1, 0], dtype=torch.long),
    }
    key = cache.fingerprint({"b": 1, "a": [1, 2]})
    assert key == cache.fingerprint({"a": [1, 2], "b": 1}) and re.fullmatch(r"[0-9a-f]{16}", key)
    assert cache.load(key) is None
    cache.store(key, value)
    loaded = cache.load(key)
    assert loaded["metrics"] == value["metrics"]
    for name in ("items", "preds"):
        assert loaded[name].dtype == value[name].dtype and torch.equal(loaded[name], value[name])
    assert [p.name for p in scores.iterdir()] == [f"{key}.json"]  # no temporary file left behind

    bad_tensor = {"fingerprint": key, "value": {"x": {"__tensor__": "bad", "dtype": "float32"}}}
    (scores / f"{key}.json").write_text(json.dumps(bad_tensor))
    assert cache.load(key) is None
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(cache.FOLDER_ENV, str(blocked))
    cache.store(key, value)  # cannot write there: logged, not raised
    assert cache.load(key) is None


def test_scores_live_in_runner_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.FOLDER_ENV)
    monkeypatch.delenv("RUNNER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.scores_dir() == tmp_path / "runner" / "scores"
