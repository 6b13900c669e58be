"""Once-per-run batch formation: ordering, size filter, greedy batch_by_size, concatenation, buckets."""
import logging

import numpy as np
import pytest

from common.data.batching import (
    batch_by_size,
    concat_batches,
    filter_by_size,
    get_bucketed_sizes,
    get_buckets,
    num_tokens,
    ordered_indices,
)
from common.data.errors import DataError


def test_worked_example_from_reference():
    # max_tokens 1000, multiple 8: 5x100, 20x90, 30x50 -> 8, 8, 8, 8, 16, 7
    sizes = np.array([100] * 5 + [90] * 20 + [50] * 30)
    batches = batch_by_size(np.arange(55), sizes, max_tokens=1000, required_batch_size_multiple=8)
    assert [len(b) for b in batches] == [8, 8, 8, 8, 16, 7]
    assert np.concatenate(batches).tolist() == list(range(55))  # order kept, nothing lost
    # padded sizes (hand-traced): 8x100, 8x90, 8x90, 8x90 (item 24 is the last 90), 16x50, 7x50
    assert [len(b) * sizes[b].max() for b in batches] == [800, 720, 720, 720, 800, 350]


def test_tail_overflow_closes_two_batches():
    # mult 2, max_tokens 100: [10, 10] committed, 10 waits in the tail; 60 overflows both the candidate (4x60) and
    # the tail with it (2x60) -> [10,10], [10], then 60 starts a new batch.
    batches = batch_by_size(np.arange(4), np.array([10, 10, 10, 60]), 100, None, 2)
    assert [b.tolist() for b in batches] == [[0, 1], [2], [3]]


def test_max_sentences_and_leftover_tail():
    sizes = np.ones(10, dtype=np.int64)
    assert [len(b) for b in batch_by_size(np.arange(10), sizes, None, 4, 1)] == [4, 4, 2]
    # mult 8, no limits hit: 1..8 merged, 9 and 10 stay in the tail and are emitted as a separate final batch
    assert [len(b) for b in batch_by_size(np.arange(10), sizes, 1000, None, 8)] == [8, 2]


def test_batches_respect_max_tokens_and_cover_everything():
    rs = np.random.RandomState(3)
    sizes = rs.randint(1000, 40000, size=500)
    order = ordered_indices(sizes, seed=7, max_sample_size=None)
    for max_tokens in (40000, 100000, 333333):
        batches = batch_by_size(order, sizes, max_tokens, None, 8)
        assert all(len(b) * sizes[b].max() <= max_tokens for b in batches)
        assert np.concatenate(batches).tolist() == order.tolist()


def test_item_longer_than_max_tokens_is_an_error():
    with pytest.raises(DataError, match="longer than max_tokens=100"):
        batch_by_size(np.arange(2), np.array([50, 150]), 100)
    assert batch_by_size(np.arange(0), np.array([]), 100) == []


def test_ordering_longest_first_with_seeded_tiebreak():
    sizes = np.array([5, 9, 5, 7, 5])
    # without shuffle the tie-break is the index itself, descending
    assert ordered_indices(sizes, seed=0, max_sample_size=None, shuffle=False).tolist() == [1, 3, 4, 2, 0]
    # with shuffle: ties (indices 0, 2, 4) ordered by the seed's permutation value, descending
    seed = 5
    perm = np.random.RandomState(seed).permutation(5)
    ties = sorted([0, 2, 4], key=lambda i: -perm[i])
    assert ordered_indices(sizes, seed=seed, max_sample_size=None).tolist() == [1, 3] + ties
    # the size cap makes 300 and 250 tie with each other at 220
    capped = ordered_indices(np.array([300, 200, 250]), seed=0, max_sample_size=220, shuffle=False)
    assert capped.tolist() == [2, 0, 1]


def test_ordering_does_not_touch_global_rng():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    ordered_indices(np.arange(10), seed=1, max_sample_size=None)
    assert np.random.rand() == expected


def test_num_tokens_and_filter(caplog):
    sizes = np.array([10, 2000, 30, 1500])
    assert num_tokens(sizes, pad=False, max_sample_size=1200).tolist() == [10, 1200, 30, 1200]
    assert num_tokens(sizes, pad=True, max_sample_size=1200).tolist() == [10, 2000, 30, 1500]
    with caplog.at_level(logging.WARNING):
        kept, ignored = filter_by_size(np.array([1, 3, 0, 2]), sizes, 1000)
    assert kept.tolist() == [0, 2] and ignored.tolist() == [1, 3]
    assert "2 samples have invalid sizes" in caplog.text
    kept, ignored = filter_by_size(np.array([1, 0]), sizes, None)
    assert kept.tolist() == [1, 0] and len(ignored) == 0


def test_concat_keeps_trailing_group():
    batches = [np.array([i]) for i in range(5)]
    groups = concat_batches(batches, 2)
    assert [[b.tolist() for b in g] for g in groups] == [[[0], [1]], [[2], [3]], [[4]]]
    assert len(concat_batches(batches, 1)) == 5


def test_buckets_numpy2_lower_percentile():
    sizes = np.arange(1, 11)
    # 'lower' percentiles at 50 and 100 of 1..10: positions 4.5 -> 4 (value 5) and 9 (value 10)
    buckets = get_buckets(sizes, 2)
    assert buckets.tolist() == [5, 10]
    assert get_bucketed_sizes(sizes, buckets).tolist() == [5] * 5 + [10] * 5
    assert get_buckets(np.array([7, 7, 7, 7]), 3).tolist() == [7]  # duplicates collapse
