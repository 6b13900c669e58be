"""Mutation-testing oracles for batch formation, sharding and collation (REFERENCE.md §4.5-4.6).

Every expected value here comes from the reference's stated law or hand-computed numbers, re-computed
independently (plain Python sorting / arithmetic), never from the module's own output.
"""
import numpy as np
import torch

from common.data.batching import batch_by_size, filter_by_size, ordered_indices
from common.data.collate import Collater
from common.data.sampler import ShardedBatchSampler, plan_digest


def _reference_order(sizes, seed, cap):
    """§4.5 step 1 by brute force: permutation from RandomState(seed), sort by (capped size, perm) descending."""
    perm = np.random.RandomState(seed).permutation(len(sizes))
    capped = [min(s, cap) if cap is not None else s for s in sizes]
    return sorted(range(len(sizes)), key=lambda i: (-capped[i], -perm[i]))


def test_tiebreak_uses_the_permutation_of_exactly_seed():
    """All-tied sizes: the order is the seed's permutation read by descending value (a seed + 1 draw differs)."""
    sizes = [7] * 12
    for seed in (0, 1, 5, 42):
        assert ordered_indices(np.array(sizes), seed=seed, max_sample_size=None).tolist() == \
            _reference_order(sizes, seed, None)
    # mixed sizes with a cap: sizes over the cap tie at the cap
    sizes = [300, 120, 220, 120, 999, 50, 120, 220]
    for seed in (3, 11):
        assert ordered_indices(np.array(sizes), seed=seed, max_sample_size=220).tolist() == \
            _reference_order(sizes, seed, 220)


def test_size_equal_to_max_positions_is_kept():
    """§4.5 step 2: an utterance is kept iff its size <= max_tokens (the boundary is kept)."""
    tokens = np.array([1000, 1001, 999, 1000])
    kept, ignored = filter_by_size(np.arange(4), tokens, 1000)
    assert kept.tolist() == [0, 2, 3] and ignored.tolist() == [1]


def test_crop_stream_differs_between_positions_of_one_epoch():
    """Crops are keyed by (seed, epoch, position): two batches of the same epoch draw independent crop offsets.
    Oracle: with 8 batches and 1000 possible offsets, identical first draws everywhere have probability ~1e-21."""
    groups = [[np.array([i])] for i in range(8)]
    plans = ShardedBatchSampler(groups, 1, 0, seed=3).plans(epoch=2)
    assert sorted(p.position for p in plans) == list(range(8))
    draws = {int(p.rng().integers(0, 1000)) for p in plans}
    assert len(draws) > 1
    # same through the collater: the same long source cropped in every batch of the epoch
    samples = [{"id": 0, "source": torch.arange(5000, dtype=torch.float32)},
               {"id": 1, "source": torch.arange(100, dtype=torch.float32)}]
    starts = {int(Collater(pad=False)(samples, p.rng())["source"][0, 0]) for p in plans}
    assert len(starts) > 1


def test_padded_flag_is_true_when_buckets_widen_an_unpadded_batch():
    """§4.6 step 5: sources of equal length 100 whose bucketed size is 128 are right-padded to 128; the batch is
    padded although no row is shorter than the longest source."""
    bucketed = np.array([128, 128])
    samples = [{"id": 0, "source": torch.ones(100)}, {"id": 1, "source": torch.ones(100)}]
    b = Collater(pad=True, bucketed_sizes=bucketed)(samples, np.random.default_rng(0))
    assert b["source"].shape == (2, 128)
    assert b["lengths"].tolist() == [100, 100]
    assert b["padded"] is True
    assert b["source"][:, 100:].abs().sum().item() == 0.0


def test_item_exactly_max_tokens_is_allowed():
    """§4.5 step 3: only an item that EXCEEDS max_tokens is an error; one of exactly max_tokens is a batch alone.
    By hand, max_tokens 1000: [1000] (1x1000), then 500 + 500 (2x500 = 1000) -> [[0], [1, 2]]."""
    batches = batch_by_size(np.arange(3), np.array([1000, 500, 500]), 1000)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]


def test_fresh_sampler_yields_epoch_one_in_the_reference_order():
    """Epochs count from 1 (reference §4.7): before any set_epoch the sampler yields epoch 1, whose global order is
    RandomState(seed + 1).permutation(n); rank r of W takes positions r, r + W, ..."""
    groups = [[np.array([i])] for i in range(6)]
    perm = np.random.RandomState(4 + 1).permutation(6).tolist()
    for rank in (0, 1):
        plans = list(ShardedBatchSampler(groups, 2, rank, seed=4))
        assert [p.epoch for p in plans] == [1, 1, 1]
        assert [p.position for p in plans] == [rank, rank + 2, rank + 4]
        assert [int(p.indices[0]) for p in plans] == [perm[q] for q in (rank, rank + 2, rank + 4)]


def test_digest_tells_concatenated_groups_from_separate_batches():
    """The digest covers the composition of every loader batch: batches [0,1] and [2] fed separately differ from
    the same two fed together as one concatenated loader batch (a changed --num_concat_batches on resume)."""
    a, b = np.array([0, 1]), np.array([2])
    assert plan_digest([[a], [b]]) != plan_digest([[a, b]])
    assert plan_digest([[a], [b]]) == plan_digest([[a.copy()], [b.copy()]])


def test_padding_mode_crop_to_the_cap_is_uniform_too():
    """§4.6 step 3 applies to pad=True as well: a 100-sample source over max_sample_size 10 is cropped to a window
    whose start is uniform over 0..90 (91 values). Oracle: over 2,000 seeds the mean start is 45 (sd of the mean
    26.3 / sqrt(2000) = 0.59) and most starts occur."""
    samples = [{"id": 0, "source": torch.arange(100, dtype=torch.float32)},
               {"id": 1, "source": torch.arange(5, dtype=torch.float32)}]
    collate = Collater(pad=True, max_sample_size=10)
    starts = []
    for seed in range(2000):
        b = collate(samples, np.random.default_rng(seed))
        assert b["lengths"].tolist() == [10, 5]
        starts.append(int(b["source"][0, 0]))
        assert b["source"][0].tolist() == [float(starts[-1] + k) for k in range(10)]
    assert abs(np.mean(starts) - 45.0) < 5 * 0.59
    assert min(starts) == 0 and max(starts) == 90 and len(set(starts)) > 85
