"""Malformed inputs through the real command line: runner must refuse each one cleanly.

The corpus lives in `tests/bad_inputs/`:

- `specs/` — malformed spec files, each derived from conftest's `base_spec()` (model
  `random-tiny`, one classification task on `data/sentiment.jsonl` with `sentiment.jinja`,
  labels [positive, negative]) with one thing broken: wrong types, unknown or misspelt keys,
  missing or empty required keys, missing files, broken templates, labels that do not fit the
  data, impossible method settings, variants and probes that cannot work, unparseable files.
  Their base is made cheap (epochs 1, max_steps 1, only the majority and fine-tuned rungs,
  10 bootstrap samples) so that a case runner wrongly lets through still ends in seconds.
  A YAML spec starts with `# expect: <substring>`; a JSON spec (no comments in JSON) has its
  expectation in a sidecar `<file name>.expect` (e.g. `json_wrong_type.json.expect`).
- `data/` — malformed data files, and `data_specs/` — otherwise valid specs that read them
  (broken JSONL lines, non-objects, missing fields, non-UTF-8 bytes, empty or blank files, bad
  labels, ragged CSV rows, files that are not the format their extension says, too few rows).
- `templates/` — the broken templates the specs use (and `coded_label.jinja` for 0/1 labels);
  copied next to conftest's `sentiment.jinja`.
- `good/` — real-world file shapes (`good/data/`) that must simply work: `# good: ...` specs
  must pass `runner preview` (exit 0). `# info: ...` specs are recorded for information: the
  outcome is printed, and only a clean outcome is required (exit 0 or 2, never a traceback).
  A spec there with `# expect:` is a bad case like the others.

Every bad case is copied into its own `tmp_path` (conftest's `make_workdir` gives the valid
`data/sentiment.jsonl` and `templates/sentiment.jinja`; the case's files are dropped in next to
them) and run with `runner run SPEC` in-process — the user's real path. Each must: exit 2;
print no traceback (an exception escaping `main` is printed as the interpreter would, exit 1);
name the problem (stderr contains the case's expected substring); and leave no run folder
(`runs/` absent or empty) — bad inputs are refused before anything is written or trained.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_workdir

from runner.cli import main

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
TEMPLATES = CORPUS / "templates"


@dataclass(frozen=True)
class Case:
    spec: Path  # the spec file in the corpus
    kind: str  # "expect" (a bad case), "good" or "info"
    text: str  # the expected substring (bad), or what the case is (good, info)
    data: Path | None  # a folder whose files go to the case's data/

    @property
    def id(self) -> str:
        return str(self.spec.relative_to(CORPUS))


def header(spec: Path) -> tuple[str, str]:
    """(kind, text) from the spec's first line `# kind: text`, or from the JSON sidecar."""
    if spec.suffix == ".json":
        return "expect", (spec.parent / f"{spec.name}.expect").read_text().strip()
    first = spec.read_bytes().split(b"\n", 1)[0].decode("ascii")
    kind, sep, text = first.removeprefix("# ").partition(": ")
    assert first.startswith("# ") and sep and kind in ("expect", "good", "info"), f"{spec}: bad header {first!r}"
    return kind, text.strip()


def collect(folder: str, data: Path | None) -> list[Case]:
    specs = sorted(p for p in (CORPUS / folder).iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    return [Case(p, *header(p), data) for p in specs]


SPEC_CASES = collect("specs", None)
DATA_CASES = collect("data_specs", CORPUS / "data")
GOOD_FOLDER_CASES = collect("good", CORPUS / "good" / "data")
BAD_CASES = SPEC_CASES + DATA_CASES + [c for c in GOOD_FOLDER_CASES if c.kind == "expect"]
GOOD_CASES = [c for c in GOOD_FOLDER_CASES if c.kind == "good"]
INFO_CASES = [c for c in GOOD_FOLDER_CASES if c.kind == "info"]


def stage(case: Case, root: Path) -> Path:
    """A fresh spec folder: conftest's valid data/ and templates/, the corpus templates, the
    case's data files and its spec (under its own name). Returns the spec's path there."""
    make_workdir(root)
    (root / "spec.yaml").unlink()  # conftest's valid spec; the case brings its own
    for template in TEMPLATES.iterdir():
        shutil.copy(template, root / "templates" / template.name)
    if case.data is not None:
        for item in case.data.iterdir():
            shutil.copy(item, root / "data" / item.name)
    return Path(shutil.copy(case.spec, root / case.spec.name))


def stream_handlers() -> list[logging.StreamHandler]:
    """Plain stream handlers of every logger (e.g. the one `datasets` adds on first use)."""
    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    return [h for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler]


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run `runner ...` in-process from the case folder; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    saved = os.environ.get("RUNNER_RUN_DIR")
    rebound: list[tuple[logging.StreamHandler, bool]] = []

    def run(argv: list[str]) -> tuple[int, str, str]:
        # A library's log handler keeps the stream it was created with: in one pytest process
        # that is an earlier test's (closed) capture, and writing to it prints "--- Logging
        # error ---" with a traceback that the real `runner` process would never show. Point
        # such handlers at this test's stdout/stderr, as in a fresh process (handlers made
        # during the call bind the current streams themselves).
        for handler in stream_handlers():
            to_stdout = handler.stream in (sys.__stdout__, sys.stdout)
            rebound.append((handler, to_stdout))
            handler.stream = sys.stdout if to_stdout else sys.stderr
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # what the `runner` process would print and exit with
            traceback.print_exc(file=sys.stderr)
            code = 1
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    for handler, to_stdout in rebound:  # the real streams again, as outside any test
        handler.stream = sys.__stdout__ if to_stdout else sys.__stderr__
    if saved is None:
        os.environ.pop("RUNNER_RUN_DIR", None)
    else:
        os.environ["RUNNER_RUN_DIR"] = saved


def leftovers(root: Path) -> list[str]:
    runs = root / "runs"
    return sorted(str(p.relative_to(root)) for p in runs.rglob("*")) if runs.exists() else []


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_cleanly(case: Case, tmp_path: Path, cli) -> None:
    spec = stage(case, tmp_path)
    code, out, err = cli(["run", str(spec)])
    problems = []
    if code != 2:
        problems.append(f"exit code {code}, expected 2")
    if "Traceback" in err:
        problems.append(f"a traceback on stderr, ending: {err.strip().splitlines()[-1]}")
    if case.text not in err:
        problems.append(f"stderr does not contain the expected {case.text!r}")
    left = leftovers(tmp_path)
    if left:
        problems.append(f"a run folder was left: {left[:3]}{' …' if len(left) > 3 else ''}")
    assert not problems, "; ".join(problems) + "\n--- stderr (last 3000 chars) ---\n" + err[-3000:]


@pytest.mark.parametrize("case", GOOD_CASES, ids=lambda c: c.id)
def test_real_world_file_shape_previews(case: Case, tmp_path: Path, cli) -> None:
    spec = stage(case, tmp_path)
    code, out, err = cli(["preview", str(spec), "--rows", "1"])
    assert code == 0 and "Traceback" not in err, f"{case.text}: exit {code}\n--- stderr ---\n{err[-3000:]}"


@pytest.mark.parametrize("case", INFO_CASES, ids=lambda c: c.id)
def test_information_only_shape_is_handled_cleanly(case: Case, tmp_path: Path, cli, capsys) -> None:
    spec = stage(case, tmp_path)
    code, out, err = cli(["preview", str(spec), "--rows", "1"])
    lines = err.strip().splitlines() or [""]
    with capsys.disabled():
        print(f"\n[info] {case.id} ({case.text}): exit {code}; stderr: {lines[0][:200]!r} … {lines[-1][:200]!r}")
    assert code in (0, 2) and "Traceback" not in err, f"exit {code}\n--- stderr ---\n{err[-3000:]}"


def test_corpus_is_complete() -> None:
    """The corpus holds what its docstring promises (a guard against a half-copied folder)."""
    assert len(SPEC_CASES) >= 32
    assert len([p for p in (CORPUS / "data").iterdir() if p.is_file()]) >= 12
    assert len(DATA_CASES) >= 12
    assert GOOD_CASES and INFO_CASES


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_validate_refuses_what_run_refuses(case: Case, tmp_path: Path, cli) -> None:
    """One pre-flight: `runner validate` gives the exit code and the problems `runner run` gives
    (data-check warnings, printed before the error by both, aside)."""
    spec = stage(case, tmp_path)
    run_code, _, run_err = cli(["run", str(spec)])
    code, _, err = cli(["validate", str(spec)])

    def error_lines(text: str) -> list[str]:
        return [line for line in text.strip().splitlines() if not line.startswith("data check ")]

    assert (code, error_lines(err)) == (run_code, error_lines(run_err))
