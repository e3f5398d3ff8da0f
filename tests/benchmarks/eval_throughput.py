"""Scoring throughput on the default model: label scoring, multiple choice and generation.

    python tests/benchmarks/eval_throughput.py [--source smollm2-135m-instruct] [--rows 100]
        [--mc-items 200] [--gen-rows 20] [--precision auto|bf16|fp32] [--repeats 2]

Everything goes through runner's own `Evaluator`, built by `runner.evaluation.scoring.make_evaluator` from
experiments/ticket_urgency.yaml, the way `runner run` builds it:

- label scoring: `label_scores` over ticket test+val prompts, against one bare forward pass
  over the same prompts (same batches, left-padded, head on the last position only) — the ratio
  is what scoring four labels costs over the least any scorer must do (target <= 1.2);
- multiple choice: `candidate_scores` on ARC-Easy items (../shared/data/arc_easy when present,
  else items made from ticket rows), prompts and choices built as runner's multiple-choice
  probes build them (target: 200 items in <= 15 s);
- generation: `generate` on ticket prompts, and how many answers ended with the end-of-turn
  token before max_new_tokens.

Not a test: timings vary between runs and machines, so compare ratios within one run. The
last line is `key=value` pairs for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import time
from pathlib import Path

import torch
from machine import machine_lines

from runner.data.examples import render_example
from runner.data.templates import load_template
from runner.evaluation.evaluator import Evaluator, left_pad
from runner.evaluation.scoring import make_evaluator
from runner.inputs import prepare_inputs
from runner.model.load import load_model
from runner.spec.load import load_spec
from runner.spec.types import SUITES_DIR

PROJECT = Path(__file__).resolve().parents[2]
ARC_DIR = PROJECT.parent / "shared" / "data" / "arc_easy"
MC_TEMPLATE = SUITES_DIR / "general" / "multiple_choice.jinja"  # the built-in probe's prompt format
PRECISIONS = {"auto": "auto", "bf16": "bf16-mixed", "fp32": "32-true"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(evaluator: Evaluator, fn) -> tuple[float, object]:
    """(seconds, result) of fn(), waiting for the device to finish."""
    _sync(evaluator.device)
    started = time.perf_counter()
    result = fn()
    _sync(evaluator.device)
    return time.perf_counter() - started, result


def bare_forward(evaluator: Evaluator, prompts: list[list[int]], budget: int) -> None:
    """The least a scorer must do: one forward pass per batch of prompts, logits at the last
    position only. Same length-sorted batches, cropping and autocast as `candidate_scores`."""
    model = evaluator.model
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    prompts = sorted((p[-budget:] for p in prompts), key=len)
    pad = evaluator.encoder.tokenizer.pad_token_id
    autocast = (
        torch.autocast(evaluator.device.type, dtype=evaluator.autocast_dtype)
        if evaluator.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    model.eval()
    with torch.no_grad(), autocast:
        for start in range(0, len(prompts), evaluator.batch_size):
            ids, mask = left_pad(prompts[start : start + evaluator.batch_size], pad)
            model(input_ids=ids.to(evaluator.device), attention_mask=mask.to(evaluator.device), **keep_last)


def arc_items(n: int) -> tuple[list[dict], str]:
    """n four-choice ARC-Easy items as {question, choices, answer letter}, the built-in
    multiple-choice probe's row format; from the test split (else dev)."""
    for split in ("test", "dev"):
        path = ARC_DIR / f"{split}.jsonl"
        if not path.is_file():
            continue
        items = []
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            choices = row["question"]["choices"]
            keys = [c["label"] for c in choices]
            if len(choices) != 4 or row["answerKey"] not in keys:
                continue
            answer = "ABCD"[keys.index(row["answerKey"])]
            items.append(
                {"question": row["question"]["stem"], "choices": [c["text"] for c in choices], "answer": answer}
            )
            if len(items) == n:
                break
        return items, f"ARC-Easy {split} ({path})"
    return [], ""


def ticket_items(examples, labels: tuple[str, ...], n: int) -> tuple[list[dict], str]:
    """Fallback: ticket prompts as questions, the four urgency labels as choices."""
    rows = (examples * (n // max(len(examples), 1) + 1))[:n]
    items = [{"question": e.prompt, "choices": list(labels), "answer": "ABCD"[e.label]} for e in rows]
    return items, "synthesised from ticket rows (ARC-Easy not found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--source", default="smollm2-135m-instruct", help="model.source (random-tiny for a quick check)"
    )
    parser.add_argument("--rows", type=int, default=100, help="ticket test+val prompts for label scoring")
    parser.add_argument("--mc-items", type=int, default=200, help="multiple-choice items")
    parser.add_argument("--gen-rows", type=int, default=20, help="ticket prompts to generate answers for")
    parser.add_argument(
        "--precision", choices=tuple(PRECISIONS), default="auto", help="auto: bf16 where the CPU has it natively"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="time label scoring and bare forward N times, interleaved; best kept"
    )
    args = parser.parse_args()
    load1 = os.getloadavg()[0]  # at the start: other work on the machine slows every timing
    if min(args.rows, args.mc_items, args.gen_rows, args.repeats) < 1:
        parser.error("--rows, --mc-items, --gen-rows and --repeats must be >= 1")

    spec = load_spec(
        PROJECT / "experiments" / "ticket_urgency.yaml",
        [f"model.source={args.source}", f"trainer.precision={PRECISIONS[args.precision]}"],
    )
    inputs = prepare_inputs(spec, with_probes=False)
    data, encoder = inputs.tasks[0], inputs.encoder
    model, _ = load_model(args.source, spec.seed)
    evaluator = make_evaluator(model, encoder, spec, inputs.fitter)
    precision = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(evaluator.autocast_dtype, "fp32")
    for line in machine_lines():
        print(line)
    print(
        f"model {args.source} on {evaluator.device}, precision {precision} (--precision {args.precision}), "
        f"eval batch {evaluator.batch_size}, max_length {encoder.max_length}"
    )

    # a. label scoring against a bare forward pass
    prompts = [encoder.prompt_ids(e.prompt) for e in (data.test + data.val)[: args.rows]]
    labels = data.task.labels
    label_ids = [encoder.completion_ids(label, add_eos=data.label_eos) for label in labels]
    budget = encoder.max_length - max(map(len, label_ids))
    warm = prompts[: evaluator.batch_size]  # first calls pay for allocators and kernel choice
    evaluator.label_scores(warm, labels, add_eos=data.label_eos)
    bare_forward(evaluator, warm, budget)
    label_s = bare_s = float("inf")
    for _ in range(args.repeats):
        bare_s = min(bare_s, timed(evaluator, lambda: bare_forward(evaluator, prompts, budget))[0])
        seconds, scores = timed(evaluator, lambda: evaluator.label_scores(prompts, labels, add_eos=data.label_eos))
        label_s = min(label_s, seconds)
    gold = torch.tensor([e.label for e in (data.test + data.val)[: args.rows]])
    label_acc = float((scores.argmax(1) == gold).float().mean())
    ratio = label_s / bare_s
    print(
        f"\na. label scoring: {len(prompts)} prompts (mean {sum(map(len, prompts)) / len(prompts):.0f} tokens), "
        f"{len(labels)} labels of {'/'.join(str(len(ids)) for ids in label_ids)} tokens"
    )
    print(f"   label_scores  {label_s:7.2f} s  {len(prompts) / label_s:7.1f} examples/s  (accuracy {label_acc:.3f})")
    print(f"   bare forward  {bare_s:7.2f} s  {len(prompts) / bare_s:7.1f} examples/s")
    print(f"   label scoring / bare forward = {ratio:.2f}  (target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'})")

    # b. multiple choice, as runner's multiple_choice probes build prompts and candidates
    items, where = arc_items(args.mc_items)
    if not items:
        items, where = ticket_items(data.test + data.val, labels, args.mc_items)
    template = load_template(MC_TEMPLATE)
    mc_prompts, mc_candidates, mc_gold = [], [], []
    for item in items:
        prompt, _ = render_example(template, item)
        mc_prompts.append(encoder.prompt_ids(prompt))
        mc_candidates.append([encoder.completion_ids(c, add_eos=False) for c in item["choices"]])
        mc_gold.append("ABCD".index(item["answer"]))
    mc_s, mc_scores = timed(evaluator, lambda: evaluator.candidate_scores(mc_prompts, mc_candidates))
    mc_rate = len(items) / mc_s
    mc_acc = sum(int(s.argmax()) == g for s, g in zip(mc_scores, mc_gold)) / len(items)
    mc_200 = 200 / mc_rate
    print(f"\nb. multiple choice: {len(items)} items, {where}")
    print(
        f"   candidate_scores  {mc_s:7.2f} s  {mc_rate:7.1f} items/s  (acc {mc_acc:.3f}, chance 0.25); "
        f"200 items: {mc_200:.1f} s (target <= 15 s: {'met' if mc_200 <= 15 else 'NOT met'})"
    )

    # c. generation: does it stop at the end-of-turn token?
    gen_prompts = [encoder.prompt_ids(e.prompt) for e in data.test[: args.gen_rows]]
    end_id = encoder.tokenizer.eos_token_id
    with record_generated(end_id) as generated:
        gen_s, answers = timed(evaluator, lambda: evaluator.generate(gen_prompts))
    lengths = [n for n, _ in generated]
    stopped = sum(s for _, s in generated)
    end_token = encoder.tokenizer.convert_ids_to_tokens(end_id)
    print(f"\nc. generation: {len(gen_prompts)} ticket prompts, max_new_tokens {evaluator.max_new_tokens}")
    print(
        f"   generate  {gen_s:7.2f} s  {len(gen_prompts) / gen_s:7.2f} prompts/s  "
        f"mean {sum(lengths) / len(lengths):.1f} generated tokens (end token included)"
    )
    print(
        f"   {stopped} of {len(generated)} answers ended with {end_token} before max_new_tokens; "
        f"first answers: {[a[:40] for a in answers[:3]]}"
    )

    print(
        f"\nsource={args.source} precision={'bf16' if evaluator.autocast_dtype == torch.bfloat16 else 'fp32'} "
        f"threads={torch.get_num_threads()} load1={load1:.2f} rows={len(prompts)} label_ex_s={len(prompts) / label_s:.2f} "
        f"bare_forward_s={bare_s:.3f} label_s={label_s:.3f} label_over_forward={ratio:.3f} "
        f"mc_items={len(items)} mc_items_s={mc_rate:.2f} mc_s={mc_s:.3f} mc_200_s={mc_200:.2f} mc_acc={mc_acc:.3f} "
        f"gen_prompts_s={len(gen_prompts) / gen_s:.3f} gen_tokens_mean={sum(lengths) / len(lengths):.1f} "
        f"gen_stopped={stopped} gen_n={len(generated)}"
    )


def record_generated(end_id: int):
    """Wrap the greedy loop `Evaluator.generate` calls to record, per answer, (generated tokens up
    to and including the first end token, whether it stopped there); a context manager that puts
    the loop back. `Evaluator.generate` returns decoded text without special tokens, which cannot
    say whether the model stopped."""
    from runner.evaluation import evaluator as evaluator_module

    original, records = evaluator_module.greedy, []

    def greedy(*args, **kwargs):
        new = original(*args, **kwargs)
        for row in new:
            ends = [i for i, token in enumerate(row) if token == end_id]
            records.append((ends[0] + 1, True) if ends else (len(row), False))
        return new

    @contextlib.contextmanager
    def recording():
        evaluator_module.greedy = greedy
        try:
            yield records
        finally:
            evaluator_module.greedy = original

    return recording()


if __name__ == "__main__":
    main()
