"""The corpus of users' real file shapes and hostile inputs (tests/corpus.py) through the real
command line: bad cases refused cleanly (exit 2, located, no traceback, no run folder) by
`runner run` and by `runner validate` alike, hostile ones within time and memory, good shapes
simply working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from corpus import BAD, CASES, GOOD, Case, stage
from test_bad_inputs import cli  # noqa: F401 (the in-process `runner` fixture)

TESTS = Path(__file__).resolve().parent
CASE_SECONDS = 30  # a hostile case's bound: far above what a bounded one takes
PEAK_RSS_MB = 2048


def problems_of(case: Case, code: int, err: str, left: list[str]) -> list[str]:
    """What is wrong with a bad case's outcome (empty: refused as it must be)."""
    problems = []
    if code != 2:
        problems.append(f"exit code {code}, expected 2")
    if "Traceback" in err:
        problems.append(f"a traceback on stderr, ending: {err.strip().splitlines()[-1]}")
    problems += [f"stderr does not name {text!r}" for text in case.expect if text not in err]
    if left:
        problems.append(f"a run folder was left: {left[:3]}")
    return problems


def error_lines(err: str) -> list[str]:
    """The error message alone: data-check warnings are printed before it by both commands."""
    return [line for line in err.strip().splitlines() if not line.startswith("data check ")]


def leftovers(root: Path) -> list[str]:
    runs = root / "runs"
    return sorted(str(p.relative_to(root)) for p in runs.rglob("*")) if runs.exists() else []


def test_corpus_size() -> None:
    """At least 40 cases beyond tests/bad_inputs, each standing for a real input."""
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert all(c.instance for c in CASES) and len(GOOD) >= 6


@pytest.mark.parametrize("case", [c for c in BAD if not c.hostile], ids=lambda c: c.id)
def test_bad_case_is_refused_alike_by_run_and_validate(case: Case, tmp_path: Path, cli) -> None:  # noqa: F811
    spec = stage(case, tmp_path)
    code, _, err = cli(["run", str(spec), *case.args])
    problems = problems_of(case, code, err, leftovers(tmp_path))
    assert not problems, "; ".join(problems) + "\n--- stderr ---\n" + err[-3000:]
    v_code, _, v_err = cli(["validate", str(spec), *case.args])
    assert (v_code, error_lines(v_err)) == (code, error_lines(err))


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_real_world_shape_works(case: Case, tmp_path: Path, cli) -> None:  # noqa: F811
    spec = stage(case, tmp_path)
    code, out, err = cli(["preview", str(spec), "--rows", "40", *case.args])
    assert code == 0 and "Traceback" not in err, f"{case.instance}: exit {code}\n--- stderr ---\n{err[-3000:]}"
    missing = [text for text in case.expect if text not in out]
    assert not missing, f"{case.instance}: preview does not show {missing}"
    v_code, _, v_err = cli(["validate", str(spec)])
    assert v_code == 0, v_err[-3000:]


def test_hostile_cases_in_a_child_process(tmp_path: Path) -> None:
    """Each hostile case through `runner run` and `runner validate` in one child process: each
    refused in well under CASE_SECONDS, the child's peak memory under PEAK_RSS_MB, and both
    commands giving the same exit code and message."""
    hostile = [c for c in CASES if c.hostile]
    jobs = []
    for case in hostile:
        root = tmp_path / case.id
        root.mkdir()
        spec = stage(case, root)
        if case.command is not None:
            argv = [part.format(root=root, spec=spec) for part in case.command]
            jobs.append({"id": case.id, "root": str(root), "argv": argv})
            continue
        for command in ("run", "validate"):
            jobs.append({"id": case.id, "root": str(root), "argv": [command, str(spec), *case.args]})
    child = subprocess.run(
        [sys.executable, str(TESTS / "corpus_driver.py")],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=CASE_SECONDS * len(jobs),
        cwd=tmp_path,
    )
    results = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(jobs), f"the child stopped after {len(results)} of {len(jobs)}:\n{child.stderr[-3000:]}"
    failures = []
    by_case: dict[str, dict[str, dict]] = {}
    for result in results:
        case = next(c for c in hostile if c.id == result["id"])
        by_case.setdefault(case.id, {})[result["argv0"]] = result
        for problem in problems_of(case, result["code"], result["stderr"], result["left"]):
            failures.append(f"{case.id} ({result['argv0']}): {problem}\n    {result['stderr'][-600:]!r}")
        if result["seconds"] > CASE_SECONDS:
            failures.append(f"{case.id} ({result['argv0']}): took {result['seconds']} s")
    for case_id, pair in by_case.items():
        if "validate" in pair and error_lines(pair["run"]["stderr"]) != error_lines(pair["validate"]["stderr"]):
            failures.append(f"{case_id}: run and validate differ")
    peak = max(r["peak_rss_mb"] for r in results)
    assert peak < PEAK_RSS_MB, f"peak RSS {peak:.0f} MB"
    assert not failures, "\n".join(failures)
