"""A spec run end to end as a user runs it: wall time, peak memory, time by stage, results.

    python tests/benchmarks/end_to_end.py [--spec experiments/ticket_urgency.yaml]
        [--set KEY=VALUE ...] [--output-dir DIR]

Runs `python -m runner run SPEC --set ... --output-dir DIR` in a child process (its output goes
to this terminal), then reads the run folder's report.json. Peak RSS is measured twice: by the
kernel (getrusage of the waited-for child) and by sampling /proc/<pid>/status every 0.5 s; both
cover the runner process itself, not data-loader workers it may start. Without --output-dir
the run folder goes to a temporary folder, removed afterwards.

A quick check: --set model.source=random-tiny --set training.max_steps=2
Not a test: timings vary between runs and machines. The last line is `key=value` pairs for
scripts; `na` where the report has no such value.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import machine_lines

PROJECT = Path(__file__).resolve().parents[2]
STAGES = (
    "prepare_seconds",
    "load_model_seconds",
    "score_base_seconds",
    "train_seconds",
    "score_tuned_seconds",
    "report_seconds",
)
SAMPLE_EVERY = 0.5  # seconds between /proc samples


def resolved_precision(spec: Path, overrides: list[str]) -> str:
    """The precision the run will use: the spec's trainer.precision, 'auto' resolved as runner does."""
    from runner.errors import RunnerError
    from runner.model.precision import resolve_precision
    from runner.spec.load import load_spec

    try:
        loaded = load_spec(spec, overrides)
    except RunnerError:  # the run below prints the spec's problems, as a user would see them
        return "unknown (the spec does not load)"
    return f"{resolve_precision(loaded.trainer.precision, loaded.trainer.accelerator)} (trainer.precision: {loaded.trainer.precision})"


class RssSampler(threading.Thread):
    """Largest VmRSS of one process seen every SAMPLE_EVERY seconds, and its last VmHWM (the
    kernel's own high-water mark, readable only while the process lives)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.peak_kib = self.hwm_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                fields = dict(line.split(":", 1) for line in self.status.read_text().splitlines() if ":" in line)
            except OSError:  # the process has exited
                return
            self.peak_kib = max(self.peak_kib, _kib(fields.get("VmRSS")))
            self.hwm_kib = max(self.hwm_kib, _kib(fields.get("VmHWM")))
            self.done.wait(SAMPLE_EVERY)


def _kib(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def run_spec(spec: Path, overrides: list[str], output_dir: Path) -> tuple[int, float, float, RssSampler]:
    """(exit code, wall seconds, peak RSS in MiB from getrusage, the sampler) of one `runner run`."""
    command = [sys.executable, "-m", "runner", "run", str(spec), *(f"--set={o}" for o in overrides)]
    command += ["--output-dir", str(output_dir)]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=PROJECT)
    sampler = RssSampler(child.pid)
    sampler.start()
    try:
        rc = child.wait()
    except KeyboardInterrupt:  # the child got the Ctrl-C too: let it write its report
        rc = child.wait()
    wall = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    # Largest RSS of any waited-for child of this process; the runner is the only one.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return rc, wall, peak / (1024 * 1024 if sys.platform == "darwin" else 1024), sampler


def newest_report(output_dir: Path, before: set[Path]) -> Path | None:
    """report.json of the run folder this run made: <output_dir>/<name>/<timestamp>/."""
    made = [p for p in output_dir.glob("*/*/report.json") if p not in before]
    return max(made, key=lambda p: p.stat().st_mtime, default=None)


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "na"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def headline(rung: dict) -> str:
    return "accuracy" if "accuracy" in rung else "exact_match"


def print_report(report: dict, wall: float) -> None:
    cost, training = report.get("cost", {}), report.get("training", {})
    print(f"\nrun folder {report.get('run_dir')}: status {report.get('status')}")
    print("time by stage (report.json cost):")
    recorded = 0.0
    for key in STAGES:
        if key in cost:
            recorded += cost[key]
            print(f"  {key:22s} {cost[key]:9.1f} s  {cost[key] / wall:6.1%}")
        else:
            print(f"  {key:22s}       (not recorded)")
    print(
        f"  {'sum of stages':22s} {recorded:9.1f} s  of {wall:.1f} s wall; the rest ({wall - recorded:.1f} s) unrecorded"
    )
    print(
        f"trainable params {fmt(cost.get('trainable_params'))} of {fmt(cost.get('total_params'))}; "
        f"{fmt(cost.get('tokens_per_second'))} train tokens/s; runner's peak_rss_mb {fmt(cost.get('peak_rss_mb'))}"
    )
    print(
        f"epochs run {fmt(training.get('epochs_run'))}, best epoch {fmt(training.get('best_epoch'))}, "
        f"stopped early {fmt(training.get('stopped_early'))}, steps {fmt(training.get('global_steps'))}"
    )
    for name, task in report.get("tasks", {}).items():
        for rung, metrics in task.get("test", {}).items():
            metric = headline(metrics)
            ci = metrics.get("ci95", {})
            f1 = (
                f", macro-F1 {metrics['f1_macro']:.3f} {ci.get('f1_macro', '')}"
                if "f1_macro" in metrics and rung != "majority"
                else ""
            )
            print(
                f"  test {name} {rung:15s} {metric} {metrics[metric]:.3f} {ci.get(metric, '')}{f1} (n={metrics.get('n')})"
            )


def summary_pairs(report: dict, rc: int, wall: float, peak: float, sampler: RssSampler, load1: float) -> list[str]:
    cost, training = report.get("cost", {}), report.get("training", {})
    pairs = [f"rc={rc}", f"status={report.get('status', 'na')}", f"load1={load1:.2f}"]
    pairs += [f"wall_s={wall:.1f}", f"peak_rss_mb={peak:.1f}"]
    pairs += [f"sampled_rss_mb={sampler.peak_kib / 1024:.1f}", f"runner_peak_rss_mb={fmt(cost.get('peak_rss_mb'))}"]
    pairs += [f"{key.removesuffix('_seconds')}_s={fmt(cost.get(key))}" for key in STAGES]
    pairs += [
        f"tokens_s={fmt(cost.get('tokens_per_second'))}",
        f"trainable_params={fmt(cost.get('trainable_params'))}",
        f"epochs_run={fmt(training.get('epochs_run'))}",
        f"stopped_early={fmt(training.get('stopped_early'))}",
    ]
    tasks = report.get("tasks", {})
    for i, (name, task) in enumerate(tasks.items()):
        tuned = task.get("test", {}).get("fine_tuned")
        if tuned is None:
            continue
        metric = headline(tuned)
        suffix = "" if i == 0 else f"_{name}"  # the first task unsuffixed; others by name
        lo, hi = tuned.get("ci95", {}).get(metric, (None, None))
        pairs += [f"{metric}{suffix}={tuned[metric]:.4f}", f"{metric}_lo{suffix}={fmt(lo, 4)}"]
        pairs += [f"{metric}_hi{suffix}={fmt(hi, 4)}"]
        if "f1_macro" in tuned:
            pairs.append(f"f1_macro{suffix}={tuned['f1_macro']:.4f}")
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=PROJECT / "experiments" / "ticket_urgency.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="spec override; repeatable"
    )
    parser.add_argument("--output-dir", type=Path, help="where the run folder goes (default: a temporary folder)")
    args = parser.parse_args()
    spec = args.spec.resolve()
    load1 = os.getloadavg()[0]  # before the run: other work on the machine slows every timing

    for line in machine_lines(resolved_precision(spec, args.overrides)):
        print(line)
    print(f"spec {spec} {' '.join(f'--set {o}' for o in args.overrides)}".rstrip(), flush=True)

    with tempfile.TemporaryDirectory(prefix="runner-e2e-") as scratch:
        output_dir = (args.output_dir or Path(scratch)).resolve()
        output_dir.mkdir(parents=True, exist_ok=True)
        before = set(output_dir.glob("*/*/report.json"))
        rc, wall, peak, sampler = run_spec(spec, args.overrides, output_dir)
        report_path = newest_report(output_dir, before)
        report = json.loads(report_path.read_text()) if report_path else {}

    print(f"\nexit code {rc}; wall {wall:.1f} s")
    print(
        f"peak RSS of the runner process: {peak:.1f} MiB (getrusage), "
        f"{sampler.peak_kib / 1024:.1f} MiB (VmRSS sampled every {SAMPLE_EVERY} s), "
        f"{sampler.hwm_kib / 1024:.1f} MiB (last VmHWM seen)"
    )
    if report:
        print_report(report, wall)
    else:
        print(f"no new report.json under {output_dir}")
    if args.output_dir is None:
        print(f"(temporary run folder removed: {output_dir})")
    print()
    print(" ".join(summary_pairs(report, rc, wall, peak, sampler, load1)))
    return rc


if __name__ == "__main__":
    sys.exit(main())
