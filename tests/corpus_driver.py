"""Runs corpus cases in a child process (tests/test_corpus.py starts it), so that a bound that
breaks costs a timeout there instead of a hung or exhausted test run.

Reads a JSON list of {"id", "root", "argv"} on stdin; runs each `runner ARGV` in-process from
its folder and prints one JSON line per case as it finishes: exit code, stderr (its end), the
seconds it took, the run folders left behind, and this process's peak RSS so far.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

from runner.cli import main


def run_case(case: dict) -> dict:
    root = Path(case["root"])
    os.chdir(root)
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(case["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # what the `runner` process would print
            traceback.print_exc(file=err)
            code = 1
    runs = root / "runs"
    return {
        "id": case["id"],
        "argv0": case["argv"][0],
        "code": code,
        "stderr": err.getvalue()[-6000:],
        "seconds": round(time.perf_counter() - started, 2),
        "left": sorted(str(p.relative_to(root)) for p in runs.rglob("*"))[:5] if runs.exists() else [],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


if __name__ == "__main__":
    for case in json.load(sys.stdin):
        print(json.dumps(run_case(case)), flush=True)
