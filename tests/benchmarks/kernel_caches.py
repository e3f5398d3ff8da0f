"""Process growth from oneDNN's per-shape kernel caches under bf16 autocast, and what bounding them
(as `runner` does at start, runner/training/memory.py bound_kernel_caches) changes.

    python tests/benchmarks/kernel_caches.py [--shapes 250]

Each case runs in its own process: SmolLM2-135M's linear shapes (576 -> 576, 192, 1536 and
1536 -> 576), forward and backward under bf16 autocast, at one new sequence length per step as
training meets them. Prints RSS after 10 steps and at the end, and the seconds taken, with the
caches at their default (1,024 entries each) and at runner's bound. In fp32 (no oneDNN) nothing
grows. Not a test: RSS and seconds vary between machines; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def rss_mb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))


def case(shapes: int) -> dict:
    import torch

    torch.manual_seed(0)
    linears = [torch.nn.Linear(576, n) for n in (576, 192, 1536)]
    down = torch.nn.Linear(1536, 576)
    started, after_10 = time.perf_counter(), None
    for step, length in enumerate(range(40, 40 + 4 * shapes, 4)):
        x = torch.randn(length, 576, requires_grad=True)
        h = torch.randn(length, 1536, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum(lin(x).float().sum() for lin in linears) + down(h).float().sum()
        loss.backward()
        if step == 10:
            after_10 = rss_mb()
    return {"after_10": after_10, "end": rss_mb(), "seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", type=int, default=250)
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.shapes)))
        return 0
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from runner.training.memory import KERNEL_CACHE_ENTRIES

    print(f"{args.shapes} sequence lengths, bf16 autocast, one process per case")
    for label, entries in (
        ("default (1,024)", None),
        (f"runner's bound ({KERNEL_CACHE_ENTRIES})", KERNEL_CACHE_ENTRIES),
    ):
        env = {k: v for k, v in os.environ.items() if k not in CACHES}
        if entries:
            env.update(dict.fromkeys(CACHES, entries))
        done = subprocess.run(
            [sys.executable, __file__, "--case", "--shapes", str(args.shapes)], env=env, capture_output=True, text=True
        )
        if done.returncode:
            print(f"{label}: failed: {done.stderr.strip()[-400:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{label:<24} RSS after 10 steps {r['after_10']:5d} MB, after {args.shapes}: {r['end']:5d} MB "
            f"(+{r['end'] - r['after_10']} MB), {r['seconds']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
