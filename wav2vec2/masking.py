"""Span masking (fairseq ``compute_mask_indices``), vectorised in torch on the model's device.

The algorithm is the reference's (REFERENCE.md §1.4.1):

1. number of spans per utterance ``n = max(min_masks, floor(mask_prob * size / mask_length + U))`` with
   ``U ~ U[0, 1)`` (one draw for the whole batch when there is no padding, one per utterance otherwise);
2. span starts are ``n`` distinct positions drawn uniformly from ``[0, size - min_len)``, spans may overlap,
   frames at or beyond the utterance's valid size are dropped;
3. with ``require_same_masks`` every utterance keeps a uniformly random subset of exactly as many masked frames
   as the least-masked utterance of the batch (so all have the same count M);
4. ``mask_dropout`` then removes ``round(count * mask_dropout)`` masked frames per utterance.

Everything is batched tensor work with an explicit ``torch.Generator``: no per-utterance Python loop (except the
rarely used ``no_overlap`` mode, whose sequential rejection algorithm runs on the host), no host
synchronisation, and the output is always a B x T boolean tensor (no data-dependent shapes).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

__all__ = ["compute_mask"]


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _rank_along_rows(keys: torch.Tensor) -> torch.Tensor:
    """Rank (0 = smallest) of every entry within its row."""
    order = keys.argsort(dim=1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(keys.shape[1], device=keys.device).expand_as(order))
    return ranks


def _keep_random_subset(mask: torch.Tensor, keep: torch.Tensor, generator, device) -> torch.Tensor:
    """Keep a uniformly random subset of ``keep[b]`` True entries of each row of ``mask``."""
    keys = _rand(mask.shape, generator, device)
    keys = keys.masked_fill(~mask, 2.0)
    return mask & (_rank_along_rows(keys) < keep[:, None])


def _span_lengths(shape, mask_length, selection, mask_other, generator, device) -> torch.Tensor:
    """Length of the span that the slot of each rank would get (B x T, int64)."""
    if selection == "static":
        return torch.full(shape, int(mask_length), dtype=torch.long, device=device)
    if selection == "uniform":
        low, high = int(mask_other), int(mask_length) * 2 + 1
        return torch.randint(low, high, shape, generator=generator, device=device)
    if selection == "normal":
        z = torch.randn(shape, generator=generator, device=device)
        return torch.round(mask_length + float(mask_other) * z).long().clamp_min(1)
    if selection == "poisson":
        rate = torch.full(shape, float(mask_length), device=device)
        return torch.round(torch.poisson(rate, generator=generator)).long()
    raise ValueError(f"unknown mask selection {selection!r}")


def compute_mask(
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    lengths: Optional[torch.Tensor] = None,
    selection: str = "static",
    mask_other: float = 0.0,
    min_masks: int = 0,
    no_overlap: bool = False,
    min_space: int = 0,
    require_same_masks: bool = True,
    mask_dropout: float = 0.0,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Boolean mask of shape ``shape`` = (B, T); True = masked.

    Args:
        lengths: valid frames per utterance (B,), or None when nothing is padded. Spans never cover padding.
        mask_prob, mask_length, selection, mask_other, min_masks, no_overlap, min_space,
        require_same_masks, mask_dropout: fairseq's ``compute_mask_indices`` arguments.
        generator: the random source (on ``device``); the global one when None.
    """
    bsz, t = shape
    if device is None:
        device = lengths.device if lengths is not None else torch.device("cpu")
    if bsz == 0 or t == 0 or mask_prob <= 0:
        return torch.zeros(shape, dtype=torch.bool, device=device)

    if lengths is None:
        size = torch.full((bsz,), t, dtype=torch.long, device=device)
        u = _rand((1,), generator, device).expand(bsz)
    else:
        size = lengths.to(device=device, dtype=torch.long).clamp(max=t)
        u = _rand((bsz,), generator, device)
    n = torch.floor(mask_prob * size.to(torch.float64) / mask_length + u.to(torch.float64)).long()
    n = n.clamp_min(min_masks)

    if no_overlap:
        mask = _no_overlap_mask(shape, size, n, mask_length, selection, mask_other, min_space, generator, device)
    else:
        positions = torch.arange(t, device=device).expand(bsz, t)
        slot_len = _span_lengths((bsz, t), mask_length, selection, mask_other, generator, device)
        used_slot = positions < n[:, None]  # slot j is used iff j < n
        # fairseq: when every span length is 0, the first becomes min(mask_length, size - 1)
        all_zero = (slot_len.masked_fill(~used_slot, 0).sum(1) == 0) & (n > 0)
        first = torch.minimum(torch.full_like(size, int(mask_length)), size - 1).clamp_min(0)
        slot_len[:, 0] = torch.where(all_zero, first, slot_len[:, 0])
        big = torch.iinfo(torch.long).max
        min_len = slot_len.masked_fill(~used_slot, big).min(1).values
        min_len = torch.where(n > 0, min_len, torch.zeros_like(min_len))
        # fairseq: if size - min_len <= n then min_len = size - n - 1
        min_len = torch.where(size - min_len <= n, size - n - 1, min_len)
        high = (size - min_len).clamp(1, t)  # starts are drawn from [0, high)
        n = torch.minimum(n, high)
        keys = _rand((bsz, t), generator, device).masked_fill(positions >= high[:, None], 2.0)
        rank = _rank_along_rows(keys)
        is_start = rank < n[:, None]
        span = torch.gather(slot_len, 1, rank.clamp(max=t - 1)) * is_start
        end = torch.minimum(positions + span, size[:, None])
        delta = torch.zeros((bsz, t + 1), dtype=torch.long, device=device)
        active = (is_start & (end > positions)).long()
        delta.scatter_add_(1, positions, active)
        delta.scatter_add_(1, end, -active)
        mask = (delta.cumsum(1)[:, :t] > 0) & (positions < size[:, None])

    if require_same_masks and bsz > 1:
        counts = mask.sum(1)
        mask = _keep_random_subset(mask, counts.min().expand(bsz), generator, device)
    if mask_dropout > 0:
        counts = mask.sum(1)
        holes = torch.round(counts.to(torch.float64) * mask_dropout).long()
        mask = _keep_random_subset(mask, counts - holes, generator, device)
    return mask


def _no_overlap_mask(shape, size, n, mask_length, selection, mask_other, min_space, generator, device):
    """Non-overlapping spans by the reference's sequential interval-splitting algorithm (host side).

    Randomness comes from a NumPy generator seeded by a draw from ``generator``, so results stay reproducible.
    """
    bsz, t = shape
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device).item())
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, dtype=bool)
    sizes, counts = size.tolist(), n.tolist()
    for b in range(bsz):
        sz, num = sizes[b], counts[b]
        if selection == "static":
            lens = np.full(num, int(mask_length))
        elif selection == "uniform":
            lens = rng.integers(int(mask_other), int(mask_length) * 2 + 1, size=num)
        elif selection == "normal":
            lens = np.maximum(1, np.round(rng.normal(mask_length, mask_other, size=num)).astype(int))
        else:
            lens = np.round(rng.poisson(mask_length, size=num)).astype(int)
        if num == 0:
            continue
        if lens.sum() == 0:
            lens[0] = min(int(mask_length), sz - 1)
        min_len = int(lens.min())
        parts = [(0, sz)]
        idx: list[int] = []
        for length in sorted(lens.tolist(), reverse=True):
            weights = np.array([e - s if e - s >= length + min_space else 0 for s, e in parts], dtype=float)
            if weights.sum() <= 0:
                break
            k = rng.choice(len(parts), p=weights / weights.sum())
            s, e = parts.pop(k)
            # a part exactly as long as the span (possible with min_space 0 and varying lengths) has one start, s;
            # the reference draws it from the empty range [s, s) and crashes
            start = s if e - s == length else int(rng.integers(s, e - length))
            idx.extend(range(start, start + length))
            if start - s - min_space >= min_len:
                parts.append((s, start - min_space + 1))
            if e - start - length - min_space > min_len:
                parts.append((start + length + min_space, e))
        idx_arr = np.unique(np.asarray(idx, dtype=np.int64))
        idx_arr = idx_arr[idx_arr < sz]
        out[b, idx_arr] = True
    return torch.from_numpy(out).to(device)
