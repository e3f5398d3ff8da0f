"""One path through the model: training loss, validation loss and every likelihood score call the
model's own `forward`, so whatever it or a `peft` method does there (logit softcapping or
scaling in other families, adapters inside layers) is part of what is trained and scored. Prompt
tuning's virtual tokens are placed here, from the peft model's own prompt encoder, the way its
forward places them, with position ids added (see `_with_virtual_tokens`).

The vocabulary head is still applied only where a target is: with a 49k vocabulary it is a
large share of the compute and most of the activation memory, and a classification completion
is one or two tokens. Rows are left-padded, so every completion ends in the last column and one
`logits_to_keep` window (the same columns for the whole batch) covers every row's targets.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from runner.data.encode import IGNORE_INDEX
from runner.model.load import causal_lm


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding shifts them)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def forward(model: torch.nn.Module, keep: int | torch.Tensor = 0, cache=None, **inputs):
    """The model's forward with `logits_to_keep` (0: every position), for models that take it.

    Position ids are passed for left-padded rows. `cache` is a key/value cache to continue from
    (transformers 5 renamed `past_key_values`).
    """
    if virtual_tokens(model):
        model, inputs = _with_virtual_tokens(model, inputs, continuing=cache is not None)
    if cache is not None:
        inputs[_cache_kwarg(model)] = cache
    if "position_ids" not in inputs and "attention_mask" in inputs:
        inputs["position_ids"] = positions(inputs["attention_mask"])
    if _takes_logits_to_keep(model):
        inputs["logits_to_keep"] = keep
    return model(**inputs)


def virtual_tokens(model: torch.nn.Module) -> int:
    """How many learned tokens a peft prompt-tuning model puts before every input (else 0)."""
    config = getattr(model, "active_peft_config", None)
    return config.num_virtual_tokens if getattr(config, "is_prompt_learning", False) else 0


def _with_virtual_tokens(model: torch.nn.Module, inputs: dict, continuing: bool) -> tuple[torch.nn.Module, dict]:
    """The base model and inputs with the learned tokens in front, as peft's forward puts them,
    but with position ids: peft drops them for prompt tuning, which shifts every position of a
    left-padded row by its padding, so a row's score would depend on the batch it is in.

    A continuation (`continuing`: keys/values cached) already holds the virtual tokens: only the
    attention mask and the positions must count them.
    """
    n = virtual_tokens(model)
    lm = causal_lm(model)
    inputs = dict(inputs)
    mask = inputs["attention_mask"]
    if not continuing:
        embeds = lm.get_input_embeddings()(inputs.pop("input_ids"))
        prompt = model.get_prompt(batch_size=mask.shape[0]).to(embeds.dtype)
        inputs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
    inputs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)
    if "position_ids" in inputs:
        inputs["position_ids"] = inputs["position_ids"] + n
    return lm, inputs


def generate(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **settings) -> torch.Tensor:
    """Greedy continuation of left-padded prompts: the new tokens only."""
    if virtual_tokens(model):
        model, inputs = _with_virtual_tokens(model, {"input_ids": input_ids, "attention_mask": attention_mask}, False)
        return model.generate(**inputs, **settings)  # from embeddings, generate returns the new tokens alone
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    return out[:, input_ids.shape[1] :]


# Generation-config fields that leave greedy decoding as `greedy` does it: special tokens (the
# end tokens passed to `generate` override the config's), sampling settings do_sample=False
# ignores, and bookkeeping. Any other field (a repetition penalty, stop strings, beams) is
# applied by `generate` alone, so such a model keeps `generate`.
PLAIN_GENERATION = frozenset(
    {
        *("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache"),
        *("do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "max_length", "max_new_tokens"),
        *("output_attentions", "output_hidden_states", "_from_model_config", "transformers_version"),
    }
)


def greedy(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    pad_token_id: int | None,
) -> list[list[int]]:
    """Each left-padded prompt's greedy new tokens, the ones `generate(do_sample=False)` gives:
    up to and including its first end token, else max_new_tokens of them.

    `generate` computes every row until the slowest one ends; here a row that has ended leaves
    the batch (its cached keys/values dropped), so the others run alone. `generate` pads ended
    rows with pad_token_id, a special token that decoding skips: left out here. Prompt tuning's
    virtual tokens are placed by `forward`, as for scoring.
    """
    config = getattr(causal_lm(model), "generation_config", None)
    if config is not None and not set(config.to_diff_dict()) <= PLAIN_GENERATION:
        settings = {"do_sample": False, "pad_token_id": pad_token_id, "eos_token_id": eos_token_id}
        return generate(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, **settings).tolist()
    rows = list(range(input_ids.shape[0]))  # the prompt each batch row belongs to
    new: list[list[int]] = [[] for _ in rows]
    ends = torch.tensor([] if eos_token_id is None else eos_token_id, device=input_ids.device).long().view(-1)
    out = forward(model, keep=1, input_ids=input_ids, attention_mask=attention_mask, use_cache=True)
    cache, mask = output_cache(out), attention_mask
    position = attention_mask.sum(-1, keepdim=True)  # of the next token: after the prompt's real tokens
    for step in range(max_new_tokens):
        tokens = out.logits[:, -1].float().argmax(-1)
        for row, token in zip(rows, tokens.tolist()):
            new[row].append(token)
        going = ~torch.isin(tokens, ends)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():
            keep = going.nonzero()[:, 0]
            cache.batch_select_indices(keep)
            tokens, mask, position = tokens[keep], mask[keep], position[keep]
            rows = [rows[i] for i in keep.tolist()]
        # After a cached left-padded prompt: its mask plus ones for the tokens so far, and
        # positions counted on from its real length (padding takes none), as generate counts them.
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out = forward(
            model,
            keep=1,
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=position,
            cache=cache,
            use_cache=True,
        )
        position = position + 1
    return new


def completion_token_losses(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy at completion positions, and the batch row each token belongs to.

    The batch is left-padded (`data.collate`): the targets of every row lie in the last
    `width` columns, where `width` is the longest completion in the batch.
    """
    targets = completion_targets(batch)
    has_target = (targets != IGNORE_INDEX).any(0)
    # First column (of the shifted targets) holding any target. The window is counted from the
    # end, so it still covers the same tokens when a peft method prepends virtual tokens; its
    # last logit (after the final token) predicts nothing and is dropped.
    first = int(has_target.nonzero()[0]) if has_target.any() else targets.shape[1] - 1
    width = targets.shape[1] - first
    logits = forward(
        model,
        keep=width + 1,
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
    ).logits[:, -(width + 1) : -1]
    targets = targets[:, first:]
    mask = targets != IGNORE_INDEX
    losses = F.cross_entropy(logits[mask].float(), targets[mask], reduction="none")
    return losses, mask.nonzero()[:, 0]


def completion_targets(batch: dict) -> torch.Tensor:
    """The token each position predicts, IGNORE_INDEX where it carries no loss. A row's first
    token has nothing before it to predict it from (left of it is padding)."""
    return batch["labels"][:, 1:].masked_fill(batch["attention_mask"][:, :-1] == 0, IGNORE_INDEX)


def completion_logprobs(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Summed log-probability of each row's completion tokens given its prompt."""
    losses, rows = completion_token_losses(model, batch)
    out = torch.zeros(batch["input_ids"].shape[0], device=losses.device)
    return out.index_add_(0, rows, -losses)


def output_cache(output):
    """The key/value cache a forward with use_cache=True returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _cache_kwarg(model: torch.nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(causal_lm(model).forward).parameters else "past_key_values"


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    lm = causal_lm(model)
    cached = getattr(lm, "_runner_takes_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(lm.forward).parameters
        lm._runner_takes_logits_to_keep = cached
    return cached
