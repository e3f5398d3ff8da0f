"""random-tiny: a two-layer random model with a byte tokenizer, for tests and smoke runs."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

# ChatML, as SmolLM2 uses, without its default system prompt (a tiny model needs none).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def random_tiny(
    seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """A 2-layer Llama (SmolLM2's architecture) with random weights, sized to `tokenizer` (default:
    a byte-level one built in memory).

    Needs no download and no package with the byte tokenizer: for tests. With a real model's
    tokenizer, rows are as long as that model sees them: for smoke runs. It learns nothing useful.
    """
    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
    config = random_tiny_config(tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def random_tiny_config(tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The tiny model's config, sized to `tokenizer`; model_config uses it to check a spec without building weights."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def byte_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level tokenizer (256 byte tokens + ChatML specials) built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_map = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(byte_map))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=specials,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
