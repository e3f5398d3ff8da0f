"""Results a reader can trust: one split per data source, split files, max_rows samples, label
maps and ids, truncation that keeps the instruction, data checks, prefix labels, strict report
JSON, failed and interrupted runs, and the majority rung. Tiny random model, tens of rows."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import PROJECT, base_spec, sentiment_rows, write_jsonl, write_spec

from runner.cli import main
from runner.data.prepare import prepare_data
from runner.data.split import splits_record
from runner.data.truncation import prefix_labels
from runner.errors import DataError, SpecError
from runner.evaluation.evaluator import Evaluator
from runner.inputs import prepare_inputs
from runner.model.tiny import random_tiny
from runner.rundir.folder import write_json
from runner.spec.load import load_spec
from runner.training.setup import make_datamodule

LABELS = ["positive", "negative"]
INSTRUCTION = "Classify the sentiment of this review."


def only_run_dir(root: Path) -> Path:
    runs = [p for p in (root / "runs" / "tiny").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def sentiment_task(data, **extra) -> dict:
    return {"name": "sentiment", "data": data, "template": "sentiment.jinja", "labels": LABELS, **extra}


def quick(raw: dict, baselines: list[str], steps: int = 1) -> dict:
    """A run that trains a step or two and scores only the rungs asked for."""
    raw["training"]["max_steps"] = steps
    raw["evaluation"]["baselines"] = baselines
    return raw


def loads_strict(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --- one run over one file with three tasks (splits, label_map, id_field, few-shot, majority) ---


def multi_rows(n: int = 30) -> list[dict]:
    return [
        {
            "id": f"id{i:02d}",
            "text": f"item {i} is here",
            "a": i % 2,  # coded label, mapped to words by label_map
            "b": ["p", "q"][(i // 2) % 2],
            "c": "m" if i % 3 else "n",  # 20 m, 10 n: the majority answer is m
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    root = tmp_path_factory.mktemp("shared")
    (root / "data").mkdir()
    (root / "templates").mkdir()
    rows = multi_rows()
    write_jsonl(root / "data" / "multi.jsonl", rows)
    for field in "abc":
        (root / "templates" / f"{field}.jinja").write_text(
            f"Give field {field} of: {{{{ text }}}}\n|||\n{{{{ {field} }}}}\n"
        )
    data = "data/multi.jsonl"  # no stratify_by: split alone, each task would stratify by its own label
    raw = base_spec(
        tasks=[
            {
                "name": "ta",
                "data": data,
                "template": "a.jinja",
                "label_map": {0: "negative", 1: "positive"},
                "id_field": "id",
            },
            {"name": "tb", "data": data, "template": "b.jinja", "labels": ["p", "q"]},
            {"name": "tc", "data": data, "template": "c.jinja", "labels": ["m", "n"]},
        ]
    )
    raw["training"]["max_steps"] = 2
    write_spec(root / "spec.yaml", raw)
    assert main(["run", str(root / "spec.yaml")]) == 0
    return only_run_dir(root), root, rows


def test_tasks_reading_one_file_share_one_split_and_never_train_on_a_test_row(shared_run):
    run_dir, root, rows = shared_run
    splits = json.loads((run_dir / "splits.json").read_text())
    assert splits["seed"] == 7
    tasks = splits["tasks"]
    assert set(tasks) == {"ta", "tb", "tc"}
    tested = {row for t in tasks.values() for row in t["test"]}
    trained = {row for t in tasks.values() for row in t["train"] + t["val"]}
    assert tested and not tested & trained
    source = str((root / "data" / "multi.jsonl").resolve())
    first = tasks["ta"]
    assert sorted(first["train"] + first["val"] + first["test"]) == list(range(1, len(rows) + 1))
    report = json.loads((run_dir / "report.json").read_text())
    for name, t in tasks.items():
        assert (t["train"], t["val"], t["test"]) == (first["train"], first["val"], first["test"]), name
        assert t["source"] == source
        assert t["files"] == {"train": source, "val": source, "test": source}
        assert (t["stratify_by"], t["group_by"], t["max_rows"]) == (None, None, None)
        data = report["tasks"][name]["data"]
        assert (data["train"], data["val"], data["test"]) == (len(t["train"]), len(t["val"]), len(t["test"]))
    # id_field: splits.json also names each split's rows by id.
    assert first["ids"]["test"] == [rows[r - 1]["id"] for r in first["test"]]
    assert "ids" not in tasks["tb"]


def test_stratify_by_on_a_shared_source_keeps_each_value_in_every_split(workdir):
    rows = multi_rows()
    write_jsonl(workdir / "data" / "multi.jsonl", rows)
    for field in "bc":
        (workdir / "templates" / f"{field}.jinja").write_text(
            f"Give {field} of: {{{{ text }}}}\n|||\n{{{{ {field} }}}}\n"
        )
    data = {"path": "data/multi.jsonl", "stratify_by": "a"}
    raw = base_spec(
        tasks=[
            {"name": "tb", "data": data, "template": "b.jinja", "labels": ["p", "q"]},
            {"name": "tc", "data": data, "template": "c.jinja", "labels": ["m", "n"]},
        ]
    )
    spec = load_spec(write_spec(workdir / "strata.yaml", raw))
    tb, tc = prepare_data(spec)
    record = splits_record([tb, tc], spec.seed)["tasks"]
    assert record["tb"]["stratify_by"] == record["tc"]["stratify_by"] == "a"
    for name in ("train", "val", "test"):
        assert record["tb"][name] == record["tc"][name]
    # 15 rows of each value of `a`: test round(15 * 0.1) = 2 each, val round(15 * 0.2) = 3 each
    assert Counter(rows[r - 1]["a"] for r in record["tb"]["test"]) == {0: 2, 1: 2}
    assert Counter(rows[r - 1]["a"] for r in record["tb"]["val"]) == {0: 3, 1: 3}


def test_label_map_gives_the_labels_and_predictions_carry_words_and_ids(shared_run):
    run_dir, root, rows = shared_run
    spec = load_spec(root / "spec.yaml")
    assert spec.tasks[0].labels == ("negative", "positive")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["tasks"]["ta"]["labels"] == ["negative", "positive"]
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    mine = [r for r in records if r["task"] == "ta"]
    assert {r["rung"] for r in mine} == {"majority", "baseline_tfidf", "base_zero_shot", "base_few_shot", "fine_tuned"}
    for r in mine:
        source = rows[r["row"] - 1]
        assert r["id"] == source["id"]
        assert r["gold"] == ["negative", "positive"][source["a"]]
        assert r["prediction"] in ("negative", "positive")
        if r["rung"] not in ("majority", "baseline_tfidf"):  # the language-model rungs
            assert set(r["label_logprobs"]) == {"negative", "positive"}
    assert all("id" not in r for r in records if r["task"] != "ta")


def test_few_shot_prompts_fit_max_length_and_report_the_effective_k(shared_run):
    run_dir, _, _ = shared_run
    report = json.loads((run_dir / "report.json").read_text())
    for name, task in report["tasks"].items():
        rungs = task["test"]
        few = rungs["base_few_shot"]
        assert 0 < few["few_shot_k"] <= 3, name  # three shots cannot all fit 128 tokens whole
        assert few["prompt_tokens_mean"] > rungs["base_zero_shot"]["prompt_tokens_mean"]
        for rung, metrics in rungs.items():
            assert metrics["prompt_tokens_mean"] <= 128, (name, rung)
            assert metrics["prompts_truncated"] == 0, (name, rung)  # shots were fitted, nothing cut blindly


def test_majority_rung_answers_the_most_frequent_train_label(shared_run):
    run_dir, root, rows = shared_run
    assert "majority" in load_spec(root / "spec.yaml").evaluation.baselines  # on by default
    report = json.loads((run_dir / "report.json").read_text())
    train = json.loads((run_dir / "splits.json").read_text())["tasks"]["tc"]["train"]
    expected = Counter(rows[r - 1]["c"] for r in train).most_common(1)[0][0]
    assert expected == "m"
    majority = report["tasks"]["tc"]["test"]["majority"]
    assert majority["answer"] == expected
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    gold = [r["gold"] for r in records if r["task"] == "tc" and r["rung"] == "majority"]
    assert {r["prediction"] for r in records if r["task"] == "tc" and r["rung"] == "majority"} == {"m"}
    assert majority["accuracy"] == pytest.approx(gold.count("m") / len(gold))


# --- splits without a run -------------------------------------------------------------------


def test_group_by_keeps_a_groups_rows_in_one_split(workdir):
    rows = [dict(r, customer=f"c{i // 3}") for i, r in enumerate(sentiment_rows(60))]
    write_jsonl(workdir / "data" / "grouped.jsonl", rows)

    def split_of_each_customer(group_by):
        data = {"path": "data/grouped.jsonl", **({"group_by": group_by} if group_by else {})}
        spec = load_spec(write_spec(workdir / "g.yaml", base_spec(tasks=[sentiment_task(data)])))
        [task] = prepare_data(spec)
        where: dict[str, set] = {}
        for split, examples in task.splits().items():
            for e in examples:
                assert e.fields["text"] == rows[e.row - 1]["text"]
                where.setdefault(e.fields["customer"], set()).add(split)
        assert sum(map(len, task.splits().values())) == 60
        return where

    grouped = split_of_each_customer("customer")
    assert all(len(splits) == 1 for splits in grouped.values()), grouped
    assert {s for splits in grouped.values() for s in splits} == {"train", "val", "test"}
    # Without group_by the same seed scatters some customer over two splits: the test bites.
    assert any(len(splits) > 1 for splits in split_of_each_customer(None).values())


@pytest.mark.parametrize("key,value", [("split", {"train": 0.6, "val": 0.2, "test": 0.2}), ("max_rows", 20)])
def test_tasks_sharing_a_source_must_agree_on_what_decides_the_split(workdir, capsys, key, value):
    second = {**sentiment_task("data/sentiment.jsonl"), "name": "again", key: value}
    raw = base_spec(tasks=[sentiment_task("data/sentiment.jsonl"), second])
    path = write_spec(workdir / "shared.yaml", raw)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    [problem] = info.value.problems
    words = {"split": "split shares", "max_rows": "max_rows sample"}[key]
    assert problem.startswith(
        f"$.tasks[1].{key}: tasks 'sentiment', 'again' read the same data, so they share one split of its rows "
        f"and need the same {words}; got "
    )
    assert main(["run", str(path)]) == 2
    assert "read the same data, so they share one split" in capsys.readouterr().err
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_split_files_test_file_is_the_test_split_and_val_comes_from_train(workdir, fmt):
    rows = sentiment_rows(45)
    sep = "\t" if fmt == "tsv" else ","
    # ", really" holds a comma: a TSV file read with the CSV delimiter would break it.
    body = "".join(f'"{r["text"]}, really"{sep}{r["sentiment"]}\n' for r in rows[:32])
    if fmt == "tsv":
        body = body.replace('"', "")
    (workdir / "data" / f"train.{fmt}").write_text(f"text{sep}sentiment\n" + body)
    write_jsonl(workdir / "data" / "test.jsonl", rows[32:])
    data = {"train": f"data/train.{fmt}", "test": "data/test.jsonl"}
    spec = load_spec(write_spec(workdir / "sf.yaml", base_spec(tasks=[sentiment_task(data)])))
    [task] = prepare_data(spec)
    assert len(task.test) == 13  # the test file, whole
    assert [e.row for e in task.test] == list(range(1, 14))
    assert all(e.prompt.endswith(", really\nSentiment:") for e in task.train + task.val)
    # val = round(n * 0.2 / (0.7 + 0.2)) per label: 16 positive -> 4, 16 negative -> 4
    assert Counter(e.completion for e in task.val) == {"positive": 4, "negative": 4}
    assert len(task.train) == 24
    assert sorted(e.row for e in task.train + task.val) == list(range(1, 33))
    train_file = str((workdir / "data" / f"train.{fmt}").resolve())
    record = splits_record([task], spec.seed)["tasks"]["sentiment"]
    assert record["files"] == {
        "train": train_file,
        "val": train_file,
        "test": str((workdir / "data" / "test.jsonl").resolve()),
    }
    assert record["test"] == list(range(1, 14))


def test_split_files_with_a_val_file_use_every_file_whole(workdir):
    rows = sentiment_rows(30)
    for name, part in (("tr", rows[:18]), ("va", rows[18:24]), ("te", rows[24:])):
        write_jsonl(workdir / "data" / f"{name}.jsonl", part)
    data = {"train": "data/tr.jsonl", "val": "data/va.jsonl", "test": "data/te.jsonl"}
    spec = load_spec(write_spec(workdir / "sf.yaml", base_spec(tasks=[sentiment_task(data)])))
    [task] = prepare_data(spec)
    assert [e.row for e in task.train] == list(range(1, 19))
    assert [e.row for e in task.val] == list(range(1, 7))
    assert [e.row for e in task.test] == list(range(1, 7))
    assert task.val[0].fields == rows[18] and task.test[0].fields == rows[24]
    record = splits_record([task], spec.seed)["tasks"]["sentiment"]
    assert record["files"] == {
        s: str((workdir / "data" / f"{f}.jsonl").resolve())
        for s, f in zip(("train", "val", "test"), ("tr", "va", "te"))
    }


def test_max_rows_is_a_seeded_stratified_sample_that_keeps_source_row_numbers(workdir):
    # Sorted by label: the first 20 rows are all positive.
    rows = [{"text": f"review number {i}", "sentiment": "positive" if i < 30 else "negative"} for i in range(60)]
    write_jsonl(workdir / "data" / "sorted.jsonl", rows)

    def sample(seed):
        raw = base_spec(seed=seed, tasks=[sentiment_task("data/sorted.jsonl", max_rows=20)])
        [task] = prepare_data(load_spec(write_spec(workdir / "m.yaml", raw)))
        examples = task.train + task.val + task.test
        for e in examples:
            assert e.fields == rows[e.row - 1]  # the source file's own row number
        assert task.rows_read == 60
        return examples

    first = sample(7)
    numbers = sorted(e.row for e in first)
    assert len(numbers) == 20 and numbers != list(range(1, 21))
    assert Counter(e.completion for e in first) == {"positive": 10, "negative": 10}
    assert sorted(e.row for e in sample(7)) == numbers
    assert sorted(e.row for e in sample(8)) != numbers


# --- truncation --------------------------------------------------------------------------


def long_rows(n: int = 20) -> list[dict]:
    """Even rows carry a long review (about 330 characters), odd rows a short one."""
    return [
        {
            "text": f"START{i} " + ("blah " * 60 if i % 2 == 0 else "so so ") + f"END{i}",
            "sentiment": LABELS[i % 2],
        }
        for i in range(n)
    ]


def long_spec(workdir: Path, truncation: str | None = None, max_length: int = 128) -> Path:
    write_jsonl(workdir / "data" / "long.jsonl", long_rows())
    (workdir / "templates" / "long.jinja").write_text(
        f"{INSTRUCTION}\nReview: {{{{ text }}}}\n|||\n{{{{ sentiment }}}}\n"
    )
    model = {"source": "random-tiny", "max_length": max_length, **({"truncation": truncation} if truncation else {})}
    raw = base_spec(model=model, tasks=[{**sentiment_task("data/long.jsonl"), "template": "long.jinja"}])
    return write_spec(workdir / "long.yaml", raw)


def test_few_shot_on_long_rows_shares_the_room_so_shots_still_fit(workdir):
    """Test prompts already filling max_length would leave no room for a shot: the query gets at
    most an equal share, so k shots fit, each with its instruction and the start of its text."""
    rows = [
        {"text": f"START{i} " + ("blah " * (240 if i % 2 == 0 else 2)) + f"END{i}", "sentiment": LABELS[i % 2]}
        for i in range(40)
    ]
    write_jsonl(workdir / "data" / "long.jsonl", rows)
    (workdir / "templates" / "long.jinja").write_text(
        f"{INSTRUCTION}\nReview: {{{{ text }}}}\n|||\n{{{{ sentiment }}}}\n"
    )
    model = {"source": "random-tiny", "max_length": 600}
    raw = base_spec(model=model, tasks=[{**sentiment_task("data/long.jsonl"), "template": "long.jinja"}])
    inputs = prepare_inputs(load_spec(write_spec(workdir / "long.yaml", raw)), with_probes=False)
    [task] = inputs.tasks
    long_queries = [e for e in task.test if e.truncated]
    assert long_queries
    for query in long_queries:
        shots = [e for e in task.train if e.truncated][:3]
        used, ids, shortened = inputs.fitter.fit_shots(task, query, shots, room=8)
        seen = inputs.encoder.tokenizer.decode(ids)
        assert len(used) == 3 and shortened and len(ids) <= 600 - 8
        assert seen.count(INSTRUCTION) == 4, seen  # three shots and the query, each whole in its framing
        for shot in used:
            assert f"START{shot.row - 1} " in seen and " … " in shot.prompt
        assert seen.endswith("<|im_start|>assistant\n")
    short = next(e for e in task.test if not e.truncated)
    used, ids, shortened = inputs.fitter.fit_shots(task, short, [e for e in task.train if not e.truncated][:3], 8)
    assert not shortened and all(not e.truncated for e in used)  # what fits whole is not cut


def test_fields_truncation_cuts_the_long_field_in_the_middle_and_keeps_the_instruction(workdir):
    spec = load_spec(long_spec(workdir))
    assert spec.model.truncation == "fields"
    inputs = prepare_inputs(spec, with_probes=False)
    tokenizer = inputs.encoder.tokenizer
    rows = long_rows()
    [task] = inputs.tasks
    assert {e.row % 2 for e in task.train if e.truncated} == {1}  # exactly the long rows (odd numbers)
    for e in task.train:
        i = e.row - 1
        encoded = inputs.encoder.encode(e, add_eos=False)
        assert len(encoded["input_ids"]) <= 128
        seen = tokenizer.decode(encoded["input_ids"])
        assert seen.startswith(f"<|im_start|>user\n{INSTRUCTION}\nReview: START{i} "), seen
        assert seen.endswith(f" END{i}<|im_end|>\n<|im_start|>assistant\n{e.completion}"), seen
        if i % 2 == 0:
            assert e.truncated and " … " in e.prompt
            assert len(e.prompt) < len(rows[i]["text"])
        else:
            assert not e.truncated
            assert e.prompt == f"{INSTRUCTION}\nReview: {rows[i]['text']}"
    assert inputs.encoder.cuts == 0  # nothing left for the blind left cut
    report_counts = task.truncated_counts()
    assert report_counts["train"] == sum(e.truncated for e in task.train) > 0
    truncation = [f for f in inputs.findings if f.check == "truncation"]
    assert truncation and truncation[0].severity == "warn"


def test_preview_json_shows_each_row_as_the_model_sees_it(workdir, capsys):
    assert main(["preview", str(long_spec(workdir)), "--json", "--rows", "5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert len(records) == 5
    for r in records:
        assert {"row", "split", "seen", "tokens", "loss_tokens", "truncated"} <= set(r)
        assert r["split"] == "train"
        assert r["seen"].startswith(f"<|im_start|>user\n{INSTRUCTION}\nReview: START{r['row'] - 1} ")
        assert r["tokens"] <= 128
        assert r["loss_tokens"] == len("positive")  # byte-level: a token per character, no end token
        assert r["truncated"] == (r["row"] % 2 == 1)
        assert (" … " in r["seen"]) == r["truncated"]
    assert any(r["truncated"] for r in records) and not all(r["truncated"] for r in records)


def test_left_truncation_cuts_the_start_of_the_prompt(workdir):
    inputs = prepare_inputs(load_spec(long_spec(workdir, "left")), with_probes=False)
    tokenizer = inputs.encoder.tokenizer
    long = [e for e in inputs.tasks[0].train if e.truncated]
    assert long and all(e.row % 2 == 1 for e in long)
    for e in long:
        seen = tokenizer.decode(inputs.encoder.encode(e, add_eos=False)["input_ids"])
        assert len(inputs.encoder.encode(e, add_eos=False)["input_ids"]) == 128
        assert INSTRUCTION not in seen and " … " not in seen
        assert seen.endswith(f" END{e.row - 1}<|im_end|>\n<|im_start|>assistant\n{e.completion}")


def test_error_truncation_stops_the_run_naming_every_long_row(workdir, capsys):
    path = long_spec(workdir, "error")
    [task] = prepare_data(load_spec(path))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    named = 0
    for split, examples in task.splits().items():
        for e in examples:
            found = re.search(
                rf"\b{split} row {e.row}: \d+ tokens, more than model.max_length 128 \(model.truncation is 'error'\)\.",
                err,
            )
            assert bool(found) == (e.row % 2 == 1), (split, e.row)
            named += bool(found)
    assert named == 10
    assert not (workdir / "runs").exists()


def test_template_whose_fixed_text_alone_is_too_long_exits_2(workdir, capsys):
    long_spec(workdir)  # writes the data
    (workdir / "templates" / "wordy.jinja").write_text(
        "Read the following review very carefully. " * 4 + "\nReview: {{ text }}\n|||\n{{ sentiment }}\n"
    )
    raw = base_spec(
        model={"source": "random-tiny", "max_length": 96},
        tasks=[{**sentiment_task("data/long.jsonl"), "template": "wordy.jinja"}],
    )
    path = write_spec(workdir / "wordy.yaml", raw)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "wordy.jinja" in err
    assert re.search(r"the template's fixed text \(.*\) is \d+ tokens, more than model.max_length 96", err), err
    assert not (workdir / "runs").exists()


# --- data checks ---------------------------------------------------------------------------


def planted_split_files(workdir: Path, checks: dict | None) -> Path:
    """train/val/test files with an exact duplicate (train rows 3 and 4), a conflict (train rows
    6 and 7: same input, different labels) and a leak (test row 2 is train row 1, up to case and
    whitespace)."""
    rows = sentiment_rows(30)
    train, val, test = rows[:20], rows[20:25], rows[25:]
    train[3] = dict(train[2])
    train[5] = {"text": "It was okay.", "sentiment": "positive"}
    train[6] = {"text": "It was okay.", "sentiment": "negative"}
    test[1] = {"text": "  the PRODUCT 0 was   great. ", "sentiment": "positive"}
    for name, part in (("tr", train), ("va", val), ("te", test)):
        write_jsonl(workdir / "data" / f"{name}.jsonl", part)
    data = {"train": "data/tr.jsonl", "val": "data/va.jsonl", "test": "data/te.jsonl"}
    raw = quick(base_spec(tasks=[sentiment_task(data)]), ["majority"])
    if checks is not None:
        raw["data_checks"] = checks
    return write_spec(workdir / "checked.yaml", raw)


def test_data_checks_set_to_warn_list_every_finding_in_the_report(workdir, capsys):
    assert main(["run", str(planted_split_files(workdir, {"on_issue": "warn"}))]) == 0
    err = capsys.readouterr().err
    report = json.loads((only_run_dir(workdir) / "report.json").read_text())
    assert report["status"] == "complete"
    found = {f["check"]: f for f in report["tasks"]["sentiment"]["data"]["checks"]}
    for f in found.values():
        assert set(f) == {"check", "severity", "tasks", "message", "rows"}
        assert f["severity"] == "warn" and f["tasks"] == ["sentiment"]
    assert "sentiment train row 4 = sentiment train row 3" in found["duplicates"]["rows"]
    assert found["leaks"]["rows"] == ["sentiment test row 2 = sentiment train row 1"]
    assert found["leaks"]["message"] == "1 test rows have the same input as a train row"
    assert found["conflicts"]["rows"] == ["sentiment train row 6 ('positive') vs sentiment train row 7 ('negative')"]
    assert "data check [warn] leaks: 1 test rows have the same input as a train row" in err


@pytest.mark.parametrize("checks", [None, {"on_issue": "fail"}])
def test_failing_data_checks_exit_2_naming_rows_without_a_run_folder(workdir, capsys, checks):
    assert main(["run", str(planted_split_files(workdir, checks))]) == 2
    err = capsys.readouterr().err
    assert (
        "[fail] leaks: 1 test rows have the same input as a train row (sentiment test row 2 = sentiment train row 1)"
        in err
    )
    assert (
        "[fail] conflicts: 1 inputs with different completions in 'sentiment' "
        "(sentiment train row 6 ('positive') vs sentiment train row 7 ('negative'))"
    ) in err
    # duplicates only warn by default; on_issue: fail makes every finding fail
    assert ("[fail] duplicates:" in err) == (checks is not None)
    assert "Traceback" not in err
    assert not (workdir / "runs").exists()


def test_leak_across_two_tasks_reading_two_files_is_reported(workdir):
    rows = sentiment_rows(30)
    write_jsonl(workdir / "data" / "a.jsonl", rows)
    # Task b asks differently about the same reviews: its test file is task a's whole file.
    write_jsonl(
        workdir / "data" / "b_train.jsonl",
        [{"body": f"Other review {i}", "sentiment": LABELS[i % 2]} for i in range(18)],
    )
    write_jsonl(
        workdir / "data" / "b_test.jsonl", [{"body": r["text"].upper(), "sentiment": r["sentiment"]} for r in rows]
    )
    (workdir / "templates" / "b.jinja").write_text(
        "Text: {{ body }}\nIs it positive or negative?\n|||\n{{ sentiment }}\n"
    )
    raw = base_spec(
        tasks=[
            {**sentiment_task("data/a.jsonl"), "name": "a"},
            {
                "name": "b",
                "data": {"train": "data/b_train.jsonl", "test": "data/b_test.jsonl"},
                "template": "b.jinja",
                "labels": LABELS,
            },
        ],
        data_checks={"on_issue": "warn", "duplicates": "off", "near_duplicates": "off"},
    )
    spec = load_spec(write_spec(workdir / "x.yaml", raw))
    inputs = prepare_inputs(spec, with_probes=False)
    a = inputs.tasks[0]
    leaks = [f for f in inputs.findings if f.check == "leaks"]
    test_leaks = [f for f in leaks if f.message.endswith("test rows have the same input as a train row")]
    assert len(test_leaks) == 1 and test_leaks[0].tasks == ["a", "b"]
    expected = sorted(f"b test row {e.row} = a train row {e.row}" for e in a.train)
    assert sorted(test_leaks[0].rows) == expected
    with pytest.raises(DataError, match=r"\[fail\] leaks: .* \(b test row \d+ = a train row \d+"):
        prepare_inputs(load_spec(write_spec(workdir / "y.yaml", {**raw, "data_checks": {}})), with_probes=False)


def test_group_by_rows_with_different_texts_are_not_duplicates_or_conflicts(workdir):
    # Each customer has three different reviews, not all with the same label: nothing is duplicated.
    rows = [dict(r, customer=f"c{i // 3}") for i, r in enumerate(sentiment_rows(60))]
    write_jsonl(workdir / "data" / "grouped.jsonl", rows)
    raw = base_spec(tasks=[sentiment_task({"path": "data/grouped.jsonl", "group_by": "customer"})])
    inputs = prepare_inputs(load_spec(write_spec(workdir / "g.yaml", raw)), with_probes=False)
    assert not [f.line() for f in inputs.findings if f.check in ("duplicates", "conflicts")]


def test_group_by_still_reports_the_same_text_in_train_and_test_as_a_leak(workdir):
    rows = sentiment_rows(40)
    train = [dict(r, customer=f"c{i // 4}", sentiment=LABELS[(i // 4) % 2]) for i, r in enumerate(rows[:32])]
    test = [dict(r, customer=f"t{i // 4}", sentiment="positive") for i, r in enumerate(rows[32:])]
    test[1]["text"] = train[0]["text"]  # customer t0 sent customer c0's review
    write_jsonl(workdir / "data" / "gtr.jsonl", train)
    write_jsonl(workdir / "data" / "gte.jsonl", test)
    data = {"train": "data/gtr.jsonl", "test": "data/gte.jsonl", "group_by": "customer"}
    raw = base_spec(tasks=[sentiment_task(data)], data_checks={"on_issue": "warn"})
    inputs = prepare_inputs(load_spec(write_spec(workdir / "g.yaml", raw)), with_probes=False)
    leaks = [row for f in inputs.findings if f.check == "leaks" for row in f.rows]
    assert any(row.startswith("sentiment test row 2 = sentiment ") for row in leaks), leaks


def test_failing_data_check_header_counts_only_the_findings(workdir):
    raw = base_spec(tasks=[sentiment_task("data/sentiment.jsonl")], data_checks={"leaks": "warn"})
    write_jsonl(
        workdir / "data" / "sentiment.jsonl",
        sentiment_rows(39) + [{"text": "The product 0 was GREAT.", "sentiment": "negative"}],
    )
    with pytest.raises(DataError) as info:
        prepare_inputs(load_spec(write_spec(workdir / "c.yaml", raw)), with_probes=False)
    assert "[fail] conflicts:" in info.value.message
    assert "(1 problem)" in info.value.message.splitlines()[0]


# --- prefix labels -------------------------------------------------------------------------


def yes_partly_spec(workdir: Path) -> Path:
    rows = [{"text": f"Did it work, case {i}?", "answer": ["yes", "yes, partly"][i % 2]} for i in range(30)]
    write_jsonl(workdir / "data" / "yn.jsonl", rows)
    (workdir / "templates" / "yn.jinja").write_text("Question: {{ text }}\n|||\n{{ answer }}\n")
    raw = base_spec(
        tasks=[{"name": "yn", "data": "data/yn.jsonl", "template": "yn.jinja", "labels": ["yes", "yes, partly"]}]
    )
    return write_spec(workdir / "yn.yaml", raw)


def test_prefix_labels_are_trained_and_scored_with_the_end_token(workdir):
    spec = load_spec(yes_partly_spec(workdir))
    inputs = prepare_inputs(spec, with_probes=False)
    assert prefix_labels(inputs.encoder, ("yes", "yes, partly")) == [("yes", "yes, partly")]
    [task] = inputs.tasks
    assert task.label_eos
    eos = inputs.encoder.tokenizer.eos_token_id
    rows = make_datamodule(inputs, spec).train_sets[0]
    assert len(rows) == len(task.train)
    assert all(r["labels"][-1] == eos and r["input_ids"][-1] == eos for r in rows)
    [info] = [f for f in inputs.findings if f.check == "prefix_labels"]
    assert info.severity == "info" and info.tasks == ["yn"]
    assert "'yes'" in info.message and "'yes, partly'" in info.message


def test_label_scores_with_the_end_token_score_it(workdir):
    spec = load_spec(yes_partly_spec(workdir))
    inputs = prepare_inputs(spec, with_probes=False)
    model, _ = random_tiny(0)
    evaluator = Evaluator(model, inputs.encoder, 8, 8, torch.device("cpu"))
    encoder = inputs.encoder
    prompts = [encoder.prompt_ids(e.prompt) for e in inputs.tasks[0].test]
    labels = ("yes", "yes, partly")
    with_eos = evaluator.label_scores(prompts, labels, add_eos=True)
    without = evaluator.label_scores(prompts, labels, add_eos=False)
    assert with_eos.shape == without.shape == (len(prompts), 2)
    assert (with_eos < without).all()  # one more token's log-probability, always negative
    # The same numbers as scoring prompt + label + end token as one plain sequence.
    rows = [encoder.join(p, encoder.completion_ids(label, add_eos=True)) for p in prompts for label in labels]
    reference = evaluator.sequence_logprobs(rows).view(len(prompts), 2)
    assert torch.allclose(with_eos, reference, atol=1e-3)


def test_labels_without_a_prefix_keep_no_end_token(workdir):
    spec = load_spec(workdir / "spec.yaml")
    inputs = prepare_inputs(spec, with_probes=False)
    assert prefix_labels(inputs.encoder, spec.tasks[0].labels) == []
    assert not inputs.tasks[0].label_eos
    assert not [f for f in inputs.findings if f.check == "prefix_labels"]
    eos = inputs.encoder.tokenizer.eos_token_id
    assert all(eos not in r["labels"] for r in make_datamodule(inputs, spec).train_sets[0])


# --- report files, failures and interruptions -----------------------------------------------


def test_write_json_turns_nan_and_infinities_into_null(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"loss": math.nan, "epochs": [{"val": math.inf}, (1.5, -math.inf)], "ok": 2.0, "name": "x"})
    data = loads_strict(path.read_text())
    assert data == {"loss": None, "epochs": [{"val": None}, [1.5, None]], "ok": 2.0, "name": "x"}
    with pytest.raises(ValueError):
        loads_strict('{"loss": NaN}')  # the parser really refuses NaN
    assert not list(tmp_path.glob("*.tmp"))


def test_target_modules_that_the_model_lacks_stop_before_a_run_folder(workdir, capsys):
    raw = base_spec(method={"kind": "lora", "lora": {"target_modules": ["nonexistent_proj"]}})
    assert main(["run", str(write_spec(workdir / "bad_lora.yaml", raw))]) == 2
    err = capsys.readouterr().err
    assert "$.method.lora.target_modules: 'nonexistent_proj' is not a linear layer of this model" in err
    assert "q_proj" in err and "Traceback" not in err
    assert not (workdir / "runs").exists()


def test_failure_after_base_scoring_reports_the_error(workdir, capsys, monkeypatch):
    import runner.flows.run

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(runner.flows.run, "apply_method", out_of_memory)
    raw = base_spec()
    raw["evaluation"]["baselines"] = ["majority", "base_zero_shot", "fine_tuned"]
    assert main(["run", str(write_spec(workdir / "spec.yaml", raw))]) == 1
    err = capsys.readouterr().err
    assert "out of memory (simulated)" in err and "KeyError" not in err
    run_dir = only_run_dir(workdir)
    report = loads_strict((run_dir / "report.json").read_text())
    assert report["status"] == "failed" and "out of memory (simulated)" in report["error"]
    assert set(report["tasks"]["sentiment"]["test"]) == {"majority", "base_zero_shot"}  # base scores kept
    assert (run_dir / "report.md").is_file() and (run_dir / "report.html").is_file()


def test_sigterm_marks_the_run_interrupted_and_names_the_resume_command(workdir):
    write_jsonl(workdir / "data" / "many.jsonl", sentiment_rows(200))
    raw = base_spec(tasks=[sentiment_task("data/many.jsonl")])
    raw["training"]["epochs"] = 50
    raw["training"]["early_stopping"] = {"enabled": False}
    raw["evaluation"]["baselines"] = ["majority", "fine_tuned"]
    spec = write_spec(workdir / "long_run.yaml", raw)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(spec)],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        run_dir = None
        while time.monotonic() < deadline and proc.poll() is None:
            reports = list((workdir / "runs").glob("tiny/*/report.json"))
            if reports:
                run_dir = reports[0].parent
                training = any((run_dir / d).exists() for d in ("checkpoints", "tensorboard"))
                if training and json.loads(reports[0].read_text())["status"] == "running":
                    break
            time.sleep(0.2)
        assert proc.poll() is None and run_dir is not None, "training never started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    report = loads_strict((run_dir / "report.json").read_text())
    assert report["status"] == "interrupted"
    assert "SIGTERM" in report["error"] and f"--resume {run_dir}" in report["error"]
    assert (run_dir / "report.md").is_file()
