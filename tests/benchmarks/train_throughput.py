"""Training throughput: runner's LoRA and full steps against TRL's SFTTrainer, and MFU.

    pip install -e '.[bench]'      # TRL, for the comparison (not a runtime dependency)
    python tests/benchmarks/train_throughput.py [--steps 6] [--batch 8] [--precision auto|bf16|fp32]
        [--skip-trl] [--skip-long]

Every case runs in its own process (so each peak RSS is its own) on the same rows: the demo's
ticket training rows as runner encodes them (chat template, completion-only loss), batch 8,
max_length 384, LoRA r 16 / alpha 32 / dropout 0.05 on all linear layers. TRL gets the very same
token rows (a tokenized dataset with a completion mask) and the same LoRA, learning rate and
precision; its speed settings are printed, and each of its honest configurations on a CPU is
measured (gradient checkpointing off — TRL's default is on —, with and without padding-free
batches; Liger kernels need Triton, which has no CPU backend). The long-row case trains on 800
generated long tickets (experiments/data/make_long_tickets.py) cut to max_length 512.

Tokens are real (non-pad) tokens. MFU = model FLOPs per token x real tokens/s / matmul peak,
where FLOPs per token are those of the plain computation (4 x non-embedding parameters for LoRA:
forward and input gradients; 6 x for full fine-tuning; plus attention), so skipped work (the
vocabulary head away from completion tokens) does not count, and the peak is measured in this
run on the model's own GEMM shapes in the precision used.
Not a test: timings vary between runs and machines; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SOURCE = "smollm2-135m-instruct"


# --- the cases, each in its own process ------------------------------------------------------


def runner_spec(precision: str, batch: int, long_rows: Path | None):
    from runner.spec.load import load_spec

    overrides = [f"trainer.precision={precision}", f"training.batch_size={batch}", "training.num_workers=0"]
    if long_rows is None:
        return load_spec(PROJECT / "experiments" / "ticket_urgency.yaml", overrides)
    return load_spec(
        PROJECT / "experiments" / "long_tickets.yaml",
        [*overrides, f"tasks.0.data={long_rows}", "tasks.0.split={train: 0.7, val: 0.2, test: 0.1}"],
    )


def case_runner(method: str, precision: str, batch: int, steps: int, long_rows: Path | None) -> dict:
    """runner's own training step: FineTuner and FineTuneData under a Lightning Trainer."""
    import lightning as L

    from runner.inputs import prepare_inputs
    from runner.model.methods import apply_method
    from runner.training.setup import make_datamodule, prepared_model, trainable_module
    from runner.training.trainer import timed_steps

    spec = runner_spec(precision, batch, long_rows)
    if method == "full":
        spec = _replace(spec, method=_replace(spec.method, kind="full"))
    L.seed_everything(0, verbose=False)
    inputs = prepare_inputs(spec, with_probes=False, enforce_checks=False)
    model, tokenizer = prepared_model(spec)
    module = trainable_module(apply_method(model, spec.method, tokenizer), spec, inputs.tasks)
    datamodule = make_datamodule(inputs, spec)
    timed = timed_steps(module, datamodule, spec, steps + 1)[1:]  # the first step warms up
    seconds = sum(s for s, _, _ in timed)
    rows = [len(r["input_ids"]) for r in datamodule.train_rows]
    return {
        "real_tok_s": sum(r for _, _, r in timed) / seconds,
        "padded_tok_s": sum(p for _, p, _ in timed) / seconds,
        "s_per_step": seconds / len(timed),
        "mean_row_tokens": sum(rows) / len(rows),
        "peak_rss_mb": _peak_rss_mb(),
    }


def case_trl(precision: str, batch: int, steps: int, padding_free: bool) -> dict:
    """TRL's SFTTrainer + PEFT LoRA on the very same token rows."""
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback

    from runner.data.encode import IGNORE_INDEX
    from runner.inputs import prepare_inputs
    from runner.training.setup import prepared_model

    spec = runner_spec(precision, batch, None)
    inputs = prepare_inputs(spec, with_probes=False, enforce_checks=False)
    data = inputs.tasks[0]
    rows = [inputs.encoder.encode(e, data.completion_eos) for e in data.train]
    dataset = Dataset.from_list(
        [{"input_ids": r["input_ids"], "completion_mask": [int(t != IGNORE_INDEX) for t in r["labels"]]} for r in rows]
    )
    model, tokenizer = prepared_model(spec)
    lora = spec.method.lora
    bf16 = precision == "bf16-mixed"
    settings = {
        "per_device_train_batch_size": batch,
        "max_steps": steps + 1,
        "learning_rate": spec.training.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": spec.training.warmup_ratio,  # a float below 1 is a ratio of the steps
        "max_grad_norm": spec.training.gradient_clip,
        "max_length": spec.model.max_length,
        "completion_only_loss": True,
        "packing": False,
        "padding_free": padding_free,
        "gradient_checkpointing": False,
        "use_liger_kernel": False,
        "bf16": bf16,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "logging_steps": 1000,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
    }
    if padding_free:
        settings["max_length"] = None  # TRL demands it without packing; rows are already cut to max_length
    counted: list[tuple[float, int]] = []

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            counted.append((time.perf_counter() - self.started, trainer.real_tokens))
            trainer.real_tokens = 0

    class CountingTrainer(trl.SFTTrainer):
        real_tokens = 0

        def training_step(self, model, batch_inputs, num_items_in_batch=None):
            mask = batch_inputs.get("attention_mask")
            self.real_tokens += int(mask.sum()) if mask is not None else int(batch_inputs["input_ids"].numel())
            return super().training_step(model, batch_inputs, num_items_in_batch)

    with tempfile.TemporaryDirectory() as out:
        trainer = CountingTrainer(
            model=model,
            args=trl.SFTConfig(output_dir=out, **settings),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
            callbacks=[Timing()],
        )
        trainer.train()
    timed = counted[1:]
    seconds = sum(s for s, _ in timed)
    return {
        "real_tok_s": sum(n for _, n in timed) / seconds,
        "s_per_step": seconds / len(timed),
        "peak_rss_mb": _peak_rss_mb(),
        "versions": f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
        "settings": {
            k: settings[k] for k in ("bf16", "padding_free", "gradient_checkpointing", "use_liger_kernel", "packing")
        },
        "attn": model.config._attn_implementation,
    }


# --- FLOPs and the matmul peak -----------------------------------------------------------------


def model_shapes():
    from runner.model.load import load_model

    model, _ = load_model(SOURCE)
    config = model.config
    embedding = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    linears = [
        (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, __import__("torch").nn.Linear) and "lm_head" not in name
    ]
    return {
        "non_embedding": total - embedding,
        "layers": config.num_hidden_layers,
        "d_attn": config.num_attention_heads * (config.hidden_size // config.num_attention_heads),
        "linears": linears,
    }


def flops_per_token(shapes: dict, method: str, context: float) -> float:
    """Plain-computation FLOPs per trained token: 2N forward, 2N input gradients, 2N weight
    gradients (full only); attention 4·layers·d·context per pass (QK^T and AV)."""
    passes = 3 if method == "full" else 2
    return passes * (2 * shapes["non_embedding"] + 4 * shapes["layers"] * shapes["d_attn"] * context)


def matmul_peak(shapes: dict, tokens: int, dtype_name: str) -> float:
    """FLOP/s of the model's own linear layers as plain matmuls of `tokens` rows, one of each
    distinct shape weighted by how often the model has it."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    counts: dict[tuple[int, int], int] = {}
    for shape in shapes["linears"]:
        counts[shape] = counts.get(shape, 0) + 1
    total_flops = total_seconds = 0.0
    for (n_in, n_out), count in counts.items():
        x = torch.randn(tokens, n_in, dtype=dtype)
        w = torch.randn(n_in, n_out, dtype=dtype)
        for _ in range(3):
            x @ w
        repeats = 20
        started = time.perf_counter()
        for _ in range(repeats):
            x @ w
        seconds = (time.perf_counter() - started) / repeats
        total_flops += count * 2 * tokens * n_in * n_out
        total_seconds += count * seconds
    return total_flops / total_seconds


# --- orchestration -----------------------------------------------------------------------------


def run_case(args: argparse.Namespace, case: str, extra: list[str] | None = None) -> dict | None:
    command = [sys.executable, __file__, "--case", case, "--steps", str(args.steps), "--batch", str(args.batch)]
    command += ["--precision", args.precision, *(extra or [])]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"  case {case} failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")
        return None
    return json.loads(lines[-1])


def make_long_rows(folder: Path) -> Path:
    """800 long tickets from the example generator, as one JSONL file."""
    sys.path.insert(0, str(PROJECT / "experiments" / "data"))
    import make_long_tickets as gen

    sources = [json.loads(line) for line in gen.SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = gen.build_rows(sources[:800], 1)
    path = folder / "long_rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6, help="timed steps per case (after one warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--long-rows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from runner.model.precision import cpu_has_fast_bf16

    precision = {"bf16": "bf16-mixed", "fp32": "32-true"}.get(args.precision)
    if precision is None:
        precision = "bf16-mixed" if cpu_has_fast_bf16() else "32-true"
    if args.case:  # one case, in this process: print its result as JSON
        if args.case.startswith("trl"):
            result = case_trl(precision, args.batch, args.steps, padding_free=args.case == "trl-padding-free")
        else:
            method = "full" if args.case == "runner-full" else "lora"
            result = case_runner(method, precision, args.batch, args.steps, args.long_rows)
        print(json.dumps(result))
        return

    from machine import machine_lines

    print("\n".join(machine_lines()))
    print(f"model {SOURCE}, batch {args.batch}, {args.steps} timed steps per case, precision {precision}")
    shapes = model_shapes()
    dtype = "bf16" if precision == "bf16-mixed" else "fp32"
    results = {}
    results["runner-lora"] = run_case(args, "runner-lora")
    results["runner-full"] = run_case(args, "runner-full")
    if not args.skip_trl:
        results["trl"] = run_case(args, "trl")
        results["trl-padding-free"] = run_case(args, "trl-padding-free")
    if not args.skip_long:
        with tempfile.TemporaryDirectory() as folder:
            results["runner-lora-long"] = run_case(
                args, "runner-lora-long", ["--long-rows", str(make_long_rows(Path(folder)))]
            )

    lora = results["runner-lora"] or {}
    tokens = int(args.batch * lora.get("mean_row_tokens", 200))
    peak = matmul_peak(shapes, tokens, dtype)
    print(f"\nmatmul peak at the model's GEMM shapes ({tokens} rows, {dtype}): {peak / 1e9:.0f} GFLOP/s")
    print(f"{'case':<20} {'real tok/s':>10} {'s/step':>8} {'peak RSS MiB':>13} {'MFU':>6}")
    mfu = {}
    for name, r in results.items():
        if r is None:
            continue
        method = "full" if name == "runner-full" else "lora"
        context = r.get("mean_row_tokens", lora.get("mean_row_tokens", 200))
        mfu[name] = flops_per_token(shapes, method, context) * r["real_tok_s"] / peak
        print(
            f"{name:<20} {r['real_tok_s']:>10.1f} {r['s_per_step']:>8.2f} {r['peak_rss_mb']:>13.0f} {mfu[name]:>6.1%}"
        )
        if name.startswith("trl"):
            print(f"{'':<20} {r['versions']}; attention {r['attn']}; {r['settings']}")
    trl_best = max((r["real_tok_s"] for n, r in results.items() if n.startswith("trl") and r), default=None)
    long_rows = results.get("runner-lora-long")
    pairs = {
        "runner_tok_s": f"{lora.get('real_tok_s', 0):.1f}",
        "trl_tok_s": f"{trl_best:.1f}" if trl_best else "na",
        "ratio": f"{lora['real_tok_s'] / trl_best:.2f}" if trl_best and lora else "na",
        "mfu": f"{mfu.get('runner-lora', 0):.3f}",
        "full_tok_s": f"{results['runner-full']['real_tok_s']:.1f}" if results["runner-full"] else "na",
        "mfu_full": f"{mfu.get('runner-full', 0):.3f}",
        "long_tok_s": f"{long_rows['real_tok_s']:.1f}" if long_rows else "na",
        "long_over_short": f"{long_rows['real_tok_s'] / lora['real_tok_s']:.2f}" if long_rows and lora else "na",
        "long_peak_rss_mb": f"{long_rows['peak_rss_mb']:.0f}" if long_rows else "na",
        "lora_peak_rss_mb": f"{lora.get('peak_rss_mb', 0):.0f}",
        "peak_gflops": f"{peak / 1e9:.0f}",
        "precision": dtype,
    }
    print(" ".join(f"{k}={v}" for k, v in pairs.items()))


def _replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
