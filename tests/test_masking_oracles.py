"""Mutation-testing oracles for span masking (REFERENCE.md §1.4.1) and contrastive logits / negatives (§1.6).

The expected laws are re-derived here by brute-force enumeration of the reference algorithm (span lengths,
min_len adjustment, distinct uniform starts, union; the no-overlap interval splitting), with tolerances of
5 binomial standard deviations over fixed seeds. Nothing is taken from wav2vec2.masking.
"""
from __future__ import annotations

import math
from itertools import permutations, product

import pytest
import torch

from wav2vec2.masking import compute_mask
from wav2vec2.negatives import (
    contrastive_logits,
    contrastive_logits_from_indices,
    gather_negatives,
    sample_negative_indices,
)


def _length_tuples(length_pmf: dict[int, float], n: int):
    """Every tuple of n i.i.d. span lengths drawn from ``length_pmf``, with its probability."""
    for combo in product(length_pmf.items(), repeat=n):
        yield [k for k, _ in combo], math.prod(q for _, q in combo)


def _tol(p: float, n: int) -> float:
    return 5.0 * math.sqrt(p * (1.0 - p) / n) + 1e-12


def _overlap_law(size: int, n: int, mask_length: int, length_pmf: dict[int, float]):
    """Exact law of the reference's overlapping-mode mask of one utterance with n spans whose lengths are i.i.d.
    from ``length_pmf``: all-zero fix (first = min(mask_length, size - 1)); min_len = min(lengths), and
    min_len = size - n - 1 when size - min_len <= n; n distinct starts uniform over [0, size - min_len), start j
    taking length j; the union of the spans, indices >= size dropped.
    Returns (P(frame masked) per frame, P(count = k))."""
    per_pos = [0.0] * size
    count_law: dict[int, float] = {}
    for lens, p in _length_tuples(length_pmf, n):
        if sum(lens) == 0:
            lens[0] = min(mask_length, size - 1)
        min_len = min(lens)
        if size - min_len <= n:
            min_len = size - n - 1
        high = size - min_len
        starts = list(permutations(range(high), n))
        for st in starts:
            cov = {s + o for s, ln in zip(st, lens) for o in range(ln) if s + o < size}
            w = p / len(starts)
            for c in cov:
                per_pos[c] += w
            count_law[len(cov)] = count_law.get(len(cov), 0.0) + w
    return per_pos, count_law


def _check_law(mask: torch.Tensor, per_pos, count_law):
    rows = mask.shape[0]
    freq = mask.double().mean(0).tolist()
    for i, p in enumerate(per_pos):
        assert abs(freq[i] - p) <= _tol(p, rows), ("frame", i, freq[i], p)
    counts = torch.bincount(mask.sum(1), minlength=mask.shape[1] + 1).tolist()
    for k in range(mask.shape[1] + 1):
        p = count_law.get(k, 0.0)
        assert abs(counts[k] / rows - p) <= _tol(p, rows), ("count", k, counts[k] / rows, p)


def _normal_pmf(mean: float, std: float, kmax: int) -> dict[int, float]:
    """P(max(1, round(N(mean, std))) = k), k = 1..kmax (the tail beyond kmax is negligible here)."""
    cdf = lambda x: 0.5 * (1.0 + math.erf((x - mean) / (std * math.sqrt(2.0))))  # noqa: E731
    return {k: cdf(k + 0.5) - (0.0 if k == 1 else cdf(k - 0.5)) for k in range(1, kmax + 1)}


ROWS = 20000


def test_one_span_count_draw_per_batch_without_padding():
    """§1.4.1 step 2: without padding one U draw serves the whole batch, so every utterance gets the same number
    of spans. mask_length 1, T 5, p 0.5: n = floor(2.5 + U) in {2, 3}, starts distinct in [0, 4) -> exactly n
    masked frames, equal over the batch; with a padding mask each utterance draws its own U."""
    seen = set()
    unequal = 0
    for seed in range(30):
        m = compute_mask((8, 5), 0.5, 1, require_same_masks=False, generator=torch.Generator().manual_seed(seed))
        c = m.sum(1).tolist()
        assert len(set(c)) == 1, (seed, c)
        seen.add(c[0])
        mp = compute_mask((8, 5), 0.5, 1, lengths=torch.full((8,), 5), require_same_masks=False,
                          generator=torch.Generator().manual_seed(seed))
        cp = mp.sum(1).tolist()
        assert set(cp) <= {2, 3}
        unequal += len(set(cp)) > 1
    assert seen == {2, 3}
    assert unequal >= 20  # P(8 equal draws) = 1/128 per batch


def test_uniform_span_lengths_overlap_law_uses_min_of_drawn_lengths():
    """uniform selection, L 2, mask_other 1: lengths uniform in {1..4}; two spans (min_masks) in 10 frames; the
    start range is [0, 10 - min(l1, l2)), so the last frame can be masked."""
    pmf = {k: 0.25 for k in range(1, 5)}
    per_pos, law = _overlap_law(10, 2, 2, pmf)
    assert per_pos[9] > 0.05
    m = compute_mask((ROWS, 10), 0.01, 2, selection="uniform", mask_other=1, min_masks=2,
                     require_same_masks=False, generator=torch.Generator().manual_seed(7))
    _check_law(m, per_pos, law)


def test_normal_span_lengths_are_at_least_one():
    """normal selection, L 1, std 2: lengths max(1, round(N(1, 2))) >= 1, so two distinct starts always give at
    least two masked frames; full law by enumeration."""
    pmf = _normal_pmf(1.0, 2.0, 17)
    per_pos, law = _overlap_law(10, 2, 1, pmf)
    m = compute_mask((ROWS, 10), 0.01, 1, selection="normal", mask_other=2, min_masks=2,
                     require_same_masks=False, generator=torch.Generator().manual_seed(8))
    assert int(m.sum(1).min()) >= 2
    _check_law(m, per_pos, law)


def test_all_zero_poisson_lengths_fall_back_to_size_minus_one():
    """poisson selection, L 2, T 2, one span: a zero draw (prob e^-2) becomes min(2, T - 1) = 1 frame.
    By hand: min_len is reset to T - n - 1 = 0 for every length, starts uniform in {0, 1}; two frames are masked
    only for length >= 2 at start 0: P(count 2) = (1 - 3 e^-2) / 2 = 0.2970 (0.3647 if the fallback were 2)."""
    pmf = {k: math.exp(-2.0) * 2.0 ** k / math.factorial(k) for k in range(0, 25)}
    per_pos, law = _overlap_law(2, 1, 2, pmf)
    assert abs(law[2] - (1 - 3 * math.exp(-2)) / 2) < 1e-9
    m = compute_mask((ROWS, 2), 0.01, 2, selection="poisson", min_masks=1, require_same_masks=False,
                     generator=torch.Generator().manual_seed(9))
    _check_law(m, per_pos, law)


def _no_overlap_law(size: int, lens: list[int], min_space: int):
    """Exact law (dict frozenset -> prob) of the reference's no-overlap interval splitting for fixed lengths."""
    out: dict[frozenset, float] = {}
    min_len = min(lens)
    order = sorted(lens, reverse=True)

    def rec(i, parts, idx, p):
        if i == len(order):
            key = frozenset(x for x in idx if x < size)
            out[key] = out.get(key, 0.0) + p
            return
        length = order[i]
        w = [e - s if e - s >= length + min_space else 0 for s, e in parts]
        if sum(w) <= 0:
            rec(len(order), parts, idx, p)
            return
        for k, wk in enumerate(w):
            if wk == 0:
                continue
            s, e = parts[k]
            rest = parts[:k] + parts[k + 1:]
            starts = range(s, e - length)
            assert len(starts) > 0, "the reference would draw from an empty range here"
            for u in starts:
                new = list(rest)
                if u - s - min_space >= min_len:
                    new.append((s, u - min_space + 1))
                if e - u - length - min_space > min_len:
                    new.append((u + length + min_space, e))
                rec(i + 1, new, idx | set(range(u, u + length)), p * wk / sum(w) / len(starts))

    rec(0, [(0, size)], set(), 1.0)
    return out


def test_no_overlap_static_law_by_enumeration():
    """no_overlap, two static spans of 2 in 6 frames, min_space 0. By hand: first start uniform in {0..3};
    masked sets {0,1,2,3} 3/8, {0,1,3,4} 1/4, {1,2,3,4} 3/8; frame 5 never masked."""
    law = _no_overlap_law(6, [2, 2], 0)
    expected = {frozenset({0, 1, 2, 3}): 3 / 8, frozenset({0, 1, 3, 4}): 1 / 4, frozenset({1, 2, 3, 4}): 3 / 8}
    assert set(law) == set(expected) and all(abs(law[k] - v) < 1e-12 for k, v in expected.items())
    rows = 4000
    m = compute_mask((rows, 6), 0.01, 2, min_masks=2, no_overlap=True, min_space=0, require_same_masks=False,
                     generator=torch.Generator().manual_seed(4))
    got: dict[frozenset, int] = {}
    for row in m.tolist():
        key = frozenset(i for i, v in enumerate(row) if v)
        got[key] = got.get(key, 0) + 1
    assert set(got) <= set(expected), got
    for k, v in expected.items():
        assert abs(got.get(k, 0) / rows - v) <= _tol(v, rows), (sorted(k), got.get(k, 0) / rows, v)


def _no_overlap_mixture(size: int, n: int, length_pmf: dict[int, float], min_space: int):
    """The no-overlap law with n i.i.d. span lengths from ``length_pmf`` (a mixture of :func:`_no_overlap_law`)."""
    out: dict[frozenset, float] = {}

    for lens, p in _length_tuples(length_pmf, n):
        for key, v in _no_overlap_law(size, lens, min_space).items():
            out[key] = out.get(key, 0.0) + p * v
    return out


def test_no_overlap_places_longest_spans_first():
    """no_overlap, uniform lengths in {1, 2} (L 1, mask_other 1), two spans in 6 frames, min_space 0: spans are
    placed longest first (§1.4.1); the law of the masked set by enumeration."""
    law = _no_overlap_mixture(6, 2, {1: 0.5, 2: 0.5}, 0)
    assert abs(sum(law.values()) - 1) < 1e-12
    rows = 8000
    m = compute_mask((rows, 6), 0.01, 1, selection="uniform", mask_other=1, min_masks=2, no_overlap=True,
                     min_space=0, require_same_masks=False, generator=torch.Generator().manual_seed(12))
    got: dict[frozenset, int] = {}
    for row in m.tolist():
        key = frozenset(i for i, v in enumerate(row) if v)
        got[key] = got.get(key, 0) + 1
    assert set(got) <= set(law), set(got) - set(law)
    for k, v in law.items():
        assert abs(got.get(k, 0) / rows - v) <= _tol(v, rows), (sorted(k), got.get(k, 0) / rows, v)


# --- contrastive logits and negatives: hand-computed numbers -----------------------------------------------------------

def test_zero_prediction_gives_zero_cosine_not_nan():
    """cosine similarity with eps 1e-8 (torch.cosine_similarity, as the reference): a zero vector has similarity 0.
    x = [(0,0), (1,0)], y = [(1,0), (0,1)], negative of frame 0 is target 1 and of frame 1 is target 0, temp 0.1:
    positives [0, 0], negatives [cos(0, y1), cos(x1, y0)] / 0.1 = [0, 10]."""
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    idx = torch.tensor([[[1], [0]]])
    expected = torch.tensor([[[0.0, 0.0]], [[0.0, 10.0]]])
    for fp32 in (False, True):
        got = contrastive_logits_from_indices(x, y, idx, 1, 0.1, fp32=fp32)
        assert torch.isfinite(got).all(), got
        assert torch.allclose(got, expected, atol=1e-5), got
    got = contrastive_logits(x, y, gather_negatives(y, idx), 0.1)
    assert torch.allclose(got, expected, atol=1e-5), got


def test_only_negatives_equal_to_the_positive_in_every_feature_get_minus_inf():
    """x = y = (1, 0); negatives (1, 1) (shares one feature), (1, 0) (identical), (0, 1): temp 0.1 ->
    [10, cos 45 deg / 0.1 = 7.0711, -inf, 0]."""
    x = torch.tensor([[[1.0, 0.0]]])
    y = torch.tensor([[[1.0, 0.0]]])
    negs = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]).view(3, 1, 1, 2)
    got = contrastive_logits(x, y, negs, 0.1).view(-1).tolist()
    assert got[0] == pytest.approx(10.0, abs=1e-5)
    assert got[1] == pytest.approx(10.0 / math.sqrt(2.0), abs=1e-4)
    assert got[2] == float("-inf")
    assert got[3] == pytest.approx(0.0, abs=1e-6)
    # the index path, same numbers: a table of 4 targets, frame 0 (target (1, 0)) takes targets 1, 2, 3 as
    # cross-sample columns (target 2 duplicates the positive)
    y4 = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    x4 = torch.tensor([[[1.0, 0.0]] * 4])
    idx = torch.tensor([[[1, 2, 3]] * 4])
    got = contrastive_logits_from_indices(x4, y4, idx, 0, 0.1)[:, 0, 0].tolist()
    assert got[1] == pytest.approx(10.0 / math.sqrt(2.0), abs=1e-4)
    assert got[2] == float("-inf") and got[3] == pytest.approx(0.0, abs=1e-6)


def test_within_utterance_negatives_need_two_masked_frames():
    """One masked frame has no other frame of its utterance to draw from: a ValueError naming the requirement."""
    with pytest.raises(ValueError, match="at least 2 masked frames"):
        sample_negative_indices(2, 1, 3, generator=torch.Generator().manual_seed(0))
    assert sample_negative_indices(2, 2, 3, generator=torch.Generator().manual_seed(0)).shape == (2, 2, 3)


def test_no_overlap_with_variable_span_lengths_does_not_crash():
    """Spans of length 3, 3, 2 can leave, after the first 3, a free part of exactly 3 frames; it has non-zero weight
    (3 >= 3 + min_space 0) and its only start is s: the reference draws from the empty range [s, s) and crashes
    (185 of 200 seeds with uniform lengths did). Ours places the span there; every utterance gets masked frames."""
    for seed in range(50):
        for selection, other in (("uniform", 2), ("normal", 1), ("poisson", 0)):
            m = compute_mask((8, 40), 0.65, 4, selection=selection, mask_other=other, no_overlap=True, min_space=0,
                             require_same_masks=False, generator=torch.Generator().manual_seed(seed))
            assert m.shape == (8, 40) and m.any(1).all()


def test_minus_inf_lands_on_the_right_utterance_and_frame_when_batch_equals_frames():
    """B = M = 2 (a square B x M layout, where swapped axes would not fail on shape). x = (1, 0) everywhere,
    y = [[(1,0), (0,1)], [(0,1), (1,1)]], one cross-sample negative each: (0,0) <- target 3 = (1,1);
    (0,1) <- target 2 = (0,1), equal to its positive -> -inf; (1,0) <- target 0 = (1,0); (1,1) <- target 0.
    temp 0.1: positives [[10, 0], [0, 7.0711]], negatives [[7.0711, -inf], [10, 10]]."""
    x = torch.tensor([[[1.0, 0.0]] * 2] * 2)
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]])
    idx = torch.tensor([[[3], [2]], [[0], [0]]])
    r = 10.0 / math.sqrt(2.0)
    pos = torch.tensor([[10.0, 0.0], [0.0, r]])
    neg = torch.tensor([[r, float("-inf")], [10.0, 10.0]])
    for got in (contrastive_logits_from_indices(x, y, idx, 0, 0.1),
                contrastive_logits(x, y, gather_negatives(y, idx), 0.1)):
        assert got.shape == (2, 2, 2)
        assert torch.allclose(got[0], pos, atol=1e-4), got[0]
        assert torch.equal(torch.isinf(got[1]), torch.isinf(neg)), got[1]
        assert torch.allclose(got[1][torch.isfinite(neg)], neg[torch.isfinite(neg)], atol=1e-4), got[1]
