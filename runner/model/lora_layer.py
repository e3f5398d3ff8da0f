"""LoRA's linear layer as one autograd step: y = x W^T + s * B(A(dropout(x))).

peft computes it as separate modules, and for the backward pass each keeps its own copy of the
input: the base product its autocast cast of x, the dropout its boolean mask and its output (the
A product's input). With SmolLM2-135M and LoRA on every linear layer that is about half the
activation memory of a training step. Here the step keeps x itself (a tensor the model holds
anyway, shared by q/k/v and by gate/up), the dropout mask packed eight to a byte, and the small
A product; the dropped-out input is recomputed in the backward pass from x and the mask.

The numbers are peft's: the same dtypes (autocast's, else the input's), the same dropout draws
(FastDropout's, so a seed trains the same rows the same way), the same products. Only a plain
vanilla adapter being trained takes this path; merged, disabled, DoRA or mixed-adapter layers,
and every forward without gradients (scoring), run peft's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as PeftLoraLinear

from runner.model.dropout import FastDropout

# Eight 0/1 bytes (one int64) to the eight bits of one byte: each byte's bit lands in the top
# byte at its own place, every other product bit below it or past bit 63, so nothing carries.
_GATHER = 0x0102040810204080
# One byte to eight 0/1 bytes: the byte copied into every byte of an int64, byte i keeping bit i.
_SPREAD, _PICK = 0x0101010101010101, 0x8040201008040201 - (1 << 64)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as bits, eight to a uint8 (the last byte zero-padded)."""
    flat = mask.reshape(-1)
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return ((flat.view(torch.uint8).view(torch.int64) * _GATHER) >> 56).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """pack_bits' boolean tensor of `shape` again."""
    spread = (packed.to(torch.int64) * _SPREAD) & _PICK
    return (spread.view(torch.uint8) != 0)[: shape.numel()].view(shape)


class _LoraProduct(torch.autograd.Function):
    """x W^T (+ bias) + scaling * (dropout(x) A^T) B^T with W (and bias) frozen."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dropout: FastDropout | None, dtype):
        keep = dropout.keep_mask(x) if dropout is not None else None
        scale = 1.0 / (1.0 - dropout.p) if dropout is not None else 1.0
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(dtype).reshape(-1, x.shape[-1])
            # The dropout's 1 / (1 - p) scales the r-wide A product rather than the input, and
            # the B product is added inside the base product's matmul (addmm): no full-size pass.
            a = F.linear(xc if keep is None else torch.where(keep.view(xc.shape), xc, 0.0), lora_a.to(dtype)) * scale
            base = F.linear(xc, weight.to(dtype), None if bias is None else bias.to(dtype))
            out = torch.addmm(base, a, lora_b.to(dtype).t(), alpha=scaling)
        ctx.save_for_backward(xc, weight, lora_a, lora_b, a, None if keep is None else pack_bits(keep))
        ctx.scaling, ctx.scale, ctx.input_dtype, ctx.x_shape = scaling, scale, x.dtype, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        xc, weight, lora_a, lora_b, a, packed = ctx.saved_tensors
        grad = grad.to(xc.dtype).reshape(-1, grad.shape[-1])
        keep = None if packed is None else unpack_bits(packed, xc.shape)
        # Scalings go on the r-wide products. B's gradient from the saved A product, A's from the
        # dropped-out input (recomputed from x and the mask), x's from both paths in one addmm.
        grad_b = (grad.t() @ a) * ctx.scaling
        grad_a_out = (grad @ lora_b.to(xc.dtype)) * (ctx.scaling * ctx.scale)
        grad_a = grad_a_out.t() @ (xc if keep is None else torch.where(keep, xc, 0.0))
        grad_dropped = grad_a_out @ lora_a.to(xc.dtype)
        if keep is not None:
            grad_dropped = torch.where(keep, grad_dropped, 0.0)
        grad_x = torch.addmm(grad_dropped, grad, weight.to(xc.dtype)).to(ctx.input_dtype)
        return grad_x.view(ctx.x_shape), None, None, grad_a.to(lora_a.dtype), grad_b.to(lora_b.dtype), None, None, None


class LoraLinear(PeftLoraLinear):
    """peft's LoRA linear layer whose training forward is `_LoraProduct` (see the module's
    docstring); everything else (merging, saving, scoring) is peft's."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = self._fusable(x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base, dropout = self.base_layer, self.lora_dropout[adapter]
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        active = dropout if isinstance(dropout, FastDropout) and dropout.drops else None
        return _LoraProduct.apply(
            x,
            base.weight,
            base.bias,
            self.lora_A[adapter].weight,
            self.lora_B[adapter].weight,
            self.scaling[adapter],
            active,
            dtype,
        )

    def _fusable(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The one adapter to train through `_LoraProduct`, or None for peft's own forward."""
        if args or kwargs or not torch.is_grad_enabled() or self.disable_adapters or self.merged:
            return None
        adapters = [a for a in self.active_adapters if a in self.lora_A]
        if len(adapters) != 1 or adapters[0] in self.lora_variant:
            return None
        adapter = adapters[0]
        base, dropout = self.base_layer, self.lora_dropout[adapter]
        if type(base) is not torch.nn.Linear or base.weight.requires_grad:
            return None
        if base.bias is not None and base.bias.requires_grad:
            return None
        if not isinstance(dropout, (FastDropout, torch.nn.Identity)):
            return None
        return adapter


def use_fused_lora(model: torch.nn.Module) -> int:
    """Make peft's LoRA linear layers LoraLinear (the same object, a subclass); returns how many."""
    swapped = 0
    for module in model.modules():
        if type(module) is PeftLoraLinear:
            module.__class__ = LoraLinear
            swapped += 1
    return swapped
