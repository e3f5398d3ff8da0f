"""The built-in `general` replay set is well formed and shares no item with the `general` forgetting suite."""

from __future__ import annotations

import difflib
import json
import re
import string
from pathlib import Path

SUITES = Path(__file__).resolve().parent.parent / "runner" / "suites"
REPLAY = SUITES / "replay" / "general.jsonl"
GENERAL = SUITES / "general"
NEAR = 0.8  # SequenceMatcher ratio at or above which two normalized texts count as the same item


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def normalize(text: str) -> str:
    """Lowercase, punctuation stripped, whitespace collapsed."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def suite_texts() -> list[str]:
    """Every instruction and multiple-choice question of the `general` forgetting suite."""
    texts = [row["instruction"] for row in read_jsonl(GENERAL / "instructions.jsonl")]
    texts += [row["question"] for row in read_jsonl(GENERAL / "multiple_choice.jsonl")]
    return texts


def near_duplicates(candidates: list[str], probes: list[str]) -> list[tuple[str, str, float]]:
    """(candidate, probe, ratio) for each pair whose normalized texts are equal or at least NEAR similar."""
    mine = [(text, normalize(text)) for text in candidates]
    pairs = []
    matcher = difflib.SequenceMatcher(None)
    for probe in probes:
        theirs = normalize(probe)
        matcher.set_seq2(theirs)  # b is cached by SequenceMatcher, so it is the outer loop
        for text, normalized in mine:
            if normalized == theirs:
                pairs.append((text, probe, 1.0))
                continue
            matcher.set_seq1(normalized)
            # real_quick_ratio and quick_ratio are upper bounds of ratio: cheap skips only
            if matcher.real_quick_ratio() >= NEAR and matcher.quick_ratio() >= NEAR:
                ratio = matcher.ratio()
                if ratio >= NEAR:
                    pairs.append((text, probe, ratio))
    return pairs


def report(pairs: list[tuple[str, str, float]]) -> str:
    return "\n".join(f"  {ratio:.2f}  replay: {a!r}\n        suite:  {b!r}" for a, b, ratio in pairs)


def test_replay_rows_are_complete_and_unique():
    rows = read_jsonl(REPLAY)
    assert len(rows) == 300
    assert [row["id"] for row in rows] == [f"rp-{i:03d}" for i in range(1, 301)]
    for row in rows:
        assert set(row) == {"id", "instruction", "answer", "category"}, row
        assert all(isinstance(row[k], str) and row[k].strip() for k in row), row
    instructions = [normalize(row["instruction"]) for row in rows]
    repeated = sorted({text for text in instructions if instructions.count(text) > 1})
    assert not repeated, f"repeated instructions: {repeated}"


def test_replay_categories_are_spread_evenly():
    rows = read_jsonl(REPLAY)
    counts: dict[str, int] = {}
    for row in rows:
        assert re.fullmatch(r"[a-z]+", row["category"]), row
        counts[row["category"]] = counts.get(row["category"], 0) + 1
    assert len(counts) >= 10, counts
    assert max(counts.values()) <= 2 * min(counts.values()), counts


def test_no_replay_instruction_is_a_near_duplicate_of_a_suite_item():
    instructions = [row["instruction"] for row in read_jsonl(REPLAY)]
    pairs = near_duplicates(instructions, suite_texts())
    assert not pairs, f"{len(pairs)} replay instruction(s) near-duplicate the general suite:\n{report(pairs)}"


def test_the_near_duplicate_check_catches_copied_suite_items():
    """Guards the guard: suite items copied in, verbatim or lightly reworded, are flagged."""
    probes = suite_texts()
    longest = max(probes, key=len)
    verbatim = [probes[0], probes[-1].upper(), probes[len(probes) // 2].rstrip("?!.") + " ?"]
    reworded = [longest + " Please.", "Tell me: " + longest]
    assert all(normalize(text) not in map(normalize, probes) for text in reworded)
    flagged = {text for text, _, _ in near_duplicates(verbatim + reworded, probes)}
    assert flagged == set(verbatim + reworded)
    replay_like = ["Which bone in the human body is the longest?", "Name three types of pasta."]
    assert not near_duplicates(replay_like, probes)
