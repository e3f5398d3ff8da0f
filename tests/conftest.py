"""Tiny data, templates and specs; every test runs on 2 CPU cores in seconds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT.parent / "shared" / "data"

WORDS = ["great", "awful", "lovely", "broken", "superb", "terrible", "fine", "bad", "nice", "poor"]


def sentiment_rows(n: int = 40) -> list[dict]:
    rows = []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        label = "positive" if word in ("great", "lovely", "superb", "fine", "nice") else "negative"
        rows.append({"text": f"The product {i} was {word}.", "sentiment": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session", autouse=True)
def score_cache(tmp_path_factory) -> Iterator[Path]:
    """Base-model scores cached in a folder of this test session, never the user's
    ~/.cache/runner/scores (the converted-model cache there is still found by real-model tests)."""
    folder = tmp_path_factory.mktemp("score-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RUNNER_SCORE_CACHE", str(folder))
        yield folder


REPORT_SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "report.schema.json"
REPORTS_CHECKED: list[Path] = []


def report_problems(report: dict) -> list[str]:
    """Every place a report.json breaks schemas/report.schema.json, located."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(REPORT_SCHEMA.read_text()))
    return [f"$.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(report)]


@pytest.fixture(scope="session", autouse=True)
def reports_follow_the_schema() -> Iterator[list[Path]]:
    """Every report.json runner writes in this test process is checked against the report schema
    as it is written (running, then finished): a field the schema does not know fails the test."""
    from runner.rundir import report_files

    original = report_files.write_json

    def checked(path: Path, data: dict) -> None:
        original(path, data)
        problems = report_problems(json.loads(Path(path).read_text()))
        assert not problems, f"{path} breaks schemas/report.schema.json:\n" + "\n".join(problems[:10])
        REPORTS_CHECKED.append(Path(path))

    report_files.write_json = checked
    yield REPORTS_CHECKED
    report_files.write_json = original


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A spec folder with data/, templates/ and a valid classification spec at spec.yaml."""
    return make_workdir(tmp_path)


def make_workdir(root: Path, rows: int = 40) -> Path:
    (root / "data").mkdir()
    (root / "templates").mkdir()
    write_jsonl(root / "data" / "sentiment.jsonl", sentiment_rows(rows))
    (root / "templates" / "sentiment.jinja").write_text("Review: {{ text }}\nSentiment:\n|||\n{{ sentiment }}\n")
    write_spec(root / "spec.yaml", base_spec())
    return root


def base_spec(**overrides) -> dict:
    spec = {
        "name": "tiny",
        "seed": 7,
        "output_dir": "runs",
        "model": {"source": "random-tiny", "max_length": 128},
        "tasks": [
            {
                "name": "sentiment",
                "data": "data/sentiment.jsonl",
                "template": "sentiment.jinja",
                "labels": ["positive", "negative"],
            }
        ],
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3},
        "evaluation": {"batch_size": 8, "max_new_tokens": 8, "forgetting": [], "bootstrap_samples": 200},
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "log_every_n_steps": 1},
    }
    spec.update(overrides)
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
