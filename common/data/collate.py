"""Collation of one loader batch (reference §4.6).

Output (empty dict for an empty batch)::

    id               LongTensor B          dataset indices, sub-batch after sub-batch
    source           FloatTensor B x L     waveforms, cropped or zero-padded to a common length L
    lengths          LongTensor B          valid samples per row (= L for every row when cropping)
    padded           bool                  whether some row is shorter than L (known here on the host, so a
                                           consumer need not read ``lengths`` back from a GPU to find out)
    sub_batch_sizes  LongTensor S          utterances per sub-batch (S = 1 unless num_concat_batches > 1)
    target           LongTensor B x Tmax   label ids right-padded with the pad index (labelled data only)
    target_lengths   LongTensor B          (labelled data only)
    ntokens          int                   sum of target_lengths (labelled data only)

Padding is described by ``lengths`` alone (a sample-level mask is ``arange(L) >= lengths[:, None]``).
L: pad=False -> min(shortest source, max_sample_size) (over the whole concatenated batch); pad=True ->
min(longest source, max_sample_size), raised to the largest bucketed size of the batch when buckets are used.
A source longer than L is cropped to a contiguous window whose start is uniform in [0, len - L], drawn from the
batch's own generator (see :meth:`common.data.sampler.BatchPlan.rng`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

PAD_INDEX = 1


@dataclass
class Collater:
    """Turns a list of dataset items into a batch dict.

    Attributes:
        pad: zero-pad to the longest (True: fine-tuning/inference) or crop to the shortest (False: pre-training).
        max_sample_size: crop cap (``--max_sample_size``; None = unlimited).
        pad_index: fill value of ``target`` (dictionary pad, 1).
        bucketed_sizes: per-dataset-index bucketed size (``num_batch_buckets`` > 0, pad only), or None.
    """

    pad: bool = False
    max_sample_size: Optional[int] = None
    pad_index: int = PAD_INDEX
    bucketed_sizes: Optional[np.ndarray] = None

    def __call__(
        self,
        samples: Sequence[Dict[str, object]],
        rng: np.random.Generator,
        sub_batch_sizes: Optional[Sequence[int]] = None,
    ) -> Dict[str, object]:
        if not samples:
            return {}
        sources: List[torch.Tensor] = [s["source"] for s in samples]  # type: ignore[misc]
        lens = [int(x.shape[0]) for x in sources]
        size = max(lens) if self.pad else min(lens)
        if self.max_sample_size is not None:
            size = min(size, self.max_sample_size)
        width = size
        ids = [int(s["id"]) for s in samples]  # type: ignore[arg-type]
        if self.pad and self.bucketed_sizes is not None:
            width = max(width, int(self.bucketed_sizes[ids].max()))

        out = torch.zeros(len(samples), width, dtype=torch.float32)
        lengths = torch.empty(len(samples), dtype=torch.long)
        for row, (x, n) in enumerate(zip(sources, lens)):
            if n > size:
                start = int(rng.integers(0, n - size + 1))
                x = x[start:start + size]
                n = size
            out[row, :n] = x
            lengths[row] = n

        batch: Dict[str, object] = {
            "id": torch.tensor(ids, dtype=torch.long),
            "source": out,
            "lengths": lengths,
            "padded": bool((lengths < width).any()),
            "sub_batch_sizes": torch.tensor(list(sub_batch_sizes) if sub_batch_sizes else [len(samples)],
                                            dtype=torch.long),
        }
        if "label" in samples[0]:
            labels = [torch.as_tensor(s["label"], dtype=torch.long) for s in samples]
            tlens = torch.tensor([len(t) for t in labels], dtype=torch.long)
            target = torch.full((len(labels), int(tlens.max()) if len(labels) else 0), self.pad_index,
                                dtype=torch.long)
            for row, t in enumerate(labels):
                target[row, :len(t)] = t
            batch["target"] = target
            batch["target_lengths"] = tlens
            batch["ntokens"] = int(tlens.sum())
        return batch
