"""The shipped ticket data follows its documented rubric and mix."""

from __future__ import annotations

import json
from collections import Counter

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
