"""Evaluation on the test split: label likelihood for classification, greedy generation for free text."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from runner.data import Collator, Encoder, Example, TaskData
from runner.model import causal_lm
from runner.training import completion_logprobs


@dataclass
class Evaluator:
    """Scores examples with one model; the same settings serve every rung of the report."""

    model: torch.nn.Module
    encoder: Encoder
    batch_size: int
    max_new_tokens: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None

    @contextlib.contextmanager
    def _inference(self):
        """Eval mode and autocast for scoring; the model's train/eval mode is restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                yield
        finally:
            self.model.train(was_training)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def label_scores(self, examples: list[Example], labels: tuple[str, ...]) -> torch.Tensor:
        """[n_examples, n_labels] summed log-likelihood of each label as the completion.

        Each prompt runs once; its key/value cache is then shared by every label's tokens, so
        scoring k labels costs about one forward pass per row instead of k.
        """
        label_ids = [self.encoder.completion_ids(label, add_eos=False) for label in labels]
        budget = self.encoder.max_length - max(map(len, label_ids))
        prompts = [self.encoder.prompt_ids(e.prompt)[-budget:] for e in examples]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out = torch.empty(len(examples), len(labels))
        with self._inference():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                out[idx] = self._score_continuations([prompts[i] for i in idx], label_ids).float().cpu()
        return out

    def _score_continuations(self, prompts: list[list[int]], label_ids: list[list[int]]) -> torch.Tensor:
        lm = causal_lm(self.model)
        pad = self.encoder.tokenizer.pad_token_id
        n, k = len(prompts), len(label_ids)
        width = max(map(len, prompts))
        # Left padding: every prompt ends at the last column, where its first label token is scored.
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        decoder = lm.get_decoder()
        head = lm.get_output_embeddings()
        prompt_out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        first = torch.log_softmax(head(prompt_out.last_hidden_state[:, -1]).float(), dim=-1)
        scores = first[:, [ids_[0] for ids_ in label_ids]]  # [n, k]
        longest = max(map(len, label_ids))
        if longest == 1:
            return scores
        # The rest of each label's tokens, fed after its prompt's cache (repeated once per label).
        steps = longest - 1
        inputs = torch.full((k, steps), pad, dtype=torch.long)
        targets = torch.full((k, steps), -1, dtype=torch.long)
        for j, tokens in enumerate(label_ids):
            inputs[j, : len(tokens) - 1] = torch.tensor(tokens[:-1])
            targets[j, : len(tokens) - 1] = torch.tensor(tokens[1:])
        inputs, targets = inputs.repeat(n, 1).to(self.device), targets.repeat(n, 1).to(self.device)
        cache = prompt_out.past_key_values
        cache.batch_repeat_interleave(k)
        full_mask = torch.cat([mask.repeat_interleave(k, 0), torch.ones_like(inputs)], dim=1)
        start = mask.sum(-1, keepdim=True).repeat_interleave(k, 0)
        cont_positions = start + torch.arange(steps, device=self.device)
        hidden = decoder(
            input_ids=inputs,
            attention_mask=full_mask,
            position_ids=cont_positions,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        valid = targets >= 0
        logprobs = torch.log_softmax(head(hidden[valid]).float(), dim=-1)
        picked = logprobs.gather(-1, targets[valid].unsqueeze(-1)).squeeze(-1)
        rest = torch.zeros(n * k, device=self.device).index_add_(0, valid.nonzero()[:, 0], picked)
        return scores + rest.view(n, k)

    def sequence_logprobs(self, rows: list[dict]) -> torch.Tensor:
        """Summed completion log-probability of each encoded row, batched by length."""
        collator = Collator(self.encoder.tokenizer.pad_token_id)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        out = torch.empty(len(rows))
        with self._inference():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = {k: v.to(self.device) for k, v in collator([rows[i] for i in idx]).items()}
                out[idx] = completion_logprobs(self.model, batch).float().cpu()
        return out

    def generate(self, examples: list[Example]) -> list[str]:
        """Greedy answers, decoded without special tokens."""
        tokenizer = self.encoder.tokenizer
        prompts = [self.encoder.prompt_ids(e.prompt)[-self.encoder.max_length :] for e in examples]
        answers = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            width = max(map(len, chunk))
            # Left padding, so every row's next token follows its own prompt.
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(chunk):
                ids[i, width - len(p) :] = torch.tensor(p)
                mask[i, width - len(p) :] = 1
            with self._inference():
                out = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        return [a.strip() for a in answers]

    def evaluate(self, data: TaskData) -> tuple[dict, list[dict]]:
        """Metrics on the task's test split, and one prediction record per test row."""
        task, examples = data.task, data.test
        if task.is_classification:
            scores = self.label_scores(examples, task.labels)
            preds = scores.argmax(dim=1)
            gold = torch.tensor([e.label for e in examples])
            metrics = classification_metrics(preds, gold, task.labels)
            records = [
                {
                    "row": e.row,
                    "prompt": e.prompt,
                    "gold": e.completion,
                    "prediction": task.labels[int(p)],
                    "correct": bool(p == e.label),
                    "label_logprobs": {label: round(float(s), 4) for label, s in zip(task.labels, row_scores)},
                }
                for e, p, row_scores in zip(examples, preds, scores)
            ]
        else:
            answers = self.generate(examples)
            hits = [normalize_answer(a) == normalize_answer(e.completion) for a, e in zip(answers, examples)]
            metrics = {"exact_match": sum(hits) / len(hits), "n": len(hits)}
            records = [
                {"row": e.row, "prompt": e.prompt, "gold": e.completion, "prediction": a, "correct": h}
                for e, a, h in zip(examples, answers, hits)
            ]
        return metrics, records


def normalize_answer(text: str) -> str:
    """Case-fold, collapse whitespace, drop surrounding punctuation: for exact match."""
    return re.sub(r"\s+", " ", text).strip().strip(".,;:!?\"'").strip().casefold()


def classification_metrics(preds: torch.Tensor, gold: torch.Tensor, labels: tuple[str, ...]) -> dict:
    """Accuracy, macro-F1 (over classes present in gold or predictions), per-class P/R, confusion matrix."""
    k = len(labels)
    precision = multiclass_precision(preds, gold, num_classes=k, average="none", zero_division=0)
    recall = multiclass_recall(preds, gold, num_classes=k, average="none", zero_division=0)
    f1 = multiclass_f1_score(preds, gold, num_classes=k, average="none", zero_division=0)
    present = torch.zeros(k, dtype=torch.bool)
    present[gold] = True
    present[preds] = True
    return {
        "accuracy": float(multiclass_accuracy(preds, gold, num_classes=k, average="micro")),
        "f1_macro": float(f1[present].mean()),
        "n": int(gold.numel()),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int((gold == i).sum())}
            for i, (label, p, r, f) in enumerate(zip(labels, precision, recall, f1))
        },
        "confusion_matrix": {
            "labels": list(labels),
            "rows_are": "gold",
            "matrix": multiclass_confusion_matrix(preds, gold, num_classes=k).tolist(),
        },
    }
