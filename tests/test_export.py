"""`runner export` gives a folder other tools load: a tokenizer class transformers 4.x knows (and
5.x still loads), the spec's max_length, weights in the dtype asked for, and a model card whose
own loading code reproduces runner's scores of the run's model.

One real tiny run (random-tiny, LoRA, one epoch) serves the module. The transformers 4.x side is
checked for real by tests/benchmarks/export_transformers4.py (it needs a second environment).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import base_spec, make_workdir, write_spec

from runner.cli import main
from runner.errors import RunnerError

FP32 = 1e-4  # label log-likelihoods from two fp32 computations of the same weights (merge order, batching)
# Fast tokenizer classes that transformers 4.x (4.28 on) and 5.x both have and build from tokenizer.json.
PORTABLE_CLASSES = {"PreTrainedTokenizerFast"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real `runner run` on the tiny model (LoRA, with its chat template)."""
    root = make_workdir(tmp_path_factory.mktemp("export"))
    raw = base_spec()
    raw["training"]["epochs"] = 1
    raw["evaluation"]["baselines"] = ["majority", "fine_tuned"]
    assert main(["run", str(write_spec(root / "spec.yaml", raw))]) == 0
    (run,) = (root / "runs" / "tiny").iterdir()
    return run


@pytest.fixture(scope="module")
def merged(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "exported"
    assert main(["export", str(run_dir), "--merged", str(out)]) == 0
    return out


def card_code(folder: Path) -> str:
    """The Python block of the folder's model card."""
    (code,) = re.findall(r"^```+python\n(.*?)^```+$", (folder / "README.md").read_text(), re.S | re.M)
    return code


def run_card_code(folder: Path, monkeypatch) -> dict:
    """Run the card's own code as a user would, beside the folder; its namespace after."""
    monkeypatch.chdir(folder.parent)
    namespace: dict = {}
    exec(compile(card_code(folder), str(folder / "README.md"), "exec"), namespace)
    return namespace


def runners_own_scores(run_dir: Path, prompt: str) -> dict[str, float]:
    """The run's model as runner loads and scores it: model/ through load_run_model, runner's
    Encoder (chat template, label tokens) and Evaluator.label_scores."""
    from runner.data.encode import Encoder
    from runner.evaluation.evaluator import Evaluator
    from runner.rundir.model_files import load_run_model, read_inference

    inference = read_inference(run_dir)
    entry = inference["tasks"][inference["primary_task"]]
    model, tokenizer = load_run_model(run_dir, inference)
    encoder = Encoder(tokenizer, inference["max_length"], inference["chat_template"])
    evaluator = Evaluator(model, encoder, 8, 8, torch.device("cpu"))
    scores = evaluator.label_scores([encoder.prompt_ids(prompt)], tuple(entry["labels"]), entry["label_eos"])
    return dict(zip(entry["labels"], scores[0].tolist()))


def test_merged_export_loads_in_transformers_5_with_a_class_4x_knows_and_the_specs_max_length(merged):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((merged / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in PORTABLE_CLASSES
    assert "TokenizersBackend" not in (merged / "tokenizer_config.json").read_text()
    assert config["model_max_length"] == 128  # the spec's model.max_length, not 1e30
    assert config["chat_template"] == (merged / "chat_template.jinja").read_text()  # for 4.x before the file
    assert config["additional_special_tokens"] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    model_config = json.loads((merged / "config.json").read_text())
    assert model_config["dtype"] == model_config["torch_dtype"] == "float32"
    assert model_config["rope_theta"] == model_config["rope_parameters"]["rope_theta"]  # 4.x reads no rope_parameters

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert "peft" not in type(model).__module__ and model.dtype == torch.float32
    assert tokenizer.model_max_length == 128 and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template == (merged / "chat_template.jinja").read_text()


def test_the_cards_own_code_on_the_merged_export_scores_as_runner_scores_the_run(merged, run_dir, monkeypatch, capsys):
    namespace = run_card_code(merged, monkeypatch)
    prompt, scores = namespace["prompt"], namespace["scores"]
    assert capsys.readouterr().out.startswith(max(scores, key=scores.get))
    expected = runners_own_scores(run_dir, prompt)
    assert scores.keys() == expected.keys() == {"positive", "negative"}
    for label, value in expected.items():
        assert scores[label] == pytest.approx(value, abs=FP32)
    # The same row as the run itself scored it (predictions.jsonl keeps 4 decimals).
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if r["rung"] == "fine_tuned" and r["prompt"] == prompt]
    for label, value in row["label_logprobs"].items():
        assert scores[label] == pytest.approx(value, abs=1e-3)


def test_the_card_names_base_licence_labels_template_prompt_metrics_and_how_to_load(merged, run_dir):
    card = (merged / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "other" and "base_model" not in meta  # random-tiny: no hub model, no licence
    assert meta["library_name"] == "transformers" and {"runner", "lora", "text-classification"} <= set(meta["tags"])
    assert "the base model's, which runner does not know" in body
    assert "Labels (2): `positive`, `negative`." in body
    template = (run_dir / "templates" / "sentiment.jinja").read_text()
    assert f"```jinja\n{template}```" in body
    assert "<|im_start|>user\nReview: The product" in body  # the chat template applied to a real test row
    report = json.loads((run_dir / "report.json").read_text())
    tuned = report["tasks"]["sentiment"]["test"]["fine_tuned"]
    low, high = tuned["ci95"]["accuracy"]
    assert f"| `fine-tuned` | {tuned['accuracy']:.3f} [{low:.3f}, {high:.3f}] |" in body
    assert "`majority class (no model)" in body
    assert "No forgetting probes ran" in body
    assert "AutoModelForCausalLM.from_pretrained('exported')" in body


def test_bf16_export_writes_bf16_tensors_its_config_says_so_and_it_scores_close(run_dir, merged, tmp_path, monkeypatch):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bf16"
    assert main(["export", str(run_dir), "--merged", str(out), "--dtype", "bf16"]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert "as bf16" in (out / "README.md").read_text()
    fp32 = run_card_code(merged, monkeypatch)["scores"]
    bf16 = run_card_code(out, monkeypatch)["scores"]
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, abs=0.1)  # rounded weights, the same model


def test_fp16_adapter_export_keeps_fp16_adapter_weights_and_its_card_code_loads_it(run_dir, tmp_path, monkeypatch):
    from safetensors import safe_open

    out = tmp_path / "adapter"
    assert main(["export", str(run_dir), "--adapter", str(out), "--dtype", "fp16"]) == 0
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
    card = (out / "README.md").read_text()
    assert "[More Information Needed]" not in card  # ours, not peft's empty template
    assert yaml.safe_load(card.split("---\n", 2)[1])["library_name"] == "peft"
    namespace = run_card_code(out, monkeypatch)  # PeftModel on random-tiny, as the card says
    assert "peft" in type(namespace["model"]).__module__
    expected = runners_own_scores(run_dir, namespace["prompt"])
    assert namespace["scores"] == pytest.approx(expected, abs=1e-2)  # fp16-rounded adapter weights


def test_a_bad_dtype_or_a_damaged_report_stops_before_anything_is_written(run_dir, tmp_path, capsys):
    from runner.flows.export import export

    with pytest.raises(RunnerError, match=r"--dtype fp8: expected one of fp32, bf16, fp16"):
        export(run_dir, tmp_path / "x", merged=True, dtype="fp8")
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), "--merged", str(tmp_path / "x"), "--dtype", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    copy_dir = tmp_path / "run"
    shutil.copytree(run_dir, copy_dir)
    (copy_dir / "report.json").write_text('{"tasks": [1, 2]')
    assert main(["export", str(copy_dir), "--merged", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "report.json: not valid JSON" in err and "Traceback" not in err
    (copy_dir / "report.json").write_text(json.dumps({"tasks": {"sentiment": {"kind": "classification"}}}))
    assert main(["export", str(copy_dir), "--merged", str(tmp_path / "y")]) == 2
    assert "report.json: not a report runner writes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not list(tmp_path.glob("*.partial"))


# --- the card's parts on their own ---------------------------------------------------------------


def card_for(run_dir: Path, source: str, edit=None, template: str | None = None) -> str:
    """The card of `run_dir` as if its base model were `source` (report and inference edited)."""
    from runner.flows.export import base_model
    from runner.report.model_card import Example, ExportInfo, model_card
    from runner.results import RunResult
    from runner.rundir.model_files import read_inference

    inference = read_inference(run_dir)
    inference["model_source"] = source
    report = json.loads((run_dir / "report.json").read_text())
    report["model"]["source"] = source
    if edit:
        edit(report, inference)
    templates = {"sentiment": template or (run_dir / "templates" / "sentiment.jinja").read_text()}
    examples = {"sentiment": Example("Review: fine\nSentiment:", "Review: fine\nSentiment:", "positive")}
    info = ExportInfo(merged=False, dtype="fp32", folder="adapter", runner_version="0", chat=False)
    return model_card(RunResult.from_json(report), inference, templates, examples, base_model(inference), info)


def test_the_default_model_is_apache_2_0_and_named_by_its_hub_id(run_dir):
    card = card_for(run_dir, "smollm2-135m-instruct")
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["base_model_relation"] == "adapter"
    assert "apache-2.0, the base model's" in card
    assert "base = AutoModelForCausalLM.from_pretrained('HuggingFaceTB/SmolLM2-135M-Instruct')" in card
    assert "de-quantisation of the Q4_1 GGUF" in card
    # Without a chat template the label follows the prompt after a space, as runner trained it.
    assert 'prompt_ids = tokenizer(prompt)["input_ids"]' in card and 'tokenizer(" " + label' in card

    unknown = card_for(run_dir, "someone/their-model")
    meta = yaml.safe_load(unknown.split("---\n", 2)[1])
    assert meta["license"] == "other" and meta["base_model"] == "someone/their-model"
    assert "the base model's, which runner does not know" in unknown


def test_user_text_stays_inert_in_the_card(run_dir):
    hostile = "a | b\n# heading\n```\n<script>x</script> `tick`\x1b[31m"

    def edit(report, inference):
        report["name"] = hostile
        report["description"] = hostile
        report["tasks"]["sentiment"]["test"]["majority"]["answer"] = hostile
        inference["tasks"]["sentiment"]["labels"] = [hostile, "no"]

    card = card_for(run_dir, "random-tiny", edit, template="Review: {{ text }}\n```\n|||\n{{ sentiment }}\n")
    yaml.safe_load(card.split("---\n", 2)[1])  # the front matter still parses
    body = card.split("---\n", 2)[2]
    assert "\x1b" not in card  # written as the four characters \x1b
    prose = re.sub(r"^(`{3,}).*?^\1$", "", body, flags=re.S | re.M)  # outside fenced blocks...
    prose = re.sub(r"(`+).+?\1", "", prose)  # ...and code spans, where nothing renders
    assert "<script>" not in prose and "\n# heading" not in prose and "a \\| b \\# heading" in prose
    (majority,) = [line for line in body.splitlines() if "majority class" in line]
    assert len(re.findall(r"(?<!\\)\|", majority)) == 5  # 4 cells: the hostile pipe is escaped
    # The hostile template's own ``` line sits inside a longer fence, which it cannot close.
    assert "````jinja\nReview: {{ text }}\n```\n|||\n{{ sentiment }}\n````" in body


def test_forgetting_results_are_in_the_card(run_dir):
    def edit(report, inference):
        report["forgetting"] = {
            "general": {
                "kind": "multiple_choice",
                "metric": "accuracy",
                "before": 0.5,
                "after": 0.25,
                "delta": -0.25,
                "retention": 0.5,
                "higher_is_better": True,
                "details_before": {},
                "details_after": {},
                "delta_ci95": [-0.4, -0.1],
                "excludes_zero": True,
            },
            "drift": {"kind": "drift", "metric": "kl_per_token", "value": 0.125},
        }
        report["forgetting_summary"] = "Forgetting detected on general."

    card = card_for(run_dir, "random-tiny", edit)
    assert "Forgetting detected on general." in card
    assert "| `general` | accuracy | 0.5000 | 0.2500 | -0.2500 | -0.400..-0.100 | 0.5000 |" in card
    assert "| `drift` | kl_per_token | — | 0.1250 |" in card


# --- the files other tools read -------------------------------------------------------------------


def test_legacy_merges_give_the_same_ids_and_pairs_with_spaces_stay_pairs(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from runner.flows.export import legacy_merges

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["the product was great", "the product broke", "great products break"] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    data = json.loads(backend.to_str())
    assert data["model"]["merges"] and isinstance(data["model"]["merges"][0], list)
    legacy = legacy_merges(copy.deepcopy(data))
    assert all(isinstance(m, str) and m.count(" ") == 1 for m in legacy["model"]["merges"])
    (tmp_path / "tokenizer.json").write_text(json.dumps(legacy))
    before = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)))
    after = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    text = "the great product broke, products were great"
    assert after(text)["input_ids"] == before(text)["input_ids"] and len(before(text)["input_ids"]) < len(text)

    spaced = {"model": {"type": "BPE", "merges": [["a b", "c"], ["d", "e"]]}}
    assert legacy_merges(copy.deepcopy(spaced)) == spaced


def test_portable_config_keeps_5x_reading_the_same_rope(tmp_path):
    from transformers import LlamaConfig

    from runner.flows.export import portable_model_config

    saved = tmp_path / "saved"
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0}
    rope |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    LlamaConfig(hidden_size=64, num_attention_heads=4, rope_parameters=rope).save_pretrained(saved)
    written = json.loads((saved / "config.json").read_text())
    portable = portable_model_config(written)
    assert portable["rope_theta"] == 500000.0 and portable["rope_scaling"]["rope_type"] == "llama3"
    (saved / "config.json").write_text(json.dumps(portable))
    assert LlamaConfig.from_pretrained(saved).rope_parameters == LlamaConfig(**written).rope_parameters
