"""Data prep: reading formats, templates, bad rows, splits, masking, truncation, mixtures."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import base_spec, sentiment_rows, write_jsonl, write_spec

from runner.data.encode import IGNORE_INDEX, Encoder, collate
from runner.data.examples import Example, TaskData
from runner.data.mixture import FineTuneData
from runner.data.prepare import prepare_source
from runner.data.read import read_rows
from runner.data.split import split_indices
from runner.errors import DataError
from runner.model.tiny import byte_tokenizer
from runner.spec.load import load_spec
from runner.spec.types import DataSource


def task_of(workdir: Path, **task_overrides):
    raw = base_spec()
    raw["tasks"][0].update(task_overrides)
    return load_spec(write_spec(workdir / "t.yaml", raw)).tasks[0]


def test_reads_jsonl_csv_json_and_parquet_alike(tmp_path):
    rows = sentiment_rows(6)
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("text,sentiment\n" + "".join(f'"{r["text"]}",{r["sentiment"]}\n' for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for fmt in ("jsonl", "json", "csv", "parquet"):
        assert read_rows(DataSource(path=tmp_path / f"d.{fmt}", format=fmt)) == rows, fmt


def test_broken_jsonl_names_the_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "sentiment": "positive"}\n{"text": "broken"\n[1, 2]\n')
    with pytest.raises(DataError) as info:
        read_rows(DataSource(path=path, format="jsonl"))
    assert info.value.problems == [
        "line 2: not valid JSON (Expecting ',' delimiter at column 18).",
        "line 3: got a list, expected a JSON object.",
    ]


def test_template_renders_prompt_and_completion(workdir):
    data = prepare_source([task_of(workdir)], seed=1)[0]
    example = data.train[0]
    assert example.prompt.startswith("Review: The product") and example.prompt.endswith("Sentiment:")
    assert example.completion in ("positive", "negative")
    assert example.label == ("positive", "negative").index(example.completion)


def test_bad_rows_stop_with_file_row_and_field(workdir):
    rows = sentiment_rows(30)
    rows[2] = {"text": "no label here"}
    rows[4]["sentiment"] = "neutral"
    rows[6]["sentiment"] = "  "
    write_jsonl(workdir / "data" / "sentiment.jsonl", rows)
    with pytest.raises(DataError) as info:
        prepare_source([task_of(workdir)], seed=1)[0]
    assert info.value.problems == [
        "row 3: 'sentiment' is undefined: the row has no field 'sentiment'; its fields are: text.",
        "row 5: completion 'neutral' is not one of the task's labels (positive, negative); "
        "fix the row or add the label to tasks[].labels.",
        "row 7: the completion is empty; check the completion field of this row.",
    ]
    assert "template sentiment.jinja" in info.value.source


def test_template_without_separator_is_an_error(workdir):
    (workdir / "templates" / "nosep.jinja").write_text("{{ text }} {{ sentiment }}")
    with pytest.raises(DataError) as info:
        prepare_source([task_of(workdir, template="nosep.jinja")], seed=1)
    assert info.value.problems[0].endswith(": the template rendered no '|||' between prompt and completion.")
    assert info.value.problems[0].startswith("rows 1, 2, 3")


def test_templates_run_in_a_sandbox(workdir):
    (workdir / "templates" / "evil.jinja").write_text("{{ text.__class__.__mro__ }} ||| {{ sentiment }}")
    with pytest.raises(DataError) as info:
        prepare_source([task_of(workdir, template="evil.jinja")], seed=1)
    assert "unsafe" in info.value.problems[0] or "__class__" in info.value.problems[0]


def test_split_is_seeded_stratified_and_covers_every_row():
    strata = [0] * 50 + [1] * 30 + [2] * 20
    a = split_indices(100, (0.7, 0.2, 0.1), seed=3, strata=strata)
    b = split_indices(100, (0.7, 0.2, 0.1), seed=3, strata=strata)
    c = split_indices(100, (0.7, 0.2, 0.1), seed=4, strata=strata)
    assert a == b and a != c
    train, val, test = a
    assert sorted(train + val + test) == list(range(100))
    assert (len(train), len(val), len(test)) == (70, 20, 10)
    assert Counter(strata[i] for i in test) == {0: 5, 1: 3, 2: 2}
    assert Counter(strata[i] for i in val) == {0: 10, 1: 6, 2: 4}


def test_too_few_rows_for_a_split_is_a_data_error(workdir):
    write_jsonl(workdir / "data" / "sentiment.jsonl", sentiment_rows(4))
    with pytest.raises(DataError) as info:
        prepare_source([task_of(workdir)], seed=1)[0]
    assert "too few to give every split a row" in info.value.problems[0]


def test_prompt_tokens_are_masked_out_of_the_loss():
    tokenizer = byte_tokenizer()
    encoder = Encoder(tokenizer, max_length=256, chat_template=False)
    row = encoder.encode(Example("t", 1, "Say hi", "hello"), add_eos=False)
    prompt_len = len(tokenizer("Say hi")["input_ids"])
    assert row["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert row["labels"][prompt_len:] == row["input_ids"][prompt_len:]
    assert tokenizer.decode(row["input_ids"][prompt_len:]) == " hello"


def test_chat_template_wraps_prompt_and_eos_ends_free_text():
    tokenizer = byte_tokenizer()
    encoder = Encoder(tokenizer, max_length=256, chat_template=True)
    row = encoder.encode(Example("t", 1, "Say hi", "hello"), add_eos=True)
    text = tokenizer.decode(row["input_ids"])
    assert text == "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>"
    completion = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(completion) == "hello<|im_end|>"


def test_encoder_cuts_what_still_does_not_fit_from_the_prompt_start_and_counts_it():
    tokenizer = byte_tokenizer()
    encoder = Encoder(tokenizer, max_length=16, chat_template=False)
    row = encoder.encode(Example("t", 1, "x" * 40 + "END", "yes"), add_eos=False)
    assert len(row["input_ids"]) == 16
    assert tokenizer.decode(row["input_ids"]).endswith("END yes")
    assert encoder.cuts == 1


def test_collate_left_pads_dynamically_and_masks_padding():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 5]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_mixture_weights_set_each_tasks_share_of_samples(workdir):
    task = task_of(workdir)
    small = [Example("b", i, f"p{i}", "negative", 1) for i in range(10)]
    big = [Example("a", i, f"q{i}", "positive", 0) for i in range(90)]
    a = TaskData(task.__class__(**{**task.__dict__, "name": "a", "weight": 0.5}), big, big[:2], big[:2])
    b = TaskData(task.__class__(**{**task.__dict__, "name": "b", "weight": 0.5}), small, small[:2], small[:2])
    encoder = Encoder(byte_tokenizer(), max_length=64, chat_template=False)
    dm = FineTuneData([a, b], encoder, batch_size=50, num_workers=0, seed=0)
    seen = Counter()
    for _ in range(20):
        for batch in dm.train_dataloader():
            seen.update(batch["task_index"].tolist())
    share_b = seen[1] / sum(seen.values())
    assert 0.45 < share_b < 0.55  # 10% of the rows, but half the samples


def test_the_problem_count_counts_every_bad_row_not_only_those_shown(workdir, capsys):
    from conftest import write_jsonl

    from runner.cli import main

    write_jsonl(workdir / "data" / "sentiment.jsonl", [{"text": f"row {i}", "sentiment": "meh"} for i in range(45)])
    assert main(["run", str(workdir / "spec.yaml")]) == 2
    err = capsys.readouterr().err
    assert "is not a valid data set (45 problems):" in err
    # one line for the problem the 45 rows share, naming the first rows and the count of the rest
    assert "rows 1, 2, 3, 4, 5 and 40 more: completion 'meh' is not one of the task's labels" in err
