"""Tiny data, templates and specs; every test runs on 2 CPU cores in seconds."""

from __future__ import annotations

import json
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


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A spec folder with data/, templates/ and a valid classification spec at spec.yaml."""
    (tmp_path / "data").mkdir()
    (tmp_path / "templates").mkdir()
    write_jsonl(tmp_path / "data" / "sentiment.jsonl", sentiment_rows())
    (tmp_path / "templates" / "sentiment.jinja").write_text("Review: {{ text }}\nSentiment:\n|||\n{{ sentiment }}\n")
    write_spec(tmp_path / "spec.yaml", base_spec())
    return tmp_path


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
