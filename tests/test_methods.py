"""Every training method end to end on random-tiny, and what a user does with the result:
`runner predict` on new rows and `runner export` to a folder plain transformers (or peft) loads.

The reference for "the same predictions" is computed here without runner's scoring code: one
unpadded row at a time through the reloaded model's own forward, log-softmax at the label tokens.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import base_spec, write_jsonl, write_spec

from runner.cli import main
from runner.model.methods import METHODS

TOLERANCE = 1e-3  # label log-likelihoods, fp32 (rounded to 4 decimals in predictions.jsonl)


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in (root / "runs").glob("*/*") if p.is_dir()]
    return run_dir


def fine_tuned_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return [r for r in rows if r["rung"] == "fine_tuned"]


def reference_logprobs(model, run_dir: Path, prompt: str) -> dict[str, float]:
    """Each label's summed log-probability after the prompt: the model's own forward, one
    unpadded sequence per label, no runner scoring code."""
    from runner.data.encode import Encoder

    inference = json.loads((run_dir / "inference.json").read_text())
    entry = inference["tasks"][inference["primary_task"]]
    from transformers import AutoTokenizer

    encoder = Encoder(AutoTokenizer.from_pretrained(run_dir / "model"), inference["max_length"], True)
    prompt_ids = encoder.prompt_ids(prompt)
    out = {}
    with torch.no_grad():
        for label in entry["labels"]:
            label_ids = encoder.completion_ids(label, entry["label_eos"])
            ids = torch.tensor([prompt_ids + label_ids])
            # (prompt tuning's peft forward returns its virtual tokens' positions first)
            logits = model(input_ids=ids).logits[0, -ids.shape[1] :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(label_ids))
            out[label] = float(sum(logprobs[p, t] for p, t in zip(positions, label_ids)))
    return out


@pytest.fixture(scope="module", params=list(METHODS))
def method_run(request, tmp_path_factory) -> tuple[str, Path]:
    from conftest import make_workdir

    kind = request.param
    workdir = make_workdir(tmp_path_factory.mktemp(kind))
    raw = base_spec(method={"kind": kind, **({"freeze": {"blocks": 1}} if kind == "freeze" else {})})
    raw["training"] = {"epochs": 3, "batch_size": 8, "learning_rate": None}  # the method's own default
    raw["evaluation"]["baselines"] = ["fine_tuned"]
    assert main(["run", str(write_spec(workdir / "spec.yaml", raw))]) == 0
    return kind, only_run_dir(workdir)


def test_each_method_trains_its_own_parameters_and_the_loss_goes_down(method_run):
    kind, run_dir = method_run
    report = json.loads((run_dir / "report.json").read_text())
    epochs = report["training"]["epochs"]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"], epochs
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"], epochs
    cost = report["cost"]
    assert 0 < cost["trainable_params"] <= cost["total_params"]
    assert (cost["trainable_params"] == cost["total_params"]) == (kind == "full")
    assert cost["checkpoint_mb"] > 0
    adapter = (run_dir / "model" / "adapter_config.json").is_file()
    assert adapter == METHODS[kind].adapter


def test_predict_from_the_run_folder_equals_the_runs_test_predictions(method_run, tmp_path):
    kind, run_dir = method_run
    tested = fine_tuned_rows(run_dir)
    # New rows as a user has them: the test rows' fields, without the label.
    rows = [{"text": r["prompt"].removeprefix("Review: ").split("\n")[0]} for r in tested]
    write_jsonl(tmp_path / "new.jsonl", rows)
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", str(run_dir), "--input", str(tmp_path / "new.jsonl"), "--output", str(out)]) == 0
    predicted = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(predicted) == len(tested)
    for mine, theirs in zip(predicted, tested):
        assert mine["prediction"] == theirs["prediction"]
        assert "gold" not in mine  # the rows carried no label
        for label, value in theirs["label_logprobs"].items():
            assert mine["label_logprobs"][label] == pytest.approx(value, abs=TOLERANCE)
        assert sum(mine["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_export_reloads_in_plain_transformers_or_peft_with_the_same_scores(method_run, tmp_path):
    from transformers import AutoModelForCausalLM

    kind, run_dir = method_run
    method = METHODS[kind]
    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    if method.mergeable:
        assert main(["export", str(run_dir), "--merged", str(merged)]) == 0
        model = AutoModelForCausalLM.from_pretrained(merged)  # no peft involved
        assert "peft" not in type(model).__module__
    else:
        assert main(["export", str(run_dir), "--merged", str(merged)]) == 1
        assert not merged.exists()
    if method.adapter:
        from peft import PeftModel

        from runner.model.load import load_model

        assert main(["export", str(run_dir), "--adapter", str(adapter)]) == 0
        base, _ = load_model("random-tiny", 7)
        adapted = PeftModel.from_pretrained(base, adapter)
        if not method.mergeable:
            model = adapted
    else:
        assert main(["export", str(run_dir), "--adapter", str(adapter)]) == 1
    model.eval()
    exported = merged if method.mergeable else adapter
    assert (exported / "chat_template.jinja").is_file() and (exported / "tokenizer.json").is_file()
    for row in fine_tuned_rows(run_dir):
        expected = reference_logprobs(model, run_dir, row["prompt"])
        for label, value in row["label_logprobs"].items():
            assert expected[label] == pytest.approx(value, abs=TOLERANCE)


def test_export_refusals_say_what_to_do_instead(method_run, tmp_path, capsys):
    kind, run_dir = method_run
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", str(run_dir), "--merged", str(taken)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert (taken / "keep.txt").read_text() == "mine"
    if kind == "prompt_tuning":
        assert main(["export", str(run_dir), "--merged", str(tmp_path / "m")]) == 1
        err = capsys.readouterr().err
        assert "cannot be merged" in err and "--adapter" in err
    if kind == "full":
        assert main(["export", str(run_dir), "--adapter", str(tmp_path / "a")]) == 1
        assert "has no adapter" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    from conftest import make_workdir

    workdir = make_workdir(tmp_path_factory.mktemp("predict"))
    raw = base_spec()
    raw["training"]["epochs"] = 1
    raw["evaluation"]["baselines"] = ["fine_tuned"]
    assert main(["run", str(write_spec(workdir / "spec.yaml", raw))]) == 0
    return only_run_dir(workdir)


def test_predict_reads_csv_and_standard_input_and_compares_labels_when_rows_have_them(
    lora_run, tmp_path, capsys, monkeypatch
):
    rows = [
        {"text": "The product 1 was great.", "sentiment": "positive"},
        {"text": "It broke.", "sentiment": "negative"},
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["text", "sentiment"])
    writer.writeheader()
    writer.writerows(rows)
    (tmp_path / "rows.csv").write_text(buffer.getvalue())
    assert main(["predict", str(lora_run), "--input", str(tmp_path / "rows.csv")]) == 0
    captured = capsys.readouterr()
    from_csv = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["gold"] for r in from_csv] == ["positive", "negative"]
    assert all(r["correct"] == (r["prediction"] == r["gold"]) for r in from_csv)
    right = sum(r["correct"] for r in from_csv)
    assert f"2 rows predicted. {right} of the 2 rows with a label predicted right ({50 * right:.0f}%)." in captured.err

    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in rows)))
    assert main(["predict", str(lora_run), "--input", "-"]) == 0
    from_stdin = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label_logprobs"] for r in from_stdin] == [r["label_logprobs"] for r in from_csv]


def test_predict_names_every_bad_row_and_writes_nothing(lora_run, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"review": "no text field"}\n{"text": "ok"}\n{"txt": "typo"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(lora_run), "--input", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 2: no 'text' field, which the prompt uses; the row's fields are: review." in err
    assert "row 4: no 'text' field" in err and "row 1" not in err and "row 3" not in err
    assert not out.exists() and not (tmp_path / "out.jsonl.partial").exists()

    path.write_text('{"text": "fine"}\n{"text": broken\n')
    assert main(["predict", str(lora_run), "--input", str(path)]) == 2
    assert "line 2: not valid JSON" in capsys.readouterr().err


def test_predict_and_export_need_a_finished_run_folder(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--input", "x.jsonl"]) == 2
    assert "no inference.json and model/ here" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--merged", str(tmp_path / "out")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_freeze_with_more_blocks_than_the_model_has_stops_before_a_run_folder(workdir, capsys):
    raw = base_spec(method={"kind": "freeze", "freeze": {"blocks": 5}})
    assert main(["run", str(write_spec(workdir / "spec.yaml", raw))]) == 2
    err = capsys.readouterr().err
    assert "$.method.freeze.blocks: 5, but the model has 2 blocks; use at most 2" in err
    assert not (workdir / "runs").exists()
