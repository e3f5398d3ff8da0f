"""Training-step throughput on the default model: prints tokens/s, compares as ratios in one run.

    python tests/benchmarks/train_throughput.py [--steps 4] [--batch 8] [--source smollm2-135m-instruct]

Measures runner's loss (vocabulary head only at completion positions) against the plain
full-logits loss, LoRA against full fine-tuning, and fp32 against bf16 autocast where the CPU
computes bf16 natively. Rows are real ticket prompts from experiments/data.
Not a test: timings vary between runs and machines, so only ratios within one run mean much.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from runner.data import Collator, Encoder, prepare_task
from runner.forward import completion_token_losses
from runner.model import apply_method, load_model
from runner.spec import load_spec
from runner.training import cpu_has_fast_bf16

PROJECT = Path(__file__).resolve().parents[2]


def full_logits_loss(model, batch):
    """The usual causal-LM loss: logits over the whole vocabulary at every position."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def runner_loss(model, batch):
    losses, _ = completion_token_losses(model, batch)
    return losses.mean()


def measure(model, batches, loss_fn, autocast: bool) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    tokens, started = 0, None
    for i, batch in enumerate(batches):
        if i == 1:  # the first step warms up allocators and kernels
            started, tokens = time.perf_counter(), 0
        with ctx:
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--source", default="smollm2-135m-instruct")
    args = parser.parse_args()

    spec = load_spec(PROJECT / "experiments" / "ticket_urgency.yaml", [f"model.source={args.source}"])
    data = prepare_task(spec.tasks[0], spec.seed)
    model, tokenizer = load_model(args.source)
    encoder = Encoder(tokenizer, spec.model.max_length, spec.model.chat_template)
    rows = [encoder.encode(e, add_eos=False) for e in data.train[: args.batch * (args.steps + 1)]]
    collate = Collator(tokenizer.pad_token_id)
    batches = [collate(rows[i : i + args.batch]) for i in range(0, len(rows), args.batch)]
    mean_len = sum(len(r["input_ids"]) for r in rows) / len(rows)
    print(
        f"model {args.source}, batch {args.batch}, {args.steps} timed steps, mean row {mean_len:.0f} tokens, threads {torch.get_num_threads()}"
    )

    lora = apply_method(model, spec.method)
    cases = [
        ("lora, fp32, runner loss (head at completion tokens)", lora, runner_loss, False),
        ("lora, fp32, full-logits loss", lora, full_logits_loss, False),
    ]
    if cpu_has_fast_bf16():
        cases.append(("lora, bf16 autocast, runner loss", lora, runner_loss, True))
    else:
        print("(this CPU has no native bf16, AVX512-BF16 or AMX: bf16 cases skipped, they would be emulated)")
    results = {name: measure(m, batches, fn, ac) for name, m, fn, ac in cases}
    full_model, _ = load_model(args.source)
    results["full fine-tuning, fp32, runner loss"] = measure(full_model, batches, runner_loss, False)
    base = results[cases[0][0]]
    for name, value in results.items():
        print(f"{name:55s} {value:8.1f} tokens/s  ({value / base:.2f}x)")


if __name__ == "__main__":
    main()
