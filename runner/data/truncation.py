"""Truncation that keeps what matters: rows longer than `model.max_length` are shortened
before templating, so the instruction, the chat framing and the system prompt always survive.

Policy `fields` (default): the row's text fields that appear in the prompt (not the completion)
are cut in the middle, start and end kept and joined by " … ", longest first: a cap on tokens
per field is lowered until the rendered row fits. Policy `left`: the start of the prompt is cut
when the row is encoded (the old behaviour; the instruction goes first). Policy `error`: a row
that does not fit stops the run, named.

Every shortened example is marked `truncated`, and its `prompt` is exactly what the model sees,
so training, scoring, predictions and `runner preview` all agree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jinja2

from runner.data.encode import Encoder
from runner.data.examples import Example, TaskData, prompt_fields, render_example
from runner.data.templates import load_template
from runner.errors import DataError, TemplateError
from runner.limits import DEFAULT_LIMITS, Limits

MARK = " … "


MIN_FIELD_TOKENS = 8  # below this a cut field says nothing; the row then falls back to a left cut


ATTEMPTS = 6  # re-renders per row: tokens of a re-joined text differ slightly from the sum of its parts


class Fitter:
    """Fits examples into `max_length` tokens by the spec's truncation policy."""

    def __init__(self, encoder: Encoder, policy: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.encoder = encoder
        self.policy = policy
        self.limits = limits  # re-rendering a row is held to the same bounds as the first render
        self._templates: dict[Path, jinja2.Template] = {}

    def template(self, path: Path) -> jinja2.Template:
        if path not in self._templates:
            self._templates[path] = load_template(path, self.limits)
        return self._templates[path]

    def completion_room(self, data: TaskData, example: Example) -> int:
        """Tokens the completion needs: the longest label for classification (every label is
        scored after the prompt), else the example's own completion."""
        if data.task.is_classification:
            return self.encoder.label_room(data.task.labels, data.completion_eos)
        return len(self.encoder.completion_ids(example.completion, data.completion_eos))

    def fit_task(self, data: TaskData) -> None:
        """Shorten, in place, every example of a task that does not fit; raise for the
        template's fixed text alone being too long, or for rows under policy `error`."""
        template = self.template(data.task.template)
        self._check_fixed_part(data, template)
        labels_room = self.encoder.label_room(data.task.labels, data.completion_eos) if data.task.labels else None
        problems = []
        for name, examples in data.splits().items():
            for i, example in enumerate(examples):
                room = labels_room if labels_room is not None else self.completion_room(data, example)
                fitted = self.fit(example, template, self.encoder.max_length - min(room, self.encoder.max_length // 2))
                if fitted is None:
                    length = len(self.encoder.prompt_ids(example.prompt)) + room
                    problems.append(
                        f"{name} row {example.row}: {length} tokens, more than model.max_length "
                        f"{self.encoder.max_length} (model.truncation is 'error')."
                    )
                    continue
                examples[i] = fitted
        if problems:
            raise DataError(f"{data.task.data.describe()} (task {data.task.name!r})", problems[:20])

    def fit(self, example: Example, template: jinja2.Template, budget: int) -> Example | None:
        """The example with a prompt of at most `budget` tokens (None: too long under `error`)."""
        length = len(self.encoder.prompt_ids(example.prompt))
        if length <= budget:
            return example
        if self.policy == "error":
            return None
        if self.policy == "left":
            return dataclasses.replace(example, truncated=True)  # cut when encoded
        return self._shorten_fields(example, template, budget)

    def _shorten_fields(self, example: Example, template: jinja2.Template, budget: int) -> Example:
        """Re-render the row from its original fields with its prompt fields cut to fit `budget`
        prompt tokens (an already shortened example is cut again from its full text)."""
        tokenizer = self.encoder.tokenizer
        ids = {
            key: tokenizer(example.fields[key], add_special_tokens=False)["input_ids"]
            for key in prompt_fields(template, example.fields)
            if isinstance(example.fields[key], str) and example.fields[key].strip()
        }
        prompt, _ = render_example(template, example.fields, self.limits)
        length = len(self.encoder.prompt_ids(prompt))
        if length <= budget:
            return dataclasses.replace(example, prompt=prompt, truncated=False)
        need = length - budget
        for _ in range(ATTEMPTS):
            cap = max(token_cap(sorted(map(len, ids.values()), reverse=True), need), MIN_FIELD_TOKENS)
            fields = {**example.fields, **{k: middle_cut(tokenizer, v, cap) for k, v in ids.items() if len(v) > cap}}
            prompt, _ = render_example(template, fields, self.limits)
            length = len(self.encoder.prompt_ids(prompt))
            if length <= budget or cap == MIN_FIELD_TOKENS:
                break
            need += length - budget
        return dataclasses.replace(example, prompt=prompt, truncated=True)

    def _check_fixed_part(self, data: TaskData, template: jinja2.Template) -> None:
        """The template's own text (instruction, framing) must fit: no field cut can help otherwise."""
        example = data.examples()[0]
        shown = prompt_fields(template, example.fields)
        blank = {k: "" if k in shown and isinstance(v, str) else v for k, v in example.fields.items()}
        try:
            prompt, _ = render_example(template, blank, self.limits)
        except ValueError:  # a template that needs non-empty fields: measured per row instead
            return
        fixed = len(self.encoder.prompt_ids(prompt)) + self.completion_room(data, example)
        if fixed > self.encoder.max_length:
            raise TemplateError(
                str(data.task.template),
                [
                    f"the template's fixed text (instruction and chat framing, with every field empty) is {fixed} "
                    f"tokens, more than model.max_length {self.encoder.max_length}; raise max_length or shorten "
                    "the template."
                ],
            )

    def fit_shots(
        self, data: TaskData, query: Example, shots: list[Example], room: int
    ) -> tuple[list[Example], list[int], bool]:
        """Few-shot prompt ids for `query` within max_length - `room`.

        When the prompt does not fit whole, the query and the shots share the space: the query
        gets at most an equal share (so long inputs still leave room for k shots), and each shot
        an equal share of what the query leaves, their fields cut to fit; shots that still do
        not fit are dropped from the end. Returns the shots used, the prompt ids, and whether
        the query itself was shortened further.
        """
        template = self.template(data.task.template)
        limit = self.encoder.max_length - room
        query_ids = self.encoder.prompt_ids(query.prompt)
        shots = list(shots)
        ids = self.encoder.prompt_ids(query.prompt, shots)
        if len(ids) <= limit:
            return shots, ids, False
        while shots:
            asked, cut = query, False
            equal = limit // (len(shots) + 1)
            if self.policy == "fields" and len(query_ids) > equal:
                asked = self._shorten_fields(query, template, equal)
                cut = asked.prompt != query.prompt
            asked_ids = self.encoder.prompt_ids(asked.prompt)
            share = (limit - len(asked_ids)) // len(shots)
            fitted = []
            for shot in shots:
                # A shot's cost is measured in place (its user and assistant turns), then its
                # fields are cut by what it is over its share.
                over = len(self.encoder.prompt_ids(asked.prompt, [shot])) - len(asked_ids) - share
                if over > 0 and self.policy == "fields":
                    shot = self._shorten_fields(shot, template, len(self.encoder.prompt_ids(shot.prompt)) - over)
                fitted.append(shot)
            ids = self.encoder.prompt_ids(asked.prompt, fitted)
            if len(ids) <= limit:
                return fitted, ids, cut
            shots.pop()
        return [], query_ids, False


def token_cap(lengths: list[int], need: int) -> int:
    """The largest per-field cap that frees at least `need` tokens (0 if even that cannot)."""
    low, high = 0, max(lengths, default=0)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(max(0, n - mid) for n in lengths) >= need:
            low = mid
        else:
            high = mid - 1
    return low


def middle_cut(tokenizer, ids: list[int], cap: int) -> str:
    """A field's text cut to about `cap` tokens: its start and its end, joined by ' … '."""
    head, tail = (cap + 1) // 2, cap // 2
    start = tokenizer.decode(ids[:head]).rstrip()
    end = tokenizer.decode(ids[-tail:]).lstrip() if tail else ""
    return start + MARK + end


def fit_tasks(tasks: list[TaskData], encoder: Encoder, policy: str, limits: Limits = DEFAULT_LIMITS) -> Fitter:
    """Mark prefix label sets, then fit every task's examples; returns the fitter for scoring."""
    fitter = Fitter(encoder, policy, limits)
    for data in tasks:
        data.label_eos = data.task.is_classification and bool(prefix_labels(encoder, data.task.labels))
        fitter.fit_task(data)
    return fitter


def prefix_labels(encoder: Encoder, labels: tuple[str, ...]) -> list[tuple[str, str]]:
    """Pairs (a, b) of labels whose token ids begin with a's: without an end token, a always
    scores at least as high as b, so b could never be predicted."""
    ids = {label: encoder.completion_ids(label, add_eos=False) for label in labels}
    return [(a, b) for a in labels for b in labels if a != b and ids[b][: len(ids[a])] == ids[a]]
