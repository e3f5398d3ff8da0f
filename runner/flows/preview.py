"""`runner preview`: what the model will actually see, from the tokenizer alone, in seconds.

For a few rows of a split: the exact token sequence decoded (chat framing included, after
truncation), with the tokens that carry loss marked; then rows and token lengths per split,
and the data checks.
"""

from __future__ import annotations

import json

from runner.data.encode import IGNORE_INDEX
from runner.data.examples import Example, TaskData
from runner.inputs import LOSS_CLOSE, LOSS_OPEN, Inputs, summary_text
from runner.preflight import preflight
from runner.spec.types import Spec


def preview(spec: Spec, rows: int, split: str, as_json: bool) -> str:
    """The preview as text (or JSON lines, one object per row)."""
    (inputs,) = preflight(spec, runs=[spec], with_probes=False, enforce_checks=False)
    records = [row_record(inputs, data, split, e) for data in inputs.tasks for e in data.splits()[split][:rows]]
    if as_json:
        return "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    parts = [row_text(r) for r in records]
    parts.append(summary_text(inputs, spec))
    return "\n\n".join(parts)


def row_record(inputs: Inputs, data: TaskData, split: str, example: Example) -> dict:
    """One row as the model sees it: decoded prompt and loss text, token counts, whether it was shortened.

    `truncated` is true if the row was shortened to fit, or if encoding it here had to cut it.
    """
    encoder = inputs.encoder
    cuts_before = encoder.cuts
    encoded = encoder.encode(example, data.completion_eos)
    ids, labels = encoded["input_ids"], encoded["labels"]
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    tokenizer = encoder.tokenizer
    return {
        "task": data.task.name,
        "split": split,
        "row": example.row,
        **({"id": example.id} if example.id is not None else {}),
        "file": data.files.get(split),
        "seen": tokenizer.decode(ids),
        "prompt": tokenizer.decode(ids[:start]),
        "loss_text": tokenizer.decode(ids[start:]),
        "tokens": len(ids),
        "loss_tokens": sum(label != IGNORE_INDEX for label in labels),
        "truncated": example.truncated or encoder.cuts > cuts_before,
    }


def row_text(record: dict) -> str:
    """A record as text: a header line, then the prompt with the loss tokens between ⟦ and ⟧."""
    flags = " · shortened to fit max_length" if record["truncated"] else ""
    head = (
        f"── task {record['task']} · {record['split']} row {record['row']}"
        + (f" (id {record['id']})" if "id" in record else "")
        + f" · {record['tokens']} tokens, {record['loss_tokens']} carry loss{flags} ──"
    )
    return f"{head}\n{record['prompt']}{LOSS_OPEN}{record['loss_text']}{LOSS_CLOSE}"
