"""`runner run SPEC --smoke` on every shipped spec and on a 77-label Banking77 spec (from
../shared/data, skipped when absent), each timed end to end as a user runs it (a fresh process).

    .venv/bin/python tests/benchmarks/smoke_times.py [--out DIR]

Prints one line per spec: wall seconds, exit code, and the run's own phase times from report.json.
The goal: each under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[2]
BANKING = PROJECT.parent / "shared" / "data" / "banking77"


def banking77_spec(folder: Path) -> Path | None:
    """A spec for Banking77's 77 intents as a user would write it from the README (None without the data)."""
    if not (BANKING / "train.csv").is_file():
        return None
    labels = json.loads((BANKING / "categories.json").read_text())
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    (folder / "templates" / "intent.jinja").write_text(
        "Which banking intent is this customer message? Answer with the intent's name.\n\n"
        "Message: {{ text }}\n|||\n{{ category }}\n"
    )
    spec = {
        "name": "banking77",
        "tasks": [
            {
                "name": "intent",
                "data": {"train": str(BANKING / "train.csv"), "test": str(BANKING / "test.csv")},
                "template": "intent.jinja",
                "labels": labels,
            }
        ],
        "output_dir": "runs",
        # Banking77's own train and test files share a few identical messages: the leak check says
        # so and stops the run; a user who reads it and accepts them sets it to warn.
        "data_checks": {"leaks": "warn"},
    }
    path = folder / "banking77.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def smoke(spec: Path, out: Path) -> tuple[float, int, dict]:
    """One smoke run in its own process: (wall seconds, exit code, its report's cost)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(spec), "--smoke", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        cwd=out,
    )
    wall = time.perf_counter() - started
    reports = sorted(out.rglob("report.json"))
    cost = json.loads(reports[-1].read_text()).get("cost", {}) if reports else {}
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    return wall, done.returncode, cost


def main() -> int:
    """Time every smoke run and print a line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where the smoke runs go (default: a temporary folder)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="smoke-"))
    specs = sorted((PROJECT / "experiments").glob("*.yaml"))
    extra = banking77_spec(root / "banking77")
    specs += [extra] if extra else []
    worst = 0.0
    for spec in specs:
        out = root / spec.stem
        out.mkdir(parents=True, exist_ok=True)
        wall, code, cost = smoke(spec, out)
        worst = max(worst, wall)
        phases = ", ".join(f"{k.removesuffix('_seconds')} {v}" for k, v in cost.items() if k.endswith("_seconds"))
        print(f"{spec.stem:28s} {wall:6.1f} s  exit {code}  ({phases})", flush=True)
    print(f"slowest: {worst:.1f} s" + ("" if extra else "  (Banking77 absent: ../shared/data/banking77)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
