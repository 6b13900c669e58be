"""Gumbel-softmax product quantizer (fairseq ``GumbelVectorQuantizer``).

``G`` groups of ``V`` learned code vectors each (``latent_groups`` x ``latent_vars``); every input frame picks one
entry per group and the chosen entries are concatenated. Training uses the straight-through hard Gumbel-softmax
at temperature ``tau(u) = max(start * decay**u, end)`` (``latent_temp``, ``u`` = number of updates); evaluation
takes the argmax. Parameter names are fairseq's: ``vars`` (1 x G*V x vq_dim/G, or 1 x V x vq_dim/G with
``combine_groups``) and ``weight_proj``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GumbelVectorQuantizer", "QuantizerOutput", "perplexity"]


@dataclass
class QuantizerOutput:
    x: torch.Tensor  # quantized vectors, same leading shape as the input, last dim vq_dim
    code_perplexity: torch.Tensor  # perplexity of the hard choices (float32 scalar)
    prob_perplexity: torch.Tensor  # perplexity of the mean softmax (float32 scalar), drives the diversity loss
    temp: float
    num_vars: int  # G * V
    targets: Optional[torch.Tensor] = None  # chosen entry per group, (..., G) when requested


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """sum over groups of exp(entropy) of the mean distribution; probs: N x G x V."""
    avg = probs.float().mean(dim=0)
    return torch.exp(-(avg * torch.log(avg + 1e-7)).sum(dim=-1)).sum()


def _one_hot(index: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``F.one_hot(index, num_classes).to(dtype)`` without its range check, which reads the indices back to the
    host (a synchronisation on GPUs); ``index`` comes from an argmax over ``num_classes``, so it is in range."""
    out = torch.zeros(*index.shape, num_classes, dtype=dtype, device=index.device)
    return out.scatter_(-1, index.unsqueeze(-1), 1.0)


class GumbelVectorQuantizer(nn.Module):
    """Args (fairseq names): ``dim`` input width (E = 512), ``num_vars`` (latent_vars, 320), ``temp``
    (latent_temp (2.0, 0.5, 0.999995); Large end 0.1), ``groups`` (latent_groups, 2), ``combine_groups``,
    ``vq_dim`` (latent_dim or final_dim), ``weight_proj_depth`` (quantizer_depth, 1),
    ``weight_proj_factor`` (quantizer_factor, 3)."""

    def __init__(
        self,
        dim: int,
        num_vars: int,
        temp: tuple[float, float, float],
        groups: int,
        combine_groups: bool,
        vq_dim: int,
        weight_proj_depth: int = 1,
        weight_proj_factor: int = 3,
    ):
        super().__init__()
        if vq_dim % groups:
            raise ValueError(f"vq_dim {vq_dim} must be divisible by groups {groups}")
        self.groups = groups
        self.num_vars = num_vars
        self.combine_groups = combine_groups
        self.vq_dim = vq_dim
        var_dim = vq_dim // groups
        num_groups = 1 if combine_groups else groups
        self.vars = nn.Parameter(torch.empty(1, num_groups * num_vars, var_dim).uniform_())
        if weight_proj_depth > 1:
            inner = dim * weight_proj_factor
            blocks: list[nn.Module] = []
            in_dim = dim
            for _ in range(weight_proj_depth - 1):
                blocks.append(nn.Sequential(nn.Linear(in_dim, inner), nn.GELU()))
                in_dim = inner
            blocks.append(nn.Linear(inner, groups * num_vars))
            self.weight_proj: nn.Module = nn.Sequential(*blocks)
        else:
            self.weight_proj = nn.Linear(dim, groups * num_vars)
            nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
            nn.init.zeros_(self.weight_proj.bias)
        self.max_temp, self.min_temp, self.temp_decay = (float(v) for v in temp)
        self.curr_temp = self.max_temp

    def set_num_updates(self, num_updates: int) -> None:
        self.curr_temp = max(self.max_temp * self.temp_decay**num_updates, self.min_temp)

    def codebook(self) -> torch.Tensor:
        """All G*V code vectors as a (G*V) x (vq_dim/G) matrix (per-group blocks)."""
        if self.combine_groups:
            return self.vars.squeeze(0).repeat(self.groups, 1)
        return self.vars.squeeze(0)

    def forward(
        self,
        x: torch.Tensor,
        produce_targets: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> QuantizerOutput:
        """x: (..., dim). Returns quantized (..., vq_dim) and the perplexity statistics over all input frames."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        n = flat.shape[0]
        logits = self.weight_proj(flat).view(n, self.groups, self.num_vars)
        logits32 = logits.float()
        choice = logits32.argmax(dim=-1)  # n x G
        hard = _one_hot(choice, self.num_vars, logits32.dtype)
        with torch.no_grad():
            code_ppl = perplexity(hard)
        prob_ppl = perplexity(torch.softmax(logits32, dim=-1))

        if self.training:
            # straight-through hard Gumbel-softmax in float32, noise from the explicit generator
            u = torch.empty_like(logits32).exponential_(generator=generator)
            soft = torch.softmax((logits32 - torch.log(u)) / self.curr_temp, dim=-1)
            index = soft.argmax(dim=-1, keepdim=True)
            one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
            weights = (one_hot - soft.detach() + soft).to(x.dtype)
            if produce_targets:
                choice = index.squeeze(-1)
        else:
            weights = hard.to(x.dtype)

        # per-group lookup: weights n x G x V  @  codebook G x V x d  ->  n x G x d
        codes = self.codebook().view(self.groups, self.num_vars, -1).to(weights.dtype)
        q = torch.einsum("ngv,gvd->ngd", weights, codes).reshape(*lead, self.vq_dim)
        return QuantizerOutput(
            x=q,
            code_perplexity=code_ppl,
            prob_perplexity=prob_ppl,
            temp=self.curr_temp,
            num_vars=self.groups * self.num_vars,
            targets=choice.view(*lead, self.groups) if produce_targets else None,
        )
