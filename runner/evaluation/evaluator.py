"""The evaluator: label scoring, generation and perplexity over prepared examples."""

from __future__ import annotations

import contextlib
import functools
import random
import sys
from dataclasses import dataclass

import torch

from runner.data.encode import Collator, Encoder
from runner.data.examples import Example, TaskData
from runner.data.truncation import Fitter
from runner.evaluation.continuations import build_tree, score_tree, tree_attention, tree_size
from runner.evaluation.metrics import classification_metrics, normalize_answer, token_f1
from runner.model.forward import completion_logprobs, forward, greedy, output_cache

TEXT_WINDOWS = 2  # windows per forward pass for perplexity and drift
CANDIDATE_ROWS = 4  # continuing candidate rows per prompt slot of a scoring batch (see candidate_scores)
TREE_NODES = 1024  # candidate tree nodes in one scoring batch: ~100 MB of bf16 logits (a 49k vocabulary)


@dataclass
class Evaluator:
    """Scores examples with one model; the same settings serve every rung and probe."""

    model: torch.nn.Module
    encoder: Encoder
    batch_size: int
    max_new_tokens: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    adapters_off: bool = False  # score a peft model as its base model, adapters disabled
    fitter: Fitter | None = None  # shortens few-shot examples to fit max_length
    phase: str = "scoring"  # what the progress bar says is being scored

    @contextlib.contextmanager
    def describing(self, phase: str):
        """Name what is scored inside the block, for the progress bar."""
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    def progress(self, total: int, unit: str = "row"):
        """A progress bar on stderr: scoring a base model takes minutes and must not look hung.
        Quiet for a single batch; in a log file it updates every 10 s instead of redrawing."""
        from tqdm.auto import tqdm

        tty = sys.stderr.isatty()
        return tqdm(
            total=total,
            desc=self.phase,
            unit=unit,
            leave=False,
            file=sys.stderr,
            mininterval=0.5 if tty else 10.0,
            disable=total <= self.batch_size,
        )

    @contextlib.contextmanager
    def _inference(self):
        """Eval mode and autocast for scoring; the model's train/eval mode is restored after."""
        was_training = self.model.training
        self.model.eval()
        adapters = self.model.disable_adapter() if self.adapters_off else contextlib.nullcontext()
        try:
            with torch.no_grad(), self._autocast(), adapters:
                yield
        finally:
            self.model.train(was_training)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # --- likelihood of candidate completions -----------------------------------------

    def candidate_scores(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[torch.Tensor]:
        """Summed log-likelihood of each candidate completion after its prompt.

        Each prompt runs once; its key/value cache is then shared by all of its candidates, so
        scoring k labels or choices costs about one forward pass per prompt instead of k.
        """
        longest = max(len(ids) for cands in candidates for ids in cands)
        budget = self.encoder.max_length - longest
        prompts = [p[-budget:] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        # Multi-token candidates continue in a second pass, as a tree of their distinct prefixes
        # (continuations.py) or, where attention takes no custom mask, on copies of the prompt's
        # keys/values. With 77 labels a batch of 16 prompts is ~2,000 tree nodes or 1,232 rows
        # with a copy each, gigabytes of logits or keys/values and minutes of silence: a batch
        # holds at most TREE_NODES nodes or CANDIDATE_ROWS x batch_size rows, so the bar moves
        # and memory stays bounded; with a few labels this is the plain batch size.
        kind = tree_attention(self.model)
        if kind is not None:
            nodes = max((tree_size(cands) for cands in candidates), default=0)
            step = max(1, min(self.batch_size, TREE_NODES // max(nodes, 1)))
        else:
            continuing = max((sum(len(ids) > 1 for ids in cands) for cands in candidates), default=0)
            step = max(1, min(self.batch_size, CANDIDATE_ROWS * self.batch_size // max(continuing, 1)))
        with self._inference(), self.progress(len(order)) as bar:
            for idx in token_batches(order, [len(p) for p in prompts], step):
                scores = self._score_continuations([prompts[i] for i in idx], [candidates[i] for i in idx], kind)
                for i, s in zip(idx, scores):
                    out[i] = s
                bar.update(len(idx))
        return out

    def label_scores(self, prompts: list[list[int]], labels: tuple[str, ...], add_eos: bool = False) -> torch.Tensor:
        """[n_prompts, n_labels] summed log-likelihood of each label as the completion (with the
        end token after it when one label's tokens begin another's)."""
        label_ids = [self.encoder.completion_ids(label, add_eos=add_eos) for label in labels]
        return torch.stack(self.candidate_scores(prompts, [label_ids] * len(prompts)))

    def _score_continuations(
        self, prompts: list[list[int]], candidates: list[list[list[int]]], kind: str | None
    ) -> list[torch.Tensor]:
        pad = self.encoder.tokenizer.pad_token_id
        # Left padding: every prompt ends in the last column, where its first candidate token is scored.
        ids, mask = left_pad(prompts, pad)
        ids, mask = ids.to(self.device), mask.to(self.device)
        prompt_out = forward(self.model, keep=1, input_ids=ids, attention_mask=mask, use_cache=True)
        first = torch.log_softmax(prompt_out.logits[:, -1].float(), dim=-1)

        owner = [i for i, cands in enumerate(candidates) for _ in cands]  # prompt of each flat row
        flat = [c for cands in candidates for c in cands]
        scores = torch.stack([first[i, c[0]] for i, c in zip(owner, flat)])
        # Only candidates longer than one token continue past the prompt (labels are often one
        # token each: then the prompt's own forward scored them all).
        if any(len(c) > 1 for c in flat):
            if kind is not None:  # tree_attention's answer: a custom 4-D mask is taken as given
                after_prompts = functools.partial(self._after_prompts, output_cache(prompt_out))
                scores = scores + score_tree(after_prompts, mask, build_tree(candidates, pad), kind, len(flat))
            else:
                scores = self._score_on_copies(scores, flat, owner, mask, prompt_out)
        scores = scores.float().cpu()
        out, start = [], 0
        for cands in candidates:
            out.append(scores[start : start + len(cands)])
            start += len(cands)
        return out

    def _score_on_copies(self, scores, flat, owner, mask, prompt_out) -> torch.Tensor:
        """The rest of each multi-token candidate, fed after its own copy of its prompt's cached
        keys/values: for attention that takes no custom mask (see continuations.py)."""
        pad = self.encoder.tokenizer.pad_token_id
        longer = [j for j, c in enumerate(flat) if len(c) > 1]
        steps = max(len(flat[j]) for j in longer) - 1
        inputs = torch.full((len(longer), steps), pad, dtype=torch.long)
        targets = torch.full((len(longer), steps), -1, dtype=torch.long)
        for row, j in enumerate(longer):
            tokens = flat[j]
            inputs[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
            targets[row, : len(tokens) - 1] = torch.tensor(tokens[1:])
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        rows = torch.tensor([owner[j] for j in longer], device=self.device)
        cache = output_cache(prompt_out)
        cache.batch_select_indices(rows)
        full_mask = torch.cat([mask[rows], torch.ones_like(inputs)], dim=1)
        cont_positions = mask.sum(-1, keepdim=True)[rows] + torch.arange(steps, device=self.device)
        logits = self._after_prompts(cache, inputs, full_mask, cont_positions)
        valid = targets >= 0
        logprobs = torch.log_softmax(logits[valid].float(), dim=-1)
        picked = logprobs.gather(-1, targets[valid].unsqueeze(-1)).squeeze(-1)
        flat_index = torch.tensor(longer, device=self.device)[valid.nonzero()[:, 0]]
        return scores.index_add(0, flat_index, picked)

    def _after_prompts(self, cache, input_ids, attention_mask, position_ids) -> torch.Tensor:
        """Logits of tokens fed after the prompts' cached keys/values (`cache`, extended in place)."""
        return forward(
            self.model,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        ).logits

    def sequence_logprobs(self, rows: list[dict], batch_size: int | None = None) -> torch.Tensor:
        """Summed completion log-probability of each encoded row (the plain reference path)."""
        collator = Collator(self.encoder.tokenizer.pad_token_id)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        out = torch.empty(len(rows))
        lengths = [len(r["input_ids"]) for r in rows]
        with self._inference(), self.progress(len(order)) as bar:
            for idx in token_batches(order, lengths, batch_size or self.batch_size):
                batch = {k: v.to(self.device) for k, v in collator([rows[i] for i in idx]).items()}
                out[idx] = completion_logprobs(self.model, batch).float().cpu()
                bar.update(len(idx))
        return out

    # --- generation ----------------------------------------------------------------------

    def generate(self, prompts: list[list[int]]) -> list[str]:
        """Greedy answers, decoded without special tokens, in the order of `prompts`.

        An answer that has ended leaves its batch (`greedy`): the same answers, sooner. Batches
        are the prompts in their given order, not sorted by length as for scoring: under bf16
        autocast a row's padding changes its greedy answer now and then (8 of 32 ticket answers
        on the default model), and a model's answers must not change with how runner batches.
        """
        tokenizer = self.encoder.tokenizer
        prompts = [p[-self.encoder.max_length :] for p in prompts]
        answers = []
        with self.progress(len(prompts)) as bar:
            for start in range(0, len(prompts), self.batch_size):
                # Left padding, so every row's next token follows its own prompt.
                ids, mask = left_pad(prompts[start : start + self.batch_size], tokenizer.pad_token_id)
                with self._inference():
                    new = greedy(
                        self.model,
                        ids.to(self.device),
                        mask.to(self.device),
                        self.max_new_tokens,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                answers += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
                bar.update(ids.shape[0])
        return answers

    # --- text: perplexity and drift ------------------------------------------------------

    def text_windows(self, text: str, max_tokens: int | None) -> list[list[int]]:
        """Non-overlapping windows of model.max_length tokens; each window's first token is
        context only, every other token is predicted from the tokens before it in its window."""
        ids = self.encoder.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        size = self.encoder.max_length
        return [ids[i : i + size] for i in range(0, len(ids), size) if len(ids[i : i + size]) > 1]

    def token_nll(self, windows: list[list[int]]) -> tuple[float, int]:
        """(summed negative log-likelihood, predicted tokens) over the windows."""
        rows = [{"input_ids": w, "labels": w} for w in windows]
        # Every position is scored, so the vocabulary head runs on whole windows: keep batches
        # small (TEXT_WINDOWS) to bound the full-vocabulary logits in memory.
        total = float(-self.sequence_logprobs(rows, batch_size=TEXT_WINDOWS).sum())
        return total, sum(len(w) - 1 for w in windows)

    def next_token_logprobs(self, windows: list[list[int]]) -> torch.Tensor:
        """[tokens, vocab] next-token log-probabilities at every predicted position of the windows."""
        collator = Collator(self.encoder.tokenizer.pad_token_id)
        batch = collator([{"input_ids": w, "labels": w} for w in windows])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._inference():
            logits = forward(self.model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            keep = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
            return torch.log_softmax(logits[:, :-1][keep].float(), dim=-1)

    # --- a task's test split ---------------------------------------------------------------

    def evaluate(self, data: TaskData, shots: int = 0, seed: int = 0) -> tuple[dict, list[dict]]:
        """Metrics on the task's test split (with `shots` solved train examples in each prompt).

        Prompts are measured as the model sees them: few-shot shots are shortened or dropped to
        fit max_length (the effective k is reported), and anything still too long is cut from
        the left and counted.
        """
        task, examples = data.task, data.test
        answers = self.answer(data, examples, shots, seed)
        prompts, cut = answers.prompts, answers.cut
        if task.is_classification:
            scores = answers.label_logprobs
            preds = scores.argmax(dim=1)
            gold = torch.tensor([e.label for e in examples])
            metrics = classification_metrics(preds, gold, task.labels)
            records = [
                {
                    **row_identity(e),
                    "prediction": task.labels[int(p)],
                    "correct": bool(p == e.label),
                    "label_logprobs": {label: round(float(s), 4) for label, s in zip(task.labels, row_scores)},
                }
                for e, p, row_scores in zip(examples, preds, scores)
            ]
        else:
            metrics, records = generation_results(examples, answers.texts)
        metrics["prompt_tokens_mean"] = round(sum(map(len, prompts)) / len(prompts), 1)
        metrics["prompts_truncated"] = sum(e.truncated or c for e, c in zip(examples, cut))
        if shots:
            metrics["few_shot_k"] = round(sum(answers.shots_used) / len(answers.shots_used), 2)
            metrics["shots_truncated"] = answers.shots_cut
        return metrics, records

    def answer(self, data: TaskData, examples: list[Example], shots: int = 0, seed: int = 0) -> Answers:
        """The model's answers to examples of a task (rows of its test split, or new rows for
        `runner predict`): each label's log-likelihood, or a generated text."""
        task = data.task
        # Room after the prompt: every label is scored there; a generated answer may run past
        # max_length (positions beyond it are the model's to handle), so it needs none.
        room = self.encoder.label_room(task.labels, data.completion_eos) if task.is_classification else 0
        prompts, shots_used, shots_cut, query_cut = [], [], 0, []
        for e in examples:
            drawn = few_shot_examples(data.train, e, shots, seed)
            if drawn and self.fitter is not None:
                used, ids, shortened = self.fitter.fit_shots(data, e, drawn, room)
            else:
                used, ids, shortened = drawn, self.encoder.prompt_ids(e.prompt, drawn), False
            prompts.append(ids)
            shots_used.append(len(used))
            shots_cut += sum(shot.truncated for shot in used)
            query_cut.append(shortened)
        budget = self.encoder.max_length - room
        cut = [len(p) > budget or q for p, q in zip(prompts, query_cut)]
        prompts = [p[-budget:] for p in prompts]
        answers = Answers(prompts, cut, shots_used, shots_cut)
        if task.is_classification:
            answers.label_logprobs = self.label_scores(prompts, task.labels, add_eos=data.label_eos)
        else:
            answers.texts = self.generate(prompts)
        return answers


@dataclass
class Answers:
    """A model's answers to a list of examples, and the prompts it saw."""

    prompts: list[list[int]]  # token ids, as scored (shots included, cut to fit)
    cut: list[bool]  # the prompt was cut from the left to fit max_length
    shots_used: list[int]
    shots_cut: int
    label_logprobs: torch.Tensor | None = None  # [examples, labels] (classification)
    texts: list[str] | None = None  # greedy answers (generation)


def generation_results(examples: list[Example], answers: list[str]) -> tuple[dict, list[dict]]:
    """Exact match and SQuAD's token-level F1 of each answer against its gold completion."""
    hits = [normalize_answer(a) == normalize_answer(e.completion) for a, e in zip(answers, examples)]
    f1 = [token_f1(a, e.completion) for a, e in zip(answers, examples)]
    metrics = {"exact_match": sum(hits) / len(hits), "token_f1": sum(f1) / len(f1), "n": len(hits)}
    records = [
        {**row_identity(e), "prediction": a, "correct": h, "token_f1": round(f, 4)}
        for e, a, h, f in zip(examples, answers, hits, f1)
    ]
    return metrics, records


def row_identity(e: Example) -> dict:
    """What names a test row in predictions: its row number, id (tasks[].id_field), prompt and gold."""
    return {"row": e.row, **({"id": e.id} if e.id is not None else {}), "prompt": e.prompt, "gold": e.completion}


SCORE_BATCH_TOKENS = 4096  # padded tokens in one scoring forward pass (see token_batches)


def token_batches(order: list[int], lengths: list[int], rows: int, tokens: int = SCORE_BATCH_TOKENS) -> list[list[int]]:
    """`order` (rows sorted by length, shortest first) cut into batches of at most `rows` rows and
    `tokens` padded tokens (a single longer row goes alone): a batch of few-shot prompts or long
    documents holds fewer rows than one of short prompts, so a scoring pass's memory is bounded
    by tokens, not by evaluation.batch_size alone."""
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        if batch is None or len(batch) >= rows or (len(batch) + 1) * max(lengths[i], lengths[batch[-1]]) > tokens:
            batches.append([i])
        else:
            batch.append(i)
    return batches


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask with every row ending in the last column."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def few_shot_examples(train: list[Example], example: Example, k: int, seed: int) -> list[Example]:
    """k solved train examples for one test row: a seeded draw per row, so prompts vary
    across rows (no single lucky set) and the same seed gives the same prompts."""
    if k <= 0:
        return []
    return random.Random(f"{seed}:{example.task}:{example.row}").sample(train, min(k, len(train)))
