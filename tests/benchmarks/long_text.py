"""A long-text spec end to end, against its own `runner plan`: scoring's share of the run, peak
memory, and how far each planned stage is from the measured one.

    python tests/benchmarks/long_text.py [--output-dir runs/bench_long_text] [--n-train 700]
        [--epochs 3] [--set KEY=VALUE ...] [--plan-only]

The data are the example generator's long help-desk tickets (experiments/data/make_long_tickets.py),
drawn with more training rows than the shipped example (780 source tickets for the train file, some of them kept for validation; the same
150 for the test file): after truncation to max_length 512 almost every row is 512 tokens. The spec
is the plain one a user writes from the README -- model, max_length, the task, `method: lora`,
`epochs` -- everything else at runner's defaults. It, the data and the run folder are written
under --output-dir (keep it out of git; `runs/` is ignored).

Runs `runner plan --json` first, then the run through end_to_end.py (wall time, peak RSS, time by
stage from report.json), then prints planned against measured per stage. Not a test: a full run
takes more than an hour on a 2-core CPU; do not time anything beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def write_inputs(folder: Path, n_train: int, epochs: int) -> Path:
    """The long-ticket files (n_train train rows, 150 test rows) and the spec; returns the spec's path."""
    sys.path.insert(0, str(PROJECT / "experiments" / "data"))
    import make_long_tickets as gen

    gen.N_TRAIN = n_train  # split_sources reads it at call time
    sources = [json.loads(line) for line in gen.SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    train_src, test_src = gen.split_sources(sources)
    train = gen.build_rows(train_src, 1)
    test = gen.build_rows(test_src, len(train) + 1)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    with (data / "train.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=gen.FIELDS)
        writer.writeheader()
        writer.writerows(train)
    (data / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in test), encoding="utf-8")
    spec = folder / "long_text.yaml"
    spec.write_text(
        "name: long_text\n"
        "model:\n  source: smollm2-135m-instruct\n  max_length: 512\n"
        "tasks:\n  - name: urgency\n"
        "    data: {train: data/train.csv, test: data/test.jsonl}\n"
        "    template: long_ticket.jinja\n"
        "    labels: [Critical, High, Medium, Low]\n"
        "method:\n  kind: lora\n"
        f"training:\n  epochs: {epochs}\n",
        encoding="utf-8",
    )
    print(f"wrote {len(train)} train and {len(test)} test rows and {spec}", flush=True)
    return spec


def planned(spec: Path, overrides: list[str]) -> dict:
    command = [sys.executable, "-m", "runner", "plan", str(spec), "--json"]
    command += [part for o in overrides for part in ("--set", o)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT)
    if done.returncode != 0:
        sys.exit(f"runner plan failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def measured(spec: Path, overrides: list[str], output_dir: Path) -> dict:
    """end_to_end.py's key=value summary line, as a dict (its own output goes to this terminal)."""
    command = [sys.executable, str(HERE / "end_to_end.py"), "--spec", str(spec), "--output-dir", str(output_dir)]
    command += [part for o in overrides for part in ("--set", o)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=PROJECT)
    print(done.stdout, flush=True)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return dict(pair.split("=", 1) for pair in last.split() if "=" in pair)


def number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=PROJECT / "runs" / "bench_long_text")
    parser.add_argument(
        "--n-train",
        type=int,
        default=780,
        help="source tickets drawn for the train file (runner's split keeps some for validation: 770 left 599 train rows)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--plan-only", action="store_true", help="write the inputs and print the plan only")
    args = parser.parse_args()
    folder = args.output_dir.resolve()
    spec = write_inputs(folder, args.n_train, args.epochs)

    plan = planned(spec, args.overrides)
    est = plan["estimate_seconds"]
    print(
        f"plan: {plan['rows']}, {plan['steps']} steps, {plan['precision']}, "
        f"{plan['train_tokens_per_second']} tokens/s, peak {plan['peak_rss_mb_estimate']} MiB, "
        f"{plan['score_base_cached']} base units cached",
        flush=True,
    )
    print(json.dumps(est), flush=True)
    if args.plan_only:
        return 0

    got = measured(spec, args.overrides, folder / "runs")
    # report.json's train time holds the validation passes; the plan states them apart.
    rows = [
        ("prepare", est["prepare"], number(got.get("prepare_s"))),
        ("load_model", est["load_model"], number(got.get("load_model_s"))),
        ("score_base", est["score_base"], number(got.get("score_base_s"))),
        ("train + validate", est["train"] + est["validate"], number(got.get("train_s"))),
        ("score_tuned", est["score_tuned"], number(got.get("score_tuned_s"))),
        ("total (wall)", est["total"], number(got.get("wall_s"))),
    ]
    print(f"\n{'stage':<18} {'planned s':>10} {'measured s':>11} {'plan/measured':>14}")
    for name, plan_s, real_s in rows:
        ratio = f"{plan_s / real_s:14.2f}" if real_s else f"{'na':>14}"
        print(f"{name:<18} {plan_s:10.1f} {real_s if real_s is not None else float('nan'):11.1f} {ratio}")
    wall = number(got.get("wall_s"))
    base, tuned = number(got.get("score_base_s")), number(got.get("score_tuned_s"))
    if wall and base is not None and tuned is not None:
        print(f"scoring (base + tuned) {base + tuned:.1f} s = {(base + tuned) / wall:.1%} of the run's wall time")
    print(
        f"peak RSS {got.get('peak_rss_mb')} MiB measured, {plan['peak_rss_mb_estimate']} MiB planned; "
        f"accuracy {got.get('accuracy')} [{got.get('accuracy_lo')}, {got.get('accuracy_hi')}]"
    )
    return int(got.get("rc", 1))


if __name__ == "__main__":
    sys.exit(main())
