"""Compare two run folders (or two folders of runs) for what a run computes, leaving out what
legitimately differs between two executions: wall times, throughput, memory, process ids,
hosts, timestamps and the folders' own paths.

    python tests/benchmarks/diff_runs.py RUNS_A RUNS_B

Each folder is searched for report.json files; runs pair up by their path below the folder
(with the timestamp folder ignored). For each pair it compares report.json and splits.json and
prints every difference as `file: json.path: A != B`. Exit 0 when nothing differs.

Use it to show that a change leaves behaviour as it was: run the same specs, with
RUNNER_NO_CACHE=1 (so base scores are computed, not reused) and the same thread count, from
two commits (e.g. a `git worktree` of the old one on PYTHONPATH), and diff the outputs.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

# Keys whose values are measurements of this execution, not results.
MEASURED = re.compile(
    r"(seconds|_s$|_at$|_mb$|per_second|ms_per_example|^pid$|^host$|^started|^finished|^run_dir$|^spec_path$"
    r"|^folder$|^file$|^files$|^source$|checkpoint|^torch_threads$|^git_commit$|^platform$)"
)
STAMP = re.compile(r"\d{8}-\d{6}(-\d+)?|run-[\w-]+")


def runs(root: Path) -> dict[str, Path]:
    """Run folders below `root` by their path with timestamps taken out."""
    return {STAMP.sub("*", str(p.parent.relative_to(root))): p.parent for p in sorted(root.rglob("report.json"))}


def differences(a, b, where: str = "$", tolerance: float = 1e-9) -> list[str]:
    """Every place where two JSON values differ, measured keys left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if MEASURED.search(str(key)):
                continue
            out += differences(a.get(key), b.get(key), f"{where}.{key}", tolerance)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]", tolerance)]
    if isinstance(a, float) and isinstance(b, float):
        same = math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance) or (math.isnan(a) and math.isnan(b))
        return [] if same else [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, str) and isinstance(b, str) and ("/" in a or "/" in b):
        return []  # a path: where the run was, not what it computed
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main(argv: list[str]) -> int:
    root_a, root_b = Path(argv[0]), Path(argv[1])
    runs_a, runs_b = runs(root_a), runs(root_b)
    found = 0
    for name in sorted(set(runs_a) | set(runs_b)):
        if name not in runs_a or name not in runs_b:
            print(f"{name}: only in {'B' if name not in runs_a else 'A'}")
            found += 1
            continue
        for file in ("report.json", "splits.json"):
            a = json.loads((runs_a[name] / file).read_text())
            b = json.loads((runs_b[name] / file).read_text())
            for line in differences(a, b):
                print(f"{name}/{file}: {line}")
                found += 1
    print(f"{len(set(runs_a) & set(runs_b))} runs compared, {found} differences")
    return 0 if found == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
