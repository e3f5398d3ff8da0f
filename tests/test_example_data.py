"""The shipped ticket data follows its documented rubric and mix."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import PROJECT

DATA = PROJECT / "experiments" / "data" / "ticket_urgency.jsonl"


def rubric(impact: str, reach: str, workaround: bool) -> str:
    """experiments/data/README.md, 'The label'."""
    if impact == "minor":
        return "Low"
    score = {"severe": 3, "moderate": 2}[impact] + {"many": 3, "some": 2, "one": 1}[reach] - (1 if workaround else 0)
    return "Critical" if score == 6 else "High" if score == 5 else "Medium"


def test_every_label_follows_the_rubric_and_the_mix_is_as_documented():
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    assert len(rows) >= 1000
    assert all(r["urgency"] == rubric(r["impact"], r["reach"], r["workaround"]) for r in rows)
    mix = Counter(r["urgency"] for r in rows)
    shares = {label: mix[label] / len(rows) for label in mix}
    assert shares == {"Critical": 0.1, "High": 0.25, "Medium": 0.4, "Low": 0.25}
    assert len({r["ticket"] for r in rows}) == len(rows)
    assert len({r["id"] for r in rows}) == len(rows)
    lengths = [len(r["ticket"].split()) for r in rows]
    assert min(lengths) >= 3 and max(lengths) <= 150


def test_the_demo_split_is_stable():
    """The README's demo numbers were measured on these 104 test tickets: a change to the
    splitting code must not move them silently."""
    import hashlib

    from runner.data.prepare import prepare_data
    from runner.spec.load import load_spec

    data = prepare_data(load_spec(PROJECT / "experiments" / "ticket_urgency.yaml"))[0]
    rows = [e.row for e in data.test]
    assert rows[:6] == [10, 28, 38, 56, 63, 65]
    assert hashlib.sha256(str(rows).encode()).hexdigest()[:16] == "656d55ee418af947"
    assert (len(data.train), len(data.val), len(data.test)) == (728, 208, 104)


def test_long_tickets_have_a_fixed_test_file_from_other_source_tickets():
    import csv

    with open(PROJECT / "experiments" / "data" / "long_tickets_train.csv", newline="") as f:
        train = list(csv.DictReader(f))
    test = [json.loads(line) for line in (PROJECT / "experiments" / "data" / "long_tickets_test.jsonl").open()]
    assert (len(train), len(test)) == (420, 150)
    source = {r["ticket"] for r in map(json.loads, DATA.open())}
    origin = lambda row: next(t for t in source if row["body"].startswith(t))  # noqa: E731
    assert not {origin(r) for r in train} & {origin(r) for r in test}
    for rows in (train, test):
        counts = Counter(r["urgency"] for r in rows)
        assert set(counts) == {"Critical", "High", "Medium", "Low"}
        assert counts["Medium"] / len(rows) == pytest.approx(0.40, abs=0.02)
