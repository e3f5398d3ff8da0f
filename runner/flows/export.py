"""`runner export RUN_DIR (--merged OUT | --adapter OUT) [--dtype bf16|fp16|fp32]`: take a run's model away.

--merged: a plain Hugging Face folder (adapters folded into the weights) that loads with
`AutoModelForCausalLM.from_pretrained`, no peft needed. --adapter: the peft adapter alone, for
`PeftModel.from_pretrained(base, OUT)`. The tokenizer and its chat template go with either, and
a model card (README.md) built from the run's report.

The folder is written for other tools too, not only for the transformers runner uses (5.x):
tools built on transformers 4.x (llama.cpp's converter, mlx-lm, older vLLM) read the same files
but know neither 5.x's tokenizer class name nor its config keys, so the files name what both
read (see make_portable). tests/benchmarks/export_transformers4.py checks a real 4.x loads them.
"""

from __future__ import annotations

import json
import re
import shutil
from itertools import islice
from pathlib import Path

import torch

from runner import __version__
from runner.errors import RunFolderError, RunnerError
from runner.model.methods import METHODS
from runner.model.sources import DEFAULT_MODEL, RANDOM_TINY
from runner.report.model_card import BaseModel, Example, ExportInfo, model_card
from runner.results import RunResult
from runner.rundir.folder import CHANGED, writing
from runner.rundir.model_files import REPORT_MAX_BYTES, load_run_model, read_inference, read_object
from runner.terminal import printable

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def export(run_dir: Path, out: Path, merged: bool, dtype: str = "fp32") -> Path:
    """Write the run's model to a new folder `out`, merged into the base weights or as its peft
    adapter, its weights in `dtype` (an adapter's too: peft casts them back to the base model's
    dtype as it loads them), with a portable tokenizer and a model card (README.md).

    The folder is written beside `out` and renamed into place, so a failed export leaves nothing at `out`.

    The run folder is checked first (read_inference, report.json): a damaged or changed file stops
    before any work.

    Raises:
        RunnerError: `out` is not empty, `dtype` unknown, or the run's method cannot be exported that way.
        RunFolderError: a file in the run folder is damaged or changed.
    """
    inference = read_inference(run_dir)
    check_target(run_dir, out, inference["method"], merged, dtype)
    result = read_report(run_dir)
    partial = out.with_name(out.name + ".partial")  # a failed export leaves no half folder at OUT
    shutil.rmtree(partial, ignore_errors=True)
    model, tokenizer = load_run_model(run_dir, inference)
    if merged and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # merged in float32 and cast once, not rounded twice
    model = model.to(DTYPES[dtype])
    card = card_text(run_dir, inference, result, tokenizer, merged, dtype, out.name)
    with writing(out):
        try:
            model.save_pretrained(partial, safe_serialization=True)
            tokenizer.save_pretrained(partial)
            make_portable(partial, inference["max_length"], tokenizer)
            (partial / "README.md").write_text(card, encoding="utf-8")  # in place of peft's empty template
            if out.exists():
                out.rmdir()
            partial.replace(out)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return out


def check_target(run_dir: Path, out: Path, kind: str, merged: bool, dtype: str) -> None:
    """What the user asked for, before any work: a new folder, a known dtype, a way the method exports."""
    if dtype not in DTYPES:
        raise RunnerError(f"--dtype {printable(dtype, 20)}: expected one of {', '.join(DTYPES)} (default fp32).")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunnerError(f"{out}: exists and is not empty; export writes a new folder (nothing is overwritten).")
    method = METHODS[kind]
    if merged and not method.mergeable:
        raise RunnerError(
            f"{run_dir}: method {kind!r} cannot be merged into the weights: its virtual tokens are inputs "
            f"the model reads, not a change to its weights. Export the adapter instead: "
            f"runner export {run_dir} --adapter {out} (loads with PeftModel.from_pretrained)."
        )
    if not merged and not method.adapter:
        raise RunnerError(
            f"{run_dir}: method {kind!r} trains the model's own weights and has no adapter; "
            f"use runner export {run_dir} --merged {out} for a plain Hugging Face folder."
        )


# What a report.json that is not runner's (damaged, hand-edited, hostile) raises while read or shown.
UNREADABLE = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError)


def read_report(run_dir: Path) -> RunResult:
    """The run's report.json as typed results, for the model card.

    Raises:
        RunFolderError: no report.json, or one that is not runner's (exit 2).
    """
    path = run_dir / "report.json"
    if not path.is_file():
        problems = ["report.json: missing; export writes the model card (README.md) from it."]
    else:
        data, problems = read_object(path, "report.json", REPORT_MAX_BYTES)
        if data is not None:
            try:
                return RunResult.from_json(data)
            except UNREADABLE as exc:
                problems = [f"report.json: not a report runner writes ({printable(exc, 120)})."]
    raise RunFolderError(str(run_dir), problems, footer=CHANGED)


def card_text(
    run_dir: Path, inference: dict, result: RunResult, tokenizer, merged: bool, dtype: str, folder: str
) -> str:
    """The model card; a report.json whose values are not what runner writes is a located error."""
    chat = bool(inference["chat_template"] and getattr(tokenizer, "chat_template", None))  # as runner's Encoder
    export = ExportInfo(merged, dtype, folder, __version__, chat)
    templates = {
        name: Path(entry["template"]).read_text(errors="replace") for name, entry in inference["tasks"].items()
    }
    examples = {
        name: Example(row["prompt"], model_text(tokenizer, row["prompt"], chat), row.get("gold"))
        for name, row in test_prompts(run_dir, set(inference["tasks"])).items()
    }
    try:
        return model_card(result, inference, templates, examples, base_model(inference), export)
    except UNREADABLE as exc:
        problem = f"report.json: a value is not what runner writes ({printable(exc, 120)})."
        raise RunFolderError(str(run_dir), [problem], footer=CHANGED) from None


def model_text(tokenizer, prompt: str, chat: bool) -> str:
    """What the model reads for `prompt`, as runner's Encoder builds it (runner.data.encode)."""
    if not chat:
        return prompt
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


PREDICTION_LINES = 1_000_000  # enough for every rung of a large test split; a damaged file ends the search


def test_prompts(run_dir: Path, tasks: set[str]) -> dict[str, dict]:
    """Each task's first test row in predictions.jsonl, the fine-tuned rung's when it has one:
    {task: {"prompt", "gold"}}. Rows that are not runner's are passed over; none found is no example."""
    found: dict[str, dict] = {}
    try:
        with (run_dir / "predictions.jsonl").open(encoding="utf-8") as lines:
            for line in islice(lines, PREDICTION_LINES):
                row = json.loads(line) if len(line) < 2**20 else None
                if not (isinstance(row, dict) and row.get("task") in tasks and isinstance(row.get("prompt"), str)):
                    continue
                gold = row.get("gold") if isinstance(row.get("gold"), str) else None
                seen = found.get(row["task"])
                if seen is None or (row.get("rung") == "fine_tuned" and seen["rung"] != "fine_tuned"):
                    found[row["task"]] = {"prompt": row["prompt"], "gold": gold, "rung": row.get("rung")}
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        pass  # no example in the card: the rest of it stands
    return found


SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Licences runner knows: every SmolLM2 release is Apache-2.0 (the default model is one).
KNOWN_LICENCES = {"HuggingFaceTB/SmolLM2-": "apache-2.0"}


def base_model(inference: dict) -> BaseModel:
    """What the card says of the base model: its hub id and licence where runner knows them, and
    the Python that loads it (for an adapter)."""
    source = inference["model_source"]
    if source == DEFAULT_MODEL:
        note = (
            f"the run trained on runner's float32 de-quantisation of the Q4_1 GGUF file named above, not on "
            f"{SMOLLM2}'s own bf16 release; an adapter put on that release scores slightly differently"
        )
        return BaseModel(
            source, SMOLLM2, "apache-2.0", f"base = AutoModelForCausalLM.from_pretrained({SMOLLM2!r})", note
        )
    if source == RANDOM_TINY:
        args = ", ".join(
            repr(a) for a in (source, inference["seed"], inference.get("tokenizer_source")) if a is not None
        )
        code = f"from runner.model.load import load_model\nbase, _ = load_model({args})"
        note = "random-tiny: random weights runner makes from the run's seed, for tests and smoke runs only"
        return BaseModel(source, None, None, code, note)
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        code = f"base = AutoModelForCausalLM.from_pretrained({str(path.parent)!r}, gguf_file={path.name!r})"
        return BaseModel(source, None, None, code, "de-quantised from its GGUF file on load, as runner did")
    hub_id = source if HUB_ID.fullmatch(source) and not path.exists() else None
    licence = next((lic for prefix, lic in KNOWN_LICENCES.items() if hub_id and hub_id.startswith(prefix)), None)
    return BaseModel(source, hub_id, licence, f"base = AutoModelForCausalLM.from_pretrained({source!r})")


# --- files other tools read ---------------------------------------------------------------------

PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# Keys transformers 5 writes that mean nothing to a reader of the folder (or only to 5.x).
DROPPED_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only", "name_or_path")


def make_portable(folder: Path, max_length: int, tokenizer) -> None:
    """Rewrite the saved tokenizer and config files so that transformers 4.x loads them as 5.x does."""
    path = folder / "tokenizer_config.json"
    path.write_text(dump(portable_tokenizer_config(json.loads(path.read_text()), max_length, tokenizer)))
    path = folder / "tokenizer.json"
    if path.is_file():
        path.write_text(dump(legacy_merges(json.loads(path.read_text(encoding="utf-8")))), encoding="utf-8")
    path = folder / "config.json"  # a merged model's (an adapter folder has adapter_config.json)
    if path.is_file():
        path.write_text(dump(portable_model_config(json.loads(path.read_text()))))


def dump(data: dict) -> str:
    """JSON as transformers writes it: indented, non-ASCII kept."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def portable_tokenizer_config(saved: dict, max_length: int, tokenizer) -> dict:
    """tokenizer_config.json that transformers 4.x and 5.x both load to the same tokenizer.

    The class: 5.x writes "TokenizersBackend", which 4.x does not know. "PreTrainedTokenizerFast"
    is a class both have, and both build it from tokenizer.json as it is; a family class would not
    (4.x's LlamaTokenizerFast rewrites the post-processor to add a BOS token, 5.x's family classes
    rebuild the tokenizer from its vocabulary), so the same text could become other ids.
    model_max_length: the run's max_length instead of 5.x's "no limit" (1e30).
    """
    config = {key: value for key, value in saved.items() if key not in DROPPED_TOKENIZER_KEYS}
    config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):  # 5.x's list is 4.x's additional_special_tokens (4.x reads a dict there)
        config["additional_special_tokens"] = extra
    elif extra:
        config["extra_special_tokens"] = extra
    config["model_max_length"] = max_length
    config["clean_up_tokenization_spaces"] = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates, as 4.x lists them
        template = [{"name": name, "template": text} for name, text in template.items()]
    if template:  # 4.x before chat_template.jinja reads it here (4.x and 5.x read the file, same text)
        config["chat_template"] = template
    return config


def legacy_merges(data: dict) -> dict:
    """tokenizer.json with a BPE model's merges as "a b" strings, as tokenizers before 0.20 (so
    transformers before 4.45) read them; newer tokenizers read both forms to the same merges.
    Pairs stay pairs when a token holds a space, which only the newer form can say."""
    model = data.get("model")
    merges = model.get("merges") if isinstance(model, dict) and model.get("type") == "BPE" else None
    if isinstance(merges, list) and all(
        isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) and p and " " not in p for p in m)
        for m in merges
    ):
        model["merges"] = [f"{a} {b}" for a, b in merges]
    return data


def portable_model_config(config: dict) -> dict:
    """config.json with the keys 4.x reads beside 5.x's: torch_dtype (4.x before 4.56 reads no
    "dtype"), and rope_theta/rope_scaling, which 5.x keeps only inside rope_parameters: without
    them 4.x silently takes its default base 10000 (SmolLM2's is 100000) and computes other logits."""
    config = dict(config)
    if "dtype" in config:
        config["torch_dtype"] = config["dtype"]
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:  # one RoPE for every layer (not per layer type)
        config.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    return config
