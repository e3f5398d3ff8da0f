"""Examples to token ids: loss only on the completion, and padded batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runner.data.examples import Example

IGNORE_INDEX = -100


@dataclass
class Encoder:
    """Turns an example into token ids with the prompt masked out of the loss.

    Prompt and completion are tokenised separately and concatenated, so the boundary is exact
    and training and scoring see the same completion tokens. Classification completions carry
    no end-of-sequence token (they are scored, not generated) unless one label's tokens begin
    another's; free-text completions end with one, so that generation learns to stop.
    Examples arrive fitted to max_length (runner.data.truncation); `join` still cuts what does not
    fit (policy `left`), the start of the prompt first, and counts it in `cuts`.
    """

    tokenizer: object
    max_length: int
    chat_template: bool
    cuts: int = 0

    def __post_init__(self) -> None:
        self.use_chat = self.chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_ids(self, prompt: str, shots: list[Example] = ()) -> list[int]:
        """Token ids of a prompt, after `shots` solved examples (few-shot) if given.

        With a chat template, each shot is a user turn and an assistant reply; without one,
        shots are "prompt completion" blocks separated by blank lines.
        """
        if self.use_chat:
            messages = []
            for shot in shots:
                messages += [
                    {"role": "user", "content": shot.prompt},
                    {"role": "assistant", "content": shot.completion},
                ]
            messages.append({"role": "user", "content": prompt})
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        context = "".join(f"{shot.prompt} {shot.completion}\n\n" for shot in shots)
        return self.tokenizer(context + prompt)["input_ids"]

    def completion_ids(self, completion: str, add_eos: bool) -> list[int]:
        text = completion if self.use_chat else " " + completion
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id] if add_eos else ids

    def label_room(self, labels: tuple[str, ...], add_eos: bool) -> int:
        """Tokens after the prompt that every label needs: the longest label's."""
        return max(len(self.completion_ids(label, add_eos)) for label in labels)

    def encode(self, example: Example, add_eos: bool) -> dict:
        prompt = self.prompt_ids(example.prompt)
        completion = self.completion_ids(example.completion, add_eos)
        return self.join(prompt, completion, add_eos)

    def join(self, prompt: list[int], completion: list[int], add_eos: bool = False) -> dict:
        """Concatenate; what still does not fit loses the start of the prompt, and a completion
        longer than max_length its end (keeping its end token, so generation learns to stop)."""
        overflow = len(prompt) + len(completion) - self.max_length
        if overflow > 0:
            self.cuts += 1
            if len(completion) > self.max_length - 1:
                end = completion[-1:] if add_eos else []
                completion = completion[: self.max_length - 1 - len(end)] + end
            prompt = prompt[max(0, len(prompt) - (self.max_length - len(completion))) :]
        return {
            "input_ids": prompt + completion,
            "labels": [IGNORE_INDEX] * len(prompt) + completion,
        }


def collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad a batch to its longest row (dynamic padding). Every row ends in the last column,
    so its completion does too: one `logits_to_keep` window covers all rows' targets."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.full((len(features), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
        "task_index": torch.tensor([f.get("task_index", 0) for f in features], dtype=torch.long),
    }
    if any("weight" in f for f in features):  # class_balance 'loss': each row's loss weight
        batch["weight"] = torch.tensor([f.get("weight", 1.0) for f in features], dtype=torch.float)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        batch["input_ids"][i, width - n :] = torch.tensor(f["input_ids"])
        batch["labels"][i, width - n :] = torch.tensor(f["labels"])
        batch["attention_mask"][i, width - n :] = 1
    return batch


class Collator:
    """Picklable collate function (data-loader workers need one)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_id)
