"""Per-epoch order, DDP sharding (equal counts, exact coverage), balancing splits, crop RNG keys."""
import numpy as np
import pytest

from common.data.batching import batch_by_size, concat_batches, ordered_indices
from common.data.errors import DataError
from common.data.sampler import BatchPlan, ShardedBatchSampler, balance_for_ranks, epoch_order


def _groups(counts):
    out, start = [], 0
    for c in counts:
        out.append([np.arange(start, start + c)])
        start += c
    return out


def _counts(groups):
    return [sum(len(b) for b in g) for g in groups]


def test_balance_splits_largest_batches_hand_cases():
    g = _groups([16, 8, 7])
    assert _counts(balance_for_ranks(g, 1)) == [16, 8, 7]
    assert _counts(balance_for_ranks(g, 3)) == [16, 8, 7]
    assert _counts(balance_for_ranks(g, 2)) == [8, 8, 8, 7]  # 3 -> 4: split the 16
    assert _counts(balance_for_ranks(g, 4)) == [8, 8, 8, 7]
    assert _counts(balance_for_ranks(g, 5)) == [8, 8, 4, 4, 7]  # 3 -> 5: split the 16 and the 8
    # halves are contiguous pieces of the original, in place
    assert [b.tolist() for grp in balance_for_ranks(_groups([3, 1]), 3) for b in grp] == [[0, 1], [2], [3]]


def test_balance_splits_concatenated_groups_between_sub_batches():
    groups = [[np.arange(0, 8), np.arange(8, 16), np.arange(16, 24)], [np.arange(24, 30)]]
    out = balance_for_ranks(groups, 3)
    assert [[b.tolist()[0] for b in g] for g in out] == [[0, 8], [16], [24]]


def test_too_few_utterances_for_ranks():
    with pytest.raises(DataError, match="only 2 utterances"):
        balance_for_ranks(_groups([2]), 3)
    out = balance_for_ranks(_groups([2]), 3, allow_empty=True)
    assert _counts(out) == [1, 1, 0]


def _run_batches(n_utt=137, max_tokens=20000, seed=3):
    rs = np.random.RandomState(11)
    sizes = rs.randint(500, 4000, size=n_utt)
    order = ordered_indices(sizes, seed, None)
    return batch_by_size(order, sizes, max_tokens, None, 8), sizes


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_concat", [1, 2])
def test_every_utterance_once_per_epoch_equal_counts(world_size, num_concat):
    batches, sizes = _run_batches()
    groups = balance_for_ranks(concat_batches(batches, num_concat), world_size)
    samplers = [ShardedBatchSampler(groups, world_size, r, seed=3, shuffle=True) for r in range(world_size)]
    for epoch in (1, 2):
        seen = []
        lengths = set()
        for s in samplers:
            s.set_epoch(epoch)
            plans = list(s)
            lengths.add(len(plans))
            assert len(plans) == len(s)
            seen.extend(np.concatenate([p.indices for p in plans]).tolist())
            for p in plans:
                for b in p.sub_batches:
                    assert len(b) * sizes[b].max() <= 20000
        assert len(lengths) == 1
        assert sorted(seen) == list(range(len(sizes)))


def test_epoch_order_is_reference_permutation_and_rank_stride():
    groups = _groups([1] * 10)
    s0 = ShardedBatchSampler(groups, 2, 0, seed=4)
    s1 = ShardedBatchSampler(groups, 2, 1, seed=4)
    perm = np.random.RandomState(4 + 3).permutation(10)  # seed + epoch, identical on all ranks
    assert [int(p.indices[0]) for p in s0.plans(epoch=3)] == perm[0::2].tolist()
    assert [int(p.indices[0]) for p in s1.plans(epoch=3)] == perm[1::2].tolist()
    assert [p.position for p in s1.plans(epoch=3)] == [1, 3, 5, 7, 9]
    assert epoch_order(4, 0, 1, shuffle=False).tolist() == [0, 1, 2, 3]


def test_same_seed_same_batches_different_seed_differs():
    def run(seed):
        batches, _ = _run_batches(seed=seed)
        s = ShardedBatchSampler(balance_for_ranks(concat_batches(batches), 2), 2, 0, seed=seed)
        return [p.indices.tolist() for p in s.plans(epoch=1)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_validation_keeps_size_order_and_pads_only_when_needed():
    groups = balance_for_ranks(_groups([4, 3, 2]), 2, allow_empty=True)
    assert _counts(groups) == [2, 2, 3, 2]
    s = [ShardedBatchSampler(groups, 2, r, seed=1, shuffle=False) for r in (0, 1)]
    assert [p.indices.tolist() for p in s[0].plans(1)] == [[0, 1], [4, 5, 6]]
    assert [p.indices.tolist() for p in s[1].plans(1)] == [[2, 3], [7, 8]]


def test_start_offset_gives_the_remaining_plans():
    batches, _ = _run_batches()
    groups = balance_for_ranks(concat_batches(batches), 3)
    s = ShardedBatchSampler(groups, 3, 2, seed=9)
    full = s.plans(epoch=5)
    s.set_epoch(5)
    s.start = 2
    rest = list(s)
    assert [(p.position, p.indices.tolist()) for p in rest] == [(p.position, p.indices.tolist()) for p in full[2:]]


def test_crop_rng_is_a_function_of_seed_epoch_position():
    a = BatchPlan((np.arange(3),), seed=1, epoch=2, position=5)
    b = BatchPlan((np.arange(7),), seed=1, epoch=2, position=5)
    assert a.rng().integers(0, 10**9, 4).tolist() == b.rng().integers(0, 10**9, 4).tolist()
    c = BatchPlan((np.arange(3),), seed=1, epoch=3, position=5)
    assert a.rng().integers(0, 10**9, 4).tolist() != c.rng().integers(0, 10**9, 4).tolist()
