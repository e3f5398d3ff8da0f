"""Does a `runner export --merged` folder load in transformers 4.x, and score as in 5.x?

    .venv/bin/python tests/benchmarks/export_transformers4.py [--export DIR] [--model SOURCE]
        [--transformers 4.33.0 4.57.6 ...] [--venvs /tmp/runner-tf4]

Without --export it makes one: a tiny run (the test suite's sentiment rows, a few optimizer steps)
on --model (default random-tiny; smollm2-135m-instruct checks the real model's tokenizer merges
and RoPE base, which random-tiny cannot show), then `runner export RUN --merged`.

For each 4.x version it makes a plain venv under --venvs (never --system-site-packages, which
would see this project's transformers 5) with `pip install torch==2.13.0 transformers==X
safetensors` (pip takes the local torch wheel; tokenizers as transformers pins it), and runs one
probe script there and here (transformers 5): load the folder with AutoModelForCausalLM and
AutoTokenizer, build each prompt's ids as runner does (the tokenizer's own chat template where
that version's apply_chat_template takes add_generation_prompt, else 5.x's rendering of it), and sum each label's
log-likelihood after it, in float32. Prints, per version, whether it installed and loaded, the
tokenizer class, whether the ids match, and the largest absolute log-likelihood difference;
ends with one key=value line.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-3  # label log-likelihoods in float32, as tests/test_methods.py holds an export to
sys.path.insert(0, str(PROJECT / "tests"))

# Runs unchanged under transformers 4.31 ... 5.x: reads {folder, rows, labels, chat, label_eos}
# on stdin, prints what it loaded and every label's summed log-likelihood as JSON.
PROBE = r"""
import inspect, json, sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

args = json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained(args["folder"])
major = int(transformers.__version__.split(".")[0])
dtype = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
model = AutoModelForCausalLM.from_pretrained(args["folder"], **dtype).eval()
# apply_chat_template came in 4.34, add_generation_prompt in 4.35 (4.34 drops it without a word)
own_chat = "add_generation_prompt" in inspect.signature(getattr(tok, "apply_chat_template", len)).parameters
own_chat = own_chat and bool(getattr(tok, "chat_template", None))
out = {"transformers": transformers.__version__, "tokenizer": type(tok).__name__,
       "model": type(model).__name__, "model_max_length": tok.model_max_length, "own_chat": own_chat, "rows": []}
for row in args["rows"]:
    if args["chat"]:
        text = row["text"]
        if own_chat:
            messages = [{"role": "user", "content": row["prompt"]}]
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        text, prompt_ids = row["prompt"], tok(row["prompt"])["input_ids"]
    scores = {}
    for label in args["labels"]:
        label_ids = tok(label if args["chat"] else " " + label, add_special_tokens=False)["input_ids"]
        label_ids = label_ids + ([tok.eos_token_id] if args["label_eos"] else [])
        ids = prompt_ids + label_ids
        with torch.no_grad():
            logprobs = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        scores[label] = sum(logprobs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(label_ids))
    out["rows"].append({"text": text, "ids": prompt_ids, "scores": scores})
print("PROBE" + json.dumps(out))
"""


def make_export(model: str, root: Path) -> tuple[Path, Path]:
    """A short real run on `model` and its merged export: (the export, the run folder)."""
    from conftest import base_spec, make_workdir, write_spec

    make_workdir(root)
    raw = base_spec(model={"source": model, "max_length": 128})
    raw["training"] = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_steps": 3}
    raw["evaluation"]["baselines"] = ["fine_tuned"]
    spec = write_spec(root / "spec.yaml", raw)
    subprocess.run([sys.executable, "-m", "runner", "-q", "run", str(spec)], cwd=root, check=True)
    (run,) = (root / "runs" / "tiny").iterdir()
    out = root / "exported"
    subprocess.run([sys.executable, "-m", "runner", "-q", "export", str(run), "--merged", str(out)], check=True)
    return out, run


def card_example(folder: Path) -> dict:
    """What the folder's model card asks the model: its prompt, labels, and how it builds ids."""
    code = (folder / "README.md").read_text()
    prompt = ast.literal_eval(re.search(r"^prompt = (.*)$", code, re.M).group(1))
    labels = ast.literal_eval(re.search(r"^labels = (.*)$", code, re.M).group(1))
    return {
        "prompts": [prompt],
        "labels": labels,
        "chat": "apply_chat_template" in code,
        "label_eos": "tokenizer.eos_token_id]" in code,
    }


def probe_input(folder: Path, run: Path | None) -> dict:
    """The probe's input: the card's example, and every test prompt of the run when we made it."""
    from transformers import AutoTokenizer

    example = card_example(folder)
    prompts = example.pop("prompts")
    if run is not None:
        rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
        prompts += [r["prompt"] for r in rows if r["rung"] == "fine_tuned" and r["prompt"] not in prompts]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = []
    for prompt in prompts:  # the 5.x rendering, for a 4.x without apply_chat_template
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        rows.append({"prompt": prompt, "text": text if example["chat"] else prompt})
    return {"folder": str(folder.resolve()), "rows": rows, **example}


def probe(python: str, payload: dict) -> dict:
    """Run the probe under `python`; its JSON, or {"error": the tail of what it printed}."""
    done = subprocess.run([python, "-c", PROBE], input=json.dumps(payload), capture_output=True, text=True, timeout=600)
    for line in done.stdout.splitlines():
        if line.startswith("PROBE"):
            return json.loads(line[5:])
    return {"error": " ".join((done.stderr or done.stdout).split())[-600:]}


def venv_python(version: str, root: Path) -> tuple[str | None, str]:
    """A plain venv with transformers==`version` (made once, reused): (its python, what happened)."""
    venv = root / f"transformers-{version}"
    python = venv / "bin" / "python"
    check = [
        str(python),
        "-c",
        "import transformers, tokenizers; print(transformers.__version__, tokenizers.__version__)",
    ]
    if python.is_file():
        done = subprocess.run(check, capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.split()[0] == version:
            return str(python), f"tokenizers {done.stdout.split()[1]} (venv reused)"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    install = [str(python), "-m", "pip", "install", "-q", "torch==2.13.0", f"transformers=={version}", "safetensors"]
    done = subprocess.run(install, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "ERROR" in line or "error:" in line]
        return None, "does not install: " + " ".join(" ".join(errors[-3:] or done.stderr.split()[-40:]).split())[:500]
    done = subprocess.run(check, capture_output=True, text=True)
    return str(python), f"tokenizers {done.stdout.split()[1]}"


def compare(reference: dict, other: dict) -> tuple[float, bool, bool]:
    """(max |difference| of every label score, prompt ids all equal, prompt texts all equal)."""
    diffs, same_ids, same_text = [], True, True
    for ref, row in zip(reference["rows"], other["rows"]):
        same_ids &= ref["ids"] == row["ids"]
        same_text &= ref["text"] == row["text"]
        diffs += [abs(ref["scores"][label] - row["scores"][label]) for label in ref["scores"]]
    return max(diffs), same_ids, same_text


def main() -> int:
    """Make (or take) an export, probe it under each 4.x and under 5.x, print the differences."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, help="an exported --merged folder (default: make one)")
    parser.add_argument("--model", default="random-tiny", help="the run's model.source when making one")
    parser.add_argument("--transformers", nargs="+", default=["4.33.0", "4.57.6"], metavar="VERSION")
    parser.add_argument("--venvs", type=Path, default=Path("/tmp/runner-tf4"), help="where the venvs go")
    args = parser.parse_args()
    args.venvs.mkdir(parents=True, exist_ok=True)
    run = None
    if args.export is None:
        args.export, run = make_export(args.model, Path(tempfile.mkdtemp(prefix="export-", dir=args.venvs)))
    payload = probe_input(args.export, run)
    reference = probe(sys.executable, payload)
    if "error" in reference:
        print(f"transformers 5 does not load {args.export}: {reference['error']}")
        return 1
    n = len(reference["rows"]) * len(payload["labels"])
    print(f"{args.export}: {len(reference['rows'])} prompts x {len(payload['labels'])} labels; chat: {payload['chat']}")
    print(f"transformers {reference['transformers']} (this venv): {reference['tokenizer']}, {reference['model']}")
    summary = [f"model={args.model if run else 'given'}", f"reference={reference['transformers']}"]
    for version in args.transformers:
        python, how = venv_python(version, args.venvs)
        result = probe(python, payload) if python else {"error": how}
        key = "v" + version.replace(".", "_")
        if "error" in result:
            print(f"FAILS: transformers {version}: {result['error']}")
            summary.append(f"{key}=fails")
            continue
        worst, same_ids, same_text = compare(reference, result)
        verdict = "OK" if same_ids and worst <= TOLERANCE else "DIFFERS"
        chat = "its own" if result["own_chat"] else "5.x's text (this version cannot add the generation prompt)"
        print(
            f"{verdict}: transformers {version} ({how}): {result['tokenizer']}, {result['model']}, model_max_length "
            f"{result['model_max_length']}; chat template: {chat}; same texts: {same_text}; same ids: {same_ids}; "
            f"max |log-likelihood difference| over {n} label scores: {worst:.3g}"
        )
        summary.append(f"{key}_max_abs={worst:.3g}" + ("" if same_ids else f" {key}_ids=differ"))
    print(" ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
