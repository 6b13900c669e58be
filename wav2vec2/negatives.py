"""Negative sampling and contrastive logits (fairseq ``sample_negatives`` / ``compute_preds``)."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from .layers import autocast_off

__all__ = ["sample_negative_indices", "gather_negatives", "contrastive_logits", "contrastive_logits_from_indices"]

# ``--fp32_cosine_sim`` returns float32 logits (the criterion's cross-entropy takes float32 anyway). The reference
# casts them back to the model dtype: harmless in its FP16 recipe (steps of 2**-7 near 10), but in BF16 the logits
# near 1 / logit_temp = 10 fall on steps of 0.0625, so a pretrained-early model's 51 candidates take ~6 distinct
# values, ties with the positive count as correct (accuracy 0.095 instead of 0.029, measured on the tiny preset)
# and the loss sees quantised similarities. A conscious departure from REFERENCE.md 1.7 ("cast back").


def sample_negative_indices(
    batch: int,
    num_masked: int,
    n_negatives: int,
    cross_sample_negatives: int = 0,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Indices into the flattened (B*M) table of masked targets, shape B x M x (N + N_cross).

    Within-utterance negatives of masked frame j of utterance b are uniform (with replacement) over the other
    M - 1 masked frames of b: never the positive itself, never another utterance, never a padded frame (targets
    are taken at masked frames only, which lie inside each utterance's valid length). Cross-sample negatives are
    uniform over all B*M - 1 other masked frames of the batch (the reference excludes index j instead of the global
    index b*M + j, REFERENCE-QUIRKS Q14; we exclude the positive itself).
    """
    parts = []
    pos_local = torch.arange(num_masked, device=device).view(1, num_masked, 1)
    if n_negatives > 0:
        if num_masked < 2:
            raise ValueError(
                f"need at least 2 masked frames per utterance to draw within-utterance negatives, got {num_masked}"
            )
        idx = torch.randint(0, num_masked - 1, (batch, num_masked, n_negatives), generator=generator, device=device)
        idx = idx + (idx >= pos_local).long()
        idx = idx + torch.arange(batch, device=device).view(batch, 1, 1) * num_masked
        parts.append(idx)
    if cross_sample_negatives > 0:
        total = batch * num_masked
        if total < 2:
            raise ValueError("need at least 2 masked frames in the batch for cross-sample negatives")
        pos_global = pos_local + torch.arange(batch, device=device).view(batch, 1, 1) * num_masked
        idx = torch.randint(0, total - 1, (batch, num_masked, cross_sample_negatives), generator=generator, device=device)
        idx = idx + (idx >= pos_global).long()
        parts.append(idx)
    if not parts:
        return torch.empty(batch, num_masked, 0, dtype=torch.long, device=device)
    return torch.cat(parts, dim=-1)


def gather_negatives(y: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """y: B x M x F, indices: B x M x N (into the flat B*M table) -> negatives N x B x M x F."""
    b, m, f = y.shape
    flat = y.reshape(b * m, f)
    negs = flat[indices.reshape(-1)].view(b, m, -1, f)
    return negs.permute(2, 0, 1, 3)


def contrastive_logits(
    x: torch.Tensor, y: torch.Tensor, negatives: torch.Tensor, logit_temp: float, fp32: bool = False
) -> torch.Tensor:
    """Cosine similarity of x (B x M x D) with the positive y and each negative (N x B x M x D), divided by
    ``logit_temp``; negatives identical to the positive get -inf. Returns (1 + N) x B x M, positive first, in x's
    dtype, or in float32 with ``fp32`` (``--fp32_cosine_sim``; the reference casts back to x's dtype, which in BF16
    rounds logits near 1 / logit_temp = 10 to steps of 0.0625 and makes candidates tie: see the note above)."""
    out_dtype = torch.float32 if fp32 else x.dtype
    if fp32:
        x, y, negatives = x.float(), y.float(), negatives.float()
    with autocast_off(x.device) if fp32 else contextlib.nullcontext():
        neg_is_pos = (negatives == y.unsqueeze(0)).all(-1)
        targets = torch.cat([y.unsqueeze(0), negatives], dim=0)
        logits = F.cosine_similarity(x.unsqueeze(0), targets, dim=-1, eps=1e-8)
        logits = logits / logit_temp
        if neg_is_pos.any():
            logits = torch.cat([logits[:1], logits[1:].masked_fill(neg_is_pos, float("-inf"))], dim=0)
    return logits.to(out_dtype)


def contrastive_logits_from_indices(
    x: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
    num_within: int,
    logit_temp: float,
    fp32: bool = False,
) -> torch.Tensor:
    """What ``contrastive_logits(x, y, gather_negatives(y, indices), ...)`` computes, without materialising the
    N x B x M x D negatives: cosine similarities of every prediction with every target of its utterance come from
    one batched matmul (B x M x M), and each negative's logit is gathered from it.

    x, y: B x M x D; ``indices``: B x M x N in the :func:`sample_negative_indices` format, its first
    ``num_within`` columns within-utterance (flat index b*M + j with the same b; any other index fails the
    gather's bounds check instead of giving a wrong logit), the rest cross-sample (any flat index; their
    similarities come from one BM x BM matmul). Negatives equal to the positive (all features identical) get
    -inf, as in fairseq. Returns (1 + N) x B x M, positive first, in x's dtype, or in float32 with ``fp32``
    (see the note above :func:`sample_negative_indices`).

    On the 2-core CPU this takes the tiny/Base pretraining step's contrastive head from ~200 ms (broadcast
    cosine similarity over the gathered copies and its backward) to a few ms; the values agree with
    :func:`contrastive_logits` to float rounding (tested).
    """
    out_dtype = x.dtype
    n = indices.shape[-1]
    if not 0 <= num_within <= n:
        raise ValueError(f"num_within={num_within} must lie in [0, {n}] (columns of the negative indices)")
    if fp32:  # float32 for real: under autocast the matmuls would cast their inputs back down; kept in float32
        with autocast_off(x.device):
            return _logits_from_indices(x.float(), y.float(), indices, num_within, logit_temp)
    return _logits_from_indices(x, y, indices, num_within, logit_temp).to(out_dtype)


def _logits_from_indices(x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, num_within: int,
                         logit_temp: float) -> torch.Tensor:
    """The computation of :func:`contrastive_logits_from_indices`, in the inputs' dtype."""
    b, m, d = x.shape
    n = indices.shape[-1]
    xn = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-8)
    yn = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min(1e-8)
    parts = [(xn * yn).sum(-1).unsqueeze(0)]
    if num_within > 0:
        sim = torch.bmm(xn, yn.transpose(1, 2))  # sim[b, i, j] = cos(x[b, i], y[b, j])
        local = indices[..., :num_within] - torch.arange(b, device=indices.device).view(b, 1, 1) * m
        parts.append(sim.gather(2, local).permute(2, 0, 1))
    if n > num_within:
        sim_all = xn.reshape(b * m, d) @ yn.reshape(b * m, d).t()
        cross = sim_all.gather(1, indices[..., num_within:].reshape(b * m, n - num_within))
        parts.append(cross.view(b, m, -1).permute(2, 0, 1))
    logits = torch.cat(parts, dim=0) / logit_temp
    with torch.no_grad():
        flat = y.reshape(b * m, d)
        neg_is_pos = (flat[indices.reshape(-1)].view(b, m, n, d) == y.unsqueeze(2)).all(-1).permute(2, 0, 1)
    return torch.cat([logits[:1], logits[1:].masked_fill(neg_is_pos, float("-inf"))], dim=0)
