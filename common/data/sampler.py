"""Per-epoch order of the run's loader batches, their split over DDP ranks, and the resumable position.

Batch composition is fixed for the run (:mod:`common.data.batching`); each epoch only permutes the batch list with
``RandomState(seed + epoch)``, the same on every rank, and rank r takes epoch positions r, r+W, r+2W, ...

Equal work per rank without losing data: the reference truncates the epoch to W*floor(n/W) batches (dropping up to
W-1 batches per epoch). Instead, :func:`balance_for_ranks` splits the ``W - n mod W`` batches with the most
utterances in two, once per run, so that n becomes divisible by W: every rank gets n/W batches and every kept
utterance is seen exactly once per epoch. Splitting only makes batches smaller, so ``max_tokens`` still holds.

Each yielded :class:`BatchPlan` carries (seed, epoch, position): the collater derives its random crop offsets from
them alone, so crops do not depend on worker processes and a resumed run sees identical crops.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
from torch.utils.data import Sampler

from common.data.batching import Group
from common.data.errors import DataError

#: Fixed first word of the crop RNG seed, so the crop stream differs from other (seed, epoch, ...) streams.
CROP_STREAM = 0x43524F50  # "CROP"


@dataclass(frozen=True, eq=False)
class BatchPlan:
    """One loader batch as the sampler hands it to a worker.

    Attributes:
        sub_batches: index arrays of the sub-batches (one unless ``num_concat_batches`` > 1); may be empty
            (a validation padding batch, only when there are fewer utterances than ranks).
        seed: run seed (``--seed``).
        epoch: epoch number (from 1, as the reference).
        position: position of this batch in the epoch's global (all ranks) order.
    """

    sub_batches: Tuple[np.ndarray, ...]
    seed: int
    epoch: int
    position: int

    @property
    def indices(self) -> np.ndarray:
        if not self.sub_batches:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.sub_batches)

    @property
    def sub_batch_sizes(self) -> List[int]:
        return [len(b) for b in self.sub_batches]

    def rng(self) -> np.random.Generator:
        """Generator for this batch's random crops, a pure function of (seed, epoch, position)."""
        return np.random.default_rng([CROP_STREAM, self.seed, self.epoch, self.position])


def _group_count(g: Group) -> int:
    return int(sum(len(b) for b in g))


def _split_group(g: Group) -> Tuple[Group, Group]:
    """Split a loader batch in two: between its sub-batches when it has several, else inside its only sub-batch."""
    if len(g) > 1:
        h = (len(g) + 1) // 2
        return list(g[:h]), list(g[h:])
    b = g[0]
    h = (len(b) + 1) // 2
    return [b[:h]], [b[h:]]


def balance_for_ranks(groups: List[Group], world_size: int, allow_empty: bool = False) -> List[Group]:
    """Make the number of loader batches a multiple of ``world_size`` without dropping anything.

    Repeatedly splits the ``W - n mod W`` batches with the most utterances (ties: earliest first) in two, the halves
    taking the original's place in the list. When there are fewer utterances than ranks this is impossible: with
    ``allow_empty`` (validation) the list is padded with empty batches, otherwise a :class:`DataError` is raised.
    """
    out = [list(g) for g in groups]
    w = int(world_size)
    if w <= 1:
        return out
    while len(out) % w:
        need = w - len(out) % w
        counts = np.array([_group_count(g) for g in out])
        splittable = [i for i in np.argsort(-counts, kind="stable").tolist() if counts[i] >= 2][:need]
        if not splittable:
            total = int(counts.sum())
            if allow_empty:
                return out + [[] for _ in range(need)]
            raise DataError(f"cannot give each of {w} ranks a batch: only {total} utterances after filtering")
        for i in sorted(splittable, reverse=True):  # right to left keeps the earlier positions valid
            a, b = _split_group(out[i])
            out[i:i + 1] = [a, b]
    return out


def plan_digest(groups: List[Group]) -> str:
    """Short hash of a batch plan (composition and order of all loader batches), stored with the data position."""
    h = hashlib.sha256()
    for g in groups:
        h.update(len(g).to_bytes(4, "little"))
        for b in g:
            arr = np.ascontiguousarray(b, dtype=np.int64)
            h.update(len(arr).to_bytes(8, "little"))
            h.update(arr.tobytes())
    return h.hexdigest()[:16]


def epoch_order(num_batches: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Global batch order of an epoch: ``RandomState(seed + epoch).permutation`` when shuffling, else identity."""
    if shuffle:
        return np.random.RandomState(seed + epoch).permutation(num_batches)
    return np.arange(num_batches)


class ShardedBatchSampler(Sampler):
    """Yields this rank's :class:`BatchPlan` s for the current epoch, starting at a resumable offset.

    Args:
        groups: the run's loader batches, already balanced for ``world_size`` (:func:`balance_for_ranks`).
        world_size, rank: DDP layout (W, r).
        seed: ``--seed``; with ``shuffle`` the epoch order is drawn from ``RandomState(seed + epoch)``.
        shuffle: True for training, False for validation (size order kept).
    """

    def __init__(self, groups: List[Group], world_size: int = 1, rank: int = 0, seed: int = 1, shuffle: bool = True):
        if len(groups) % max(1, world_size):
            raise ValueError(f"{len(groups)} batches are not divisible by world_size={world_size}; balance them first")
        if not 0 <= rank < max(1, world_size):
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.groups = [tuple(g) for g in groups]
        self.digest = plan_digest(self.groups)
        self.world_size = max(1, int(world_size))
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 1
        self.start = 0

    def __len__(self) -> int:
        """Batches per rank per epoch."""
        return len(self.groups) // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plans(self, epoch: Optional[int] = None, start: int = 0) -> List[BatchPlan]:
        """This rank's batches of ``epoch`` (default: current) from its ``start``-th one on."""
        epoch = self.epoch if epoch is None else int(epoch)
        order = epoch_order(len(self.groups), self.seed, epoch, self.shuffle)
        positions = range(self.rank + start * self.world_size, len(order), self.world_size)
        return [BatchPlan(self.groups[order[p]], self.seed, epoch, p) for p in positions]

    def __iter__(self) -> Iterator[BatchPlan]:
        return iter(self.plans(self.epoch, self.start))
