"""Collation: crop to shortest / pad to longest, lengths, targets, sub-batch sizes, buckets, empty batch."""
import numpy as np
import torch

from common.data.collate import Collater


def _item(i, n, label=None):
    d = {"id": i, "source": torch.arange(n, dtype=torch.float32) + 1000 * i}
    if label is not None:
        d["label"] = torch.tensor(label, dtype=torch.int32)
    return d


def _rng():
    return np.random.default_rng(0)


def test_crop_to_shortest_contiguous_windows():
    samples = [_item(0, 10), _item(1, 6), _item(2, 8)]
    b = Collater(pad=False)(samples, _rng())
    assert b["source"].shape == (3, 6) and b["source"].dtype == torch.float32
    assert b["lengths"].tolist() == [6, 6, 6]
    assert b["id"].tolist() == [0, 1, 2] and b["id"].dtype == torch.long
    assert b["sub_batch_sizes"].tolist() == [3]
    assert set(b) == {"id", "source", "lengths", "padded", "sub_batch_sizes"} and b["padded"] is False
    for row, (i, n) in enumerate([(0, 10), (1, 6), (2, 8)]):
        start = int(b["source"][row, 0]) - 1000 * i
        assert 0 <= start <= n - 6
        assert b["source"][row].tolist() == [1000 * i + start + k for k in range(6)]
    assert b["source"][1].tolist() == [1000.0 + k for k in range(6)]  # the shortest is copied whole


def test_crop_offsets_come_from_the_given_generator():
    samples = [_item(0, 100), _item(1, 10)]
    b1 = Collater(pad=False)(samples, np.random.default_rng(42))
    b2 = Collater(pad=False)(samples, np.random.default_rng(42))
    assert torch.equal(b1["source"], b2["source"])
    expected_start = int(np.random.default_rng(42).integers(0, 100 - 10 + 1))
    assert int(b1["source"][0, 0]) == expected_start


def test_crop_start_is_uniform_over_every_window():
    """The window start is uniform over [0, len - L], the last window included (fairseq's crop). Oracle: over 3,000
    seeds, a 12-sample source cropped to 10 starts at 0, 1 and 2 a third of the time each (binomial sd ~0.9 %)."""
    samples = [_item(0, 12), _item(1, 10)]
    collate = Collater(pad=False)
    starts = [int(collate(samples, np.random.default_rng(seed))["source"][0, 0]) for seed in range(3000)]
    counts = np.bincount(starts, minlength=3)
    assert len(counts) == 3 and all(abs(c / 3000 - 1 / 3) < 0.04 for c in counts), counts


def test_max_sample_size_caps_crop_and_pad():
    samples = [_item(0, 10), _item(1, 8)]
    assert Collater(pad=False, max_sample_size=5)(samples, _rng())["source"].shape == (2, 5)
    b = Collater(pad=True, max_sample_size=9)(samples, _rng())
    assert b["source"].shape == (2, 9) and b["lengths"].tolist() == [9, 8] and b["padded"] is True
    b = Collater(pad=True, max_sample_size=8)(samples, _rng())  # both cropped to the cap: no padding left
    assert b["lengths"].tolist() == [8, 8] and b["padded"] is False


def test_pad_to_longest_with_mask_and_targets():
    samples = [_item(0, 3, [5, 6]), _item(1, 5, [4]), _item(2, 4, [7, 7, 7])]
    b = Collater(pad=True)(samples, _rng(), sub_batch_sizes=[2, 1])
    assert b["source"].tolist() == [[0, 1, 2, 0, 0], [1000, 1001, 1002, 1003, 1004], [2000, 2001, 2002, 2003, 0]]
    assert b["lengths"].tolist() == [3, 5, 4]
    assert set(b) == {"id", "source", "lengths", "padded", "sub_batch_sizes", "target", "target_lengths", "ntokens"}
    assert b["padded"] is True
    assert b["target"].tolist() == [[5, 6, 1], [4, 1, 1], [7, 7, 7]] and b["target"].dtype == torch.long
    assert b["target_lengths"].tolist() == [2, 1, 3]
    assert b["ntokens"] == 6
    assert b["sub_batch_sizes"].tolist() == [2, 1]


def test_buckets_widen_padded_batch():
    bucketed = np.array([8, 8, 16])
    b = Collater(pad=True, bucketed_sizes=bucketed)([_item(0, 5), _item(1, 7)], _rng())
    assert b["source"].shape == (2, 8)
    assert b["lengths"].tolist() == [5, 7]
    assert b["source"][1, 7].item() == 0.0


def test_empty_batch_is_empty_dict():
    assert Collater()([], _rng()) == {}
