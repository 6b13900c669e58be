"""Batch formation, done once per run (reference §4.5): ordering, size filtering, greedy batching, concatenation,
and the padding buckets of §4.6.

Everything here is a pure function of its inputs (no global RNG): the ordering draws its permutation from a
``numpy.random.RandomState(seed)``, which yields exactly the permutation the reference draws under its temporary
global NumPy seed, so the same filelist and seed give the reference's batches.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from common.data.errors import DataError

logger = logging.getLogger(__name__)

#: A loader batch: one or more consecutive size-batches ("sub-batches") fed to the model together.
Group = List[np.ndarray]


def capped_sizes(sizes: np.ndarray, max_sample_size: Optional[int]) -> np.ndarray:
    """``min(size, max_sample_size)`` per utterance (sizes unchanged when the cap is None)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return sizes if max_sample_size is None else np.minimum(sizes, max_sample_size)


def num_tokens(sizes: np.ndarray, pad: bool, max_sample_size: Optional[int]) -> np.ndarray:
    """Token count used for batching and filtering: the full size with padding, the capped size when cropping."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return sizes if pad else capped_sizes(sizes, max_sample_size)


def kernel_strides(conv_layers: Iterable[Sequence[int]]) -> List[Tuple[int, int]]:
    """``(kernel, stride)`` of each convolution of a feature extractor, from ``(kernel, stride)`` pairs or from the
    ``(dim, kernel, stride)`` triples of a model config (``Wav2Vec2Config.conv_layers``)."""
    layers = [(int(layer[-2]), int(layer[-1])) for layer in conv_layers]
    if not layers or any(k < 1 or s < 1 for k, s in layers):
        raise ValueError(f"conv_layers must be non-empty (kernel, stride) pairs >= 1, got {layers}")
    return layers


def conv_frames(sizes: np.ndarray, conv_layers: Iterable[Sequence[int]]) -> np.ndarray:
    """Output frames of a stack of unpadded 1-D convolutions for inputs of ``sizes`` samples: layer by layer
    ``floor((L - kernel) / stride) + 1``, 0 once an input is shorter than a kernel (int64, same shape)."""
    n = np.asarray(sizes, dtype=np.int64)
    for kernel, stride in kernel_strides(conv_layers):
        n = np.maximum((n - kernel) // stride + 1, 0)
    return n


def min_input_samples(conv_layers: Iterable[Sequence[int]], frames: int = 1) -> int:
    """The fewest input samples that give ``frames`` output frames: walking the layers backwards, an output of T
    frames needs ``(T - 1) * stride + kernel`` inputs (400 samples for one frame of the wav2vec 2.0 extractor)."""
    n = max(1, int(frames))
    for kernel, stride in reversed(kernel_strides(conv_layers)):
        n = (n - 1) * stride + kernel
    return n


def filter_too_short(indices: np.ndarray, sizes: np.ndarray, min_samples: Optional[int],
                     where: Optional[Callable[[int], str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Drop indices with fewer than ``min_samples`` samples (None keeps all): the feature extractor gives them too
    few frames (none; in pretraining, one) for a loss. Returns ``(kept, ignored)`` in the given order and logs a warning naming the
    first few by ``where(index)`` when something is ignored, like :func:`filter_by_size`."""
    indices = np.asarray(indices, dtype=np.int64)
    if min_samples is None:
        return indices, np.zeros(0, dtype=np.int64)
    bad = np.asarray(sizes)[indices] < min_samples
    kept, ignored = indices[~bad], indices[bad]
    if len(ignored):
        first = [where(int(i)) for i in ignored[:10]] if where is not None else ignored[:10].tolist()
        logger.warning(
            "%d samples are shorter than the model's minimum input (%d samples: the feature extractor's input for the "
            "frames a loss needs) and will be skipped, first few %s=%s", len(ignored), min_samples, "entries" if where is not None else "sample ids",
            first,
        )
    return kept, ignored


def ordered_indices(sizes: np.ndarray, seed: int, max_sample_size: Optional[int], shuffle: bool = True) -> np.ndarray:
    """Longest-first order with a seeded random tie-break.

    A permutation of all indices is drawn from ``RandomState(seed)`` (identity when not shuffling); indices are then
    sorted by capped size descending, ties broken by the permutation value descending (an ascending lexicographic
    sort on (capped size, permutation) read backwards).
    """
    n = len(sizes)
    tie = np.random.RandomState(seed).permutation(n) if shuffle else np.arange(n)
    return np.lexsort((tie, capped_sizes(sizes, max_sample_size)))[::-1].copy()


def filter_by_size(indices: np.ndarray, tokens: np.ndarray, max_positions: Optional[int],
                   where: Optional[Callable[[int], str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Drop indices whose token count exceeds ``max_positions`` (None keeps all).

    Returns ``(kept, ignored)`` in the given order; a warning is logged when something is ignored, naming the first
    few by ``where(index)`` (e.g. their filelist lines) when given, else by index as the reference does.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if max_positions is None:
        return indices, np.zeros(0, dtype=np.int64)
    bad = np.asarray(tokens)[indices] > max_positions
    kept, ignored = indices[~bad], indices[bad]
    if len(ignored):
        first = [where(int(i)) for i in ignored[:10]] if where is not None else ignored[:10].tolist()
        logger.warning(
            "%d samples have invalid sizes and will be skipped, max_positions=%d, first few %s=%s",
            len(ignored), max_positions, "entries" if where is not None else "sample ids", first,
        )
    return kept, ignored


def batch_by_size(
    indices: Sequence[int],
    tokens: np.ndarray,
    max_tokens: Optional[int],
    max_sentences: Optional[int] = None,
    required_batch_size_multiple: int = 1,
    where: Optional[Callable[[int], str]] = None,
) -> List[np.ndarray]:
    """Greedy batching of an ordered index list (fairseq ``batch_by_size`` semantics, in plain Python).

    The cost of a batch is its padded size, (number of items) x (largest item). Walking the items in order, the
    algorithm keeps a *committed* batch and a *tail* of the items after it. Adding item p to the candidate
    (committed + tail + p):

    * if the candidate exceeds ``max_tokens`` or ``max_sentences``, the committed batch is closed; if the tail with
      p alone also exceeds ``max_tokens``, the tail without p is closed as a batch of its own; what remains of the
      tail (with p) becomes the new committed batch;
    * otherwise, whenever the candidate size is below ``required_batch_size_multiple`` or a multiple of it, the
      tail joins the committed batch.

    At the end the committed batch and any leftover tail are emitted as separate batches.

    Args:
        indices: dataset indices in batching order.
        tokens: token count per dataset index (``tokens[indices[p]]`` is item p's cost).
        max_tokens: padded-size budget per batch (None or <= 0: unlimited).
        max_sentences: items per batch (None or <= 0: unlimited).
        required_batch_size_multiple: preferred batch-size multiple (``--required_batch_size_multiple`` 8).
        where: names a dataset index in the error (e.g. its filelist line); ids are given otherwise.

    Raises:
        DataError: an item alone exceeds ``max_tokens``.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) == 0:
        return []
    cost = np.asarray(tokens, dtype=np.int64)[idx]
    max_tokens = max_tokens if max_tokens and max_tokens > 0 else 0
    max_sentences = max_sentences if max_sentences and max_sentences > 0 else 0
    mult = max(1, int(required_batch_size_multiple))
    if max_tokens and cost.max() > max_tokens:
        bad = idx[cost > max_tokens]
        first = [where(int(i)) for i in bad[:5]] if where is not None else f"ids {bad[:10].tolist()}"
        raise DataError(
            f"{len(bad)} utterances are longer than max_tokens={max_tokens} (first {first}, longest "
            f"{int(cost.max())} samples): raise max_tokens to at least that, or filter them out first"
        )

    closed_ends: List[int] = []  # end positions of closed batches
    start = end = 0  # committed batch = [start, end); tail = [end, p]
    committed_max = tail_max = 0
    for p, c in enumerate(cost.tolist()):
        if c > tail_max:
            tail_max = c
        size = p + 1 - start
        cand_max = committed_max if committed_max > tail_max else tail_max
        overflow = (max_sentences and size > max_sentences) or (max_tokens and size * cand_max > max_tokens)
        if overflow:
            if max_tokens and (p + 1 - end) * tail_max > max_tokens:
                closed_ends.append(end)  # the committed batch ...
                end = p  # ... and the tail without p become batches
                tail_max = c
            closed_ends.append(end)
            start = end
            cand_max = tail_max
        if overflow or size < mult or size % mult == 0:
            end = p + 1
            committed_max = cand_max
            tail_max = 0
    cuts = closed_ends + ([end] if end != len(idx) else [])
    return [b for b in np.split(idx, cuts) if len(b)]


def concat_batches(batches: List[np.ndarray], num_concat_batches: int = 1) -> List[Group]:
    """Group consecutive batches ``num_concat_batches`` at a time into loader batches (sub-batches kept apart).

    Unlike the reference, a trailing incomplete group is kept (with fewer sub-batches) instead of being dropped, so
    every utterance is seen each epoch.
    """
    n = max(1, int(num_concat_batches))
    return [list(batches[i:i + n]) for i in range(0, len(batches), n)]


def get_buckets(sizes: np.ndarray, num_buckets: int) -> np.ndarray:
    """Padding bucket boundaries: unique 'lower' percentiles of ``sizes`` at 100*j/num_buckets, j = 1..num_buckets."""
    q = 100.0 * np.arange(1, num_buckets + 1) / num_buckets
    return np.unique(np.percentile(np.asarray(sizes, dtype=np.int64), q, method="lower")).astype(np.int64)


def get_bucketed_sizes(sizes: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """Smallest bucket boundary >= each size (sizes above the last boundary keep their own size)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    pos = np.searchsorted(buckets, sizes, side="left")
    out = sizes.copy()
    inside = pos < len(buckets)
    out[inside] = buckets[pos[inside]]
    return out
