"""Paired delta between two runs of the same spec on the same test rows: did a change cost accuracy?

    python tests/benchmarks/paired_delta.py BEFORE_RUN_DIR AFTER_RUN_DIR [--rung fine_tuned] [--samples 2000]

Reads both runs' predictions.jsonl, pairs the test rows by task and row number (the splits must
match: same data, seed and split settings), and prints per task the accuracy and macro-F1 of
each run and the paired bootstrap 95% interval of after - before (seeded). Last line:
`key=value` pairs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from runner.report.uncertainty import accuracy_samples, f1_macro_samples, interval, resample_indices


def predictions(run_dir: Path, rung: str) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for line in (run_dir / "predictions.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["rung"] == rung:
            out.setdefault(record["task"], {})[record["row"]] = record
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rung", default="fine_tuned")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    before, after = predictions(args.before, args.rung), predictions(args.after, args.rung)
    pairs = {}
    for task in sorted(before.keys() & after.keys()):
        rows = sorted(before[task].keys() & after[task].keys())
        if len(rows) != len(before[task]) or len(rows) != len(after[task]):
            print(
                f"task {task}: the runs' test rows differ ({len(before[task])} vs {len(after[task])}, {len(rows)} shared)"
            )
        b = [before[task][r] for r in rows]
        a = [after[task][r] for r in rows]
        labels = sorted({r["gold"] for r in b} | {r["prediction"] for r in b + a})
        index = {label: i for i, label in enumerate(labels)}
        gold = torch.tensor([index[r["gold"]] for r in b])
        pred_b = torch.tensor([index.get(r["prediction"], 0) for r in b])
        pred_a = torch.tensor([index.get(r["prediction"], 0) for r in a])
        correct_b = torch.tensor([float(r["correct"]) for r in b])
        correct_a = torch.tensor([float(r["correct"]) for r in a])
        idx = resample_indices(len(rows), args.samples, args.seed)
        acc_delta = accuracy_samples(correct_a, idx) - accuracy_samples(correct_b, idx)
        f1_b = f1_macro_samples(pred_b, gold, len(labels), idx)
        f1_a = f1_macro_samples(pred_a, gold, len(labels), idx)
        point_f1 = [
            float(f1_macro_samples(p, gold, len(labels), torch.arange(len(rows)).unsqueeze(0))[0])
            for p in (pred_b, pred_a)
        ]
        result = {
            "n": len(rows),
            "accuracy_before": round(float(correct_b.mean()), 4),
            "accuracy_after": round(float(correct_a.mean()), 4),
            "accuracy_delta": round(float(correct_a.mean() - correct_b.mean()), 4),
            "accuracy_delta_ci": interval(acc_delta),
            "f1_macro_before": round(point_f1[0], 4),
            "f1_macro_after": round(point_f1[1], 4),
            "f1_macro_delta_ci": interval(f1_a - f1_b),
            "same_prediction": round(float((pred_a == pred_b).float().mean()), 4),
        }
        pairs[task] = result
        print(
            f"task {task} ({result['n']} rows, rung {args.rung}): accuracy {result['accuracy_before']} -> "
            f"{result['accuracy_after']} (delta {result['accuracy_delta']:+.4f}, 95% CI "
            f"{result['accuracy_delta_ci'][0]:+.4f}..{result['accuracy_delta_ci'][1]:+.4f}); macro-F1 "
            f"{result['f1_macro_before']} -> {result['f1_macro_after']} (delta CI {result['f1_macro_delta_ci'][0]:+.4f}.."
            f"{result['f1_macro_delta_ci'][1]:+.4f}); same prediction on {result['same_prediction']:.0%} of rows"
        )
    print(
        " ".join(
            f"{task}_{key}={value[0]},{value[1]}" if isinstance(value, list) else f"{task}_{key}={value}"
            for task, result in pairs.items()
            for key, value in result.items()
        )
    )


if __name__ == "__main__":
    main()
