"""The shipped templates for common public formats render real-shaped rows to prompt-completion
pairs (and the shared public files where they are present)."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import PROJECT, SHARED_DATA

from runner.data.examples import render_example
from runner.data.templates import load_template

TEMPLATES = PROJECT / "templates"


def render(name: str, row: dict) -> tuple[str, str]:
    return render_example(load_template(TEMPLATES / name), row)


def test_sentence_classification():
    prompt, completion = render("sentence_classification.jinja", {"sentence": "a gripping film .", "label": 1})
    assert prompt.endswith("Sentence: a gripping film .") and completion == "1"  # label_map turns 1 into a word


def test_multiple_choice_letter_lists_the_choices():
    row = {
        "question": {
            "stem": "Which is a mammal?",
            "choices": [{"label": "A", "text": "shark"}, {"label": "B", "text": "whale"}],
        },
        "answerKey": "B",
    }
    prompt, completion = render("multiple_choice_letter.jinja", row)
    assert "A. shark\nB. whale\nAnswer with the letter" in prompt and completion == "B"


def test_extractive_qa_takes_the_first_answer():
    row = {
        "context": "Paris is in France.",
        "question": "Where is Paris?",
        "answers": {"text": ["France", "in France"], "answer_start": [12, 9]},
    }
    prompt, completion = render("extractive_qa.jinja", row)
    assert "Passage: Paris is in France.\nQuestion: Where is Paris?" in prompt and completion == "France"


@pytest.mark.parametrize(
    "row, prompt, completion",
    [
        ({"instruction": "Name a colour.", "input": "", "output": "Blue."}, "Name a colour.", "Blue."),
        (
            {"instruction": "Summarise.", "input": "Cats sleep a lot.", "output": "Cats sleep."},
            "Summarise.\n\nCats sleep a lot.",
            "Cats sleep.",
        ),
        (
            {"instruction": "Who wrote it?", "context": "Hamlet, by Shakespeare.", "response": "Shakespeare."},
            "Who wrote it?\n\nHamlet, by Shakespeare.",
            "Shakespeare.",
        ),
        ({"instruction": "Say hi.", "context": "", "response": "Hi!"}, "Say hi.", "Hi!"),
    ],
    ids=["alpaca", "alpaca-input", "dolly-context", "dolly"],
)
def test_instruction_formats(row, prompt, completion):
    assert render("instruction.jinja", row) == (prompt, completion)


def test_templates_render_the_shared_public_files():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    with open(SHARED_DATA / "arc_easy" / "test.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(50), f)]
    for row in rows:
        prompt, completion = render("multiple_choice_letter.jinja", row)
        assert completion in {c["label"] for c in row["question"]["choices"]} and completion in prompt
    with open(SHARED_DATA / "sst2" / "dev.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:50]
    assert all(render("sentence_classification.jinja", row)[1] in {"0", "1"} for row in rows)
