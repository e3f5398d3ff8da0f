"""What is trained: one table entry per method.

Each entry says how to make a loaded model trainable (`build`, given the spec's settings for
that method, i.e. `method.<kind>` in the spec), the learning rate it trains well with when the
spec leaves `training.learning_rate` unset, and what the rest of runner needs to know about it:
whether base weights change (drift then needs a copy of the base model; checkpoints hold every
weight), whether it is a peft adapter (saved and exported as one) and whether it can be merged
into plain weights. Adding a method is a new entry here and its settings in the schema's
`method` section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Method:
    build: Callable[[torch.nn.Module, dict[str, Any], Any], torch.nn.Module]  # (model, settings, tokenizer)
    learning_rate: float  # the default (README, "Training methods": how each was chosen and what it gave)
    trains_base: bool  # base weights change (full, freeze) rather than added ones
    adapter: bool  # a peft adapter: saved alone, exported with --adapter
    mergeable: bool  # --merged folds it into plain transformers weights
    # Settings checked against the model's config before any run folder exists: (settings,
    # config) -> problems, each a located spec problem with its fix.
    problems: Callable[[dict[str, Any], Any], list[str]] | None = None


def _lora(model, settings: dict, tokenizer):
    from peft import LoraConfig

    from runner.model.dropout import use_fast_dropout
    from runner.model.lora_layer import use_fused_lora

    config = LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=_modules(settings["target_modules"]),
        use_dora=settings["use_dora"],
        use_rslora=settings["use_rslora"],
        task_type="CAUSAL_LM",
    )
    model = _peft(model, config, "lora", "target_modules")
    use_fast_dropout(model)
    use_fused_lora(model)
    return model


def _ia3(model, settings: dict, tokenizer):
    from peft import IA3Config

    # "auto": peft's own choice per architecture (Llama: k_proj, v_proj and down_proj).
    targets, feedforward = settings["target_modules"], settings["feedforward_modules"]
    config = IA3Config(
        target_modules=None if targets == "auto" else _modules(targets),
        feedforward_modules=None if feedforward == "auto" else _modules(feedforward),
        task_type="CAUSAL_LM",
    )
    return _peft(model, config, "ia3", "target_modules")


def _prompt_tuning(model, settings: dict, tokenizer):
    import torch
    from peft import PromptTuningConfig, PromptTuningInit

    n = settings["num_virtual_tokens"]
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, prompt_tuning_init=PromptTuningInit.RANDOM)
    embeddings = model.get_input_embeddings().weight
    model = _peft(model, config, "prompt_tuning", "num_virtual_tokens")
    # Start from real token embeddings (peft's RANDOM init draws N(0, 1), far from the scale of
    # this model's embeddings): the tokens of init_text repeated to length, or random tokens.
    if settings["init"] == "text":
        ids = tokenizer(settings["init_text"], add_special_tokens=False)["input_ids"]
        ids = (ids * (n // len(ids) + 1))[:n]
    else:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, embeddings.shape[0], (n,), generator=generator).tolist()
    prompt = model.prompt_encoder[model.active_adapter].embedding
    with torch.no_grad():
        prompt.weight.copy_(embeddings[torch.tensor(ids)].detach().to(prompt.weight.dtype))
    return model


def _full(model, settings: dict, tokenizer):
    model.requires_grad_(True)
    return model


def linear_names(config) -> set[str] | None:
    """The names of the model's linear layers (last name part), from its config alone: the
    model is built on the meta device, which allocates no memory (None if that fails)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # an architecture transformers cannot build offline: checked at load
        return None
    return model_linear_names(model)


def model_linear_names(model) -> set[str]:
    """The last name part of every linear layer of a built model (what target_modules names)."""
    import torch

    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _modules_problems(where: str, modules, config) -> list[str]:
    if isinstance(modules, str):
        return []  # all-linear / auto
    names = linear_names(config)
    if names is None:
        return []
    unknown = [m for m in modules if m not in names]
    if not unknown:
        return []
    return [
        f"{where}: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a linear layer of this "
        f"model; its linear layers are: {', '.join(sorted(names))} (or 'all-linear')."
    ]


def _lora_problems(settings: dict, config) -> list[str]:
    return _modules_problems("$.method.lora.target_modules", settings["target_modules"], config)


def _ia3_problems(settings: dict, config) -> list[str]:
    problems = _modules_problems("$.method.ia3.target_modules", settings["target_modules"], config)
    targets, feedforward = settings["target_modules"], settings["feedforward_modules"]
    if not isinstance(feedforward, str) and not isinstance(targets, str) and not set(feedforward) <= set(targets):
        problems.append("$.method.ia3.feedforward_modules: must be a subset of target_modules.")
    return problems


def _freeze_problems(settings: dict, config) -> list[str]:
    layers = getattr(config, "num_hidden_layers", None)
    if layers is not None and settings["blocks"] > layers:
        return [
            f"$.method.freeze.blocks: {settings['blocks']}, but the model has {layers} blocks; "
            f"use at most {layers} (or method.kind: full to train every weight)."
        ]
    return []


def _freeze(model, settings: dict, tokenizer):
    """Train the top `blocks` transformer blocks and every normalisation layer; freeze the rest
    (the embeddings, which the output head shares in small models, stay frozen)."""
    blocks = decoder_blocks(model)
    n = settings["blocks"]
    if n > len(blocks):  # normally stopped earlier by _freeze_problems, from the model's config
        raise RunnerError(_freeze_problems(settings, model.config)[0])
    model.requires_grad_(False)
    for block in blocks[len(blocks) - n :]:
        block.requires_grad_(True)
    if settings["norms"]:
        for module in model.modules():
            if "norm" in type(module).__name__.lower():
                module.requires_grad_(True)
    return model


METHODS: dict[str, Method] = {
    # low-rank adapters (optionally DoRA or rsLoRA)
    "lora": Method(_lora, 5e-4, trains_base=False, adapter=True, mergeable=True, problems=_lora_problems),
    # learned rescaling of keys, values and feed-forward activations
    "ia3": Method(_ia3, 1e-2, trains_base=False, adapter=True, mergeable=True, problems=_ia3_problems),
    # learned virtual tokens before every prompt: inputs, not weights, so never merged
    "prompt_tuning": Method(_prompt_tuning, 3e-2, trains_base=False, adapter=True, mergeable=False),
    "full": Method(_full, 2e-5, trains_base=True, adapter=False, mergeable=True),
    # the top N blocks and the norms; the rest frozen
    "freeze": Method(_freeze, 5e-5, trains_base=True, adapter=False, mergeable=True, problems=_freeze_problems),
}  # fmt: skip


def apply_method(model: torch.nn.Module, method, tokenizer=None) -> torch.nn.Module:
    """The model made trainable by `method.kind` with its settings."""
    return METHODS[method.kind].build(model, dict(method.settings), tokenizer)


def method_problems(method, config) -> list[str]:
    """The method's settings checked against the model's config (None: unknown, nothing checked)."""
    check = METHODS[method.kind].problems
    return check(dict(method.settings), config) if check is not None and config is not None else []


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, bottom to top: the module list as long as the config's layers."""
    import torch

    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return list(module)
    raise RunnerError(f"method.kind freeze: cannot find the transformer blocks of {type(model).__name__}.")


def _modules(value) -> str | list[str]:
    return value if isinstance(value, str) else list(value)


def _peft(model, config, kind: str, setting: str):
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except (ValueError, TypeError) as exc:
        names = sorted(model_linear_names(model))
        raise RunnerError(
            f"$.method.{kind}.{setting}: {' '.join(str(exc).split())[:200]}\n"
            f"This model's linear layers are: {', '.join(names)}."
        ) from None
