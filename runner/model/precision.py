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
