"""Numeric precision: bf16 autocast where the CPU or GPU runs it natively, fp32 elsewhere."""

from __future__ import annotations

import torch


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved Lightning precision (None: no autocast)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def resolve_precision(precision: str, accelerator: str) -> str:
    """'auto' -> bf16 autocast where the hardware computes bfloat16 natively, else fp32.

    On a CPU with AVX512-BF16 or AMX, bf16 autocast about doubles training speed; on one
    without (AVX2 only), bf16 matmuls are emulated and run hundreds of times slower.
    """
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_has_fast_bf16():
        return "bf16-mixed"
    return "32-true"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX; False on torch builds that cannot tell."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


# While a method trains under autocast, the linear layers whose weights do not train are held in
# the autocast dtype. Autocast casts each of them to that dtype on every forward anyway (and
# peft's layers save the cast copy for the backward pass): holding them cast saves those casts'
# time and copies and halves their storage. The linear outputs are the same numbers; what is
# exported and scored after training gets the exact weights back (`restore_frozen_weights`).


def frozen_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The linear layers whose weights do not train, by their name in the model as loaded (a
    peft wrapper holds the original layer as `<name>.base_layer`). A weight shared with another
    module (an output head tied to the input embeddings) is left out: the embedding lookup does
    not go through autocast, so there its dtype would change the numbers."""
    from runner.model.load import causal_lm

    inner = causal_lm(model)
    uses: dict[int, int] = {}
    for module in inner.modules():
        for param in module.parameters(recurse=False):
            uses[id(param)] = uses.get(id(param), 0) + 1
    frozen = {}
    for name, module in inner.named_modules():
        weight = getattr(module, "weight", None)
        if type(module) is not torch.nn.Linear or weight.requires_grad or uses[id(weight)] > 1:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        frozen[".".join(part for part in name.split(".") if part != "base_layer")] = module
    return frozen


def hold_frozen_weights(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.nn.Linear]:
    """Cast the frozen linear layers' weights (and biases) to `dtype`; returns the layers cast.

    The other frozen weights are copied out of the file the model was loaded from: transformers
    maps a safetensors file into memory, and one tensor still viewing it (the embeddings) would
    keep every float32 weight of the file resident beside its cast copy.
    """
    layers = frozen_linears(model)
    cast = set()
    for layer in layers.values():
        for param in (layer.weight, layer.bias):
            if param is not None:
                param.data = param.data.to(dtype)
                cast.add(id(param))
    for param in model.parameters():
        if id(param) not in cast and not param.requires_grad:
            param.data = param.data.clone()
    return layers


def restore_frozen_weights(layers: dict[str, torch.nn.Linear], original: torch.nn.Module) -> None:
    """Put the exact weights back into the layers `hold_frozen_weights` cast, from the model as
    loaded again from its source (the same names, untrained).

    Copies, not views of `original`'s file mapping: scoring merges the adapters into these
    weights in place, and writing to a private file mapping copies each page it touches, so the
    file's pages and their copies would both be resident (~200 MB more for SmolLM2-135M)."""
    for name, layer in layers.items():
        source = original.get_submodule(name)
        layer.weight.data = source.weight.data.to(layer.weight.device, copy=True)
        if layer.bias is not None:
            layer.bias.data = source.bias.data.to(layer.bias.device, copy=True)
