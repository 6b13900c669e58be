"""Small building blocks shared by the model modules: FP32-computing norms, grad scaling, activations.

Every block keeps the parameter names of its torch counterpart (``weight``, ``bias``) so state dicts of
fairseq / NVIDIA checkpoints load unchanged whichever variant a config selects.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Fp32LayerNorm",
    "Fp32GroupNorm",
    "make_layer_norm",
    "TransposeLast",
    "GradMultiply",
    "get_activation",
]


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (reference ``--fp32_*`` switches)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype (``--fp32_conv_norms``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def make_layer_norm(dim: int, fp32: bool = False, eps: float = 1e-5) -> nn.LayerNorm:
    return Fp32LayerNorm(dim, eps=eps) if fp32 else nn.LayerNorm(dim, eps=eps)


class TransposeLast(nn.Module):
    """Swap the last two dimensions (B x C x T <-> B x T x C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


class GradMultiply(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass
    (``feature_grad_mult``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def _gelu_fp32(x: torch.Tensor) -> torch.Tensor:
    # fairseq's "gelu": exact (erf) GELU computed in float32 and cast back. PyTorch's GELU kernels already compute a
    # bfloat16 input in float32 and round once, forward and backward, so bfloat16 skips the two casts: bitwise the
    # same values (tests/test_model.py), 4.5x faster forward + backward on the CPU.
    if x.dtype in (torch.float32, torch.bfloat16):
        return F.gelu(x)
    return F.gelu(x.float()).to(x.dtype)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    if x.dtype in (torch.float32, torch.bfloat16):
        return F.gelu(x, approximate="tanh")
    return F.gelu(x.float(), approximate="tanh").to(x.dtype)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": _gelu_fp32,
    "gelu_accurate": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation_fn {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


def bert_init_(module: nn.Module) -> None:
    """BERT initialisation of every Linear inside ``module``: weight ~ N(0, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def conv_out_length(length: torch.Tensor | int, kernel: int, stride: int):
    """floor((L - kernel) / stride + 1), for ints and integer tensors."""
    if isinstance(length, torch.Tensor):
        return torch.div(length - kernel, stride, rounding_mode="floor") + 1
    return math.floor((length - kernel) / stride + 1)


def autocast_off(device: torch.device) -> ContextManager:
    """Autocast switched off on ``device`` while it is on (else nothing): inside, float32 inputs stay float32. The
    ``--fp32_*`` switches need it, because autocast casts the inputs of matmul-like ops (SDPA, bmm, @) down again."""
    if device.type in ("cpu", "cuda", "xpu") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
