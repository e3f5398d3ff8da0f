"""Label scoring with many multi-token labels: Banking77's 77 intents on its test queries.

    python tests/benchmarks/many_labels.py [--rows 300] [--copies-rows 60] [--precision auto|bf16|fp32]

Each case runs in its own process (so each peak RSS is its own), on the same prompts, through
runner's `Evaluator` built from a spec as `runner run` builds it:

- bare: one forward pass over the prompts (length-sorted batches, logits at the last position)
  — the least any scorer must do;
- tree: `label_scores`, the labels' tokens as a prefix tree in one pass after each prompt
  (runner/evaluation/continuations.py);
- copies: the same scores with the tree switched off (each multi-token label continues on its
  own copy of the prompt's keys/values, the path before the tree), on `--copies-rows` prompts
  and scaled, as it is slow; its scores are checked against the tree's on those prompts.

Needs ../shared/data/banking77 (skips with a message otherwise). Last line: key=value pairs.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
DATA = PROJECT.parent / "shared" / "data" / "banking77"
PRECISIONS = {"auto": "auto", "bf16": "bf16-mixed", "fp32": "32-true"}
PROMPT = "Classify this online-banking customer query into one of the bank's intents.\nQuery: {text}\nIntent:"


def case(name: str, rows: int, precision: str) -> dict:
    """One case in this process: seconds, peak RSS and the scores' argmax per prompt."""
    import torch
    from eval_throughput import bare_forward

    from runner.evaluation import evaluator as evaluator_module
    from runner.evaluation.continuations import tree_size
    from runner.evaluation.scoring import make_evaluator
    from runner.inputs import prepare_inputs
    from runner.model.load import load_model
    from runner.spec.load import load_spec
    from runner.training.memory import peak_rss_mb

    spec = load_spec(PROJECT / "experiments" / "ticket_urgency.yaml", [f"trainer.precision={PRECISIONS[precision]}"])
    encoder = prepare_inputs(spec, with_probes=False).encoder
    labels = tuple(json.loads((DATA / "categories.json").read_text()))
    with open(DATA / "test.csv", newline="", encoding="utf-8") as f:
        queries = list(csv.DictReader(f))
    random.Random(0).shuffle(queries)
    queries = queries[:rows]
    prompts = [encoder.prompt_ids(PROMPT.format(text=q["text"])) for q in queries]
    model, _ = load_model(spec.model.source)
    evaluator = make_evaluator(model, encoder, spec)
    from runner.data.truncation import prefix_labels

    add_eos = bool(prefix_labels(encoder, labels))  # as runner decides it for a task
    label_ids = [encoder.completion_ids(label, add_eos=add_eos) for label in labels]
    if name == "copies":
        evaluator_module.tree_attention = lambda model: None
    started_rss = peak_rss_mb()
    started = time.perf_counter()
    if name == "bare":
        bare_forward(evaluator, prompts, encoder.max_length - max(map(len, label_ids)))
        picks = []
    else:
        scores = evaluator.label_scores(prompts, labels, add_eos=add_eos)
        picks = scores.argmax(1).tolist()
    seconds = time.perf_counter() - started
    gold = [labels.index(q["category"]) for q in queries]
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "loaded_rss_mb": started_rss,
        "picks": picks,
        "accuracy": sum(p == g for p, g in zip(picks, gold)) / len(gold) if picks else None,
        "prompt_tokens": sum(map(len, prompts)) / len(prompts),
        "label_tokens": [len(ids) for ids in label_ids],
        "tree_nodes": tree_size(label_ids),
        "end_token": add_eos,
        "scores": scores[:, :].tolist() if name != "bare" else None,
        "threads": torch.get_num_threads(),
    }


def run(name: str, rows: int, precision: str) -> dict:
    """A case in a fresh process."""
    command = [sys.executable, __file__, "--case", name, "--rows", str(rows), "--precision", precision]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.exit(f"case {name} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(lines[-1])


def main() -> None:
    """Run bare, tree and copies; print times, ratios, peaks and whether the scores agree."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--copies-rows", type=int, default=60)
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="auto")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case, args.rows, args.precision)))
        return
    if not (DATA / "test.csv").is_file():
        print(f"Banking77 not found at {DATA}: nothing to measure.")
        return
    from machine import machine_lines

    for line in machine_lines():
        print(line)
    bare = run("bare", args.rows, args.precision)
    tree = run("tree", args.rows, args.precision)
    tree_small = run("tree", args.copies_rows, args.precision)
    copies = run("copies", args.copies_rows, args.precision)
    import torch

    diff = (torch.tensor(tree_small["scores"]) - torch.tensor(copies["scores"])).abs().max().item()
    same = sum(a == b for a, b in zip(tree_small["picks"], copies["picks"]))
    ratio = tree["seconds"] / bare["seconds"]
    copies_ratio = copies["seconds"] / tree_small["seconds"]
    print(
        f"\n{args.rows} Banking77 test queries (mean {tree['prompt_tokens']:.0f} prompt tokens), 77 labels of "
        f"{min(tree['label_tokens'])}-{max(tree['label_tokens'])} tokens (end token "
        f"{'included' if tree['end_token'] else 'not needed'}), a tree of {tree['tree_nodes']} nodes: "
        f"no exact scorer does less than (prompt + nodes) / prompt = "
        f"{(tree['prompt_tokens'] + tree['tree_nodes']) / tree['prompt_tokens']:.2f}x the bare forward's tokens"
    )
    print(f"  bare forward   {bare['seconds']:7.2f} s   peak {bare['peak_rss_mb']:,.0f} MB")
    print(
        f"  label scoring  {tree['seconds']:7.2f} s   peak {tree['peak_rss_mb']:,.0f} MB   "
        f"{ratio:.2f}x the bare forward (target <= 1.5), zero-shot accuracy {tree['accuracy']:.3f}"
    )
    print(
        f"  on {args.copies_rows} queries: tree {tree_small['seconds']:.2f} s, copies {copies['seconds']:.2f} s "
        f"({copies_ratio:.1f}x), peak {copies['peak_rss_mb']:,.0f} MB; same label picked {same}/{len(copies['picks'])}, "
        f"largest score difference {diff:.2e}"
    )
    print(
        f"rows={args.rows} bare_s={bare['seconds']:.2f} tree_s={tree['seconds']:.2f} tree_over_bare={ratio:.2f} "
        f"tree_peak_mb={tree['peak_rss_mb']:.0f} bare_peak_mb={bare['peak_rss_mb']:.0f} copies_over_tree={copies_ratio:.2f} "
        f"copies_peak_mb={copies['peak_rss_mb']:.0f} same_picks={same}/{len(copies['picks'])} max_diff={diff:.2e}"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
