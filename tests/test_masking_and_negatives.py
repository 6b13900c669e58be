"""Span masking, channel masking, negative sampling and LayerDrop against independent oracles.

Oracles: the reference algorithm (REFERENCE.md §1.4.1, §1.4.2, §1.6, LayerDrop in §1.8) re-derived here by
brute-force enumeration with exact fractions, hand invariants of the algorithm's output, and frequency checks
whose tolerances come from the binomial sampling error (5 standard deviations; every draw uses a fixed seed, so
the tests are deterministic). Nothing is compared with a formula or helper taken from the module under test.
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations

import pytest
import torch

from wav2vec2 import Wav2Vec2Model, preset
from wav2vec2.masking import compute_mask
from wav2vec2.negatives import sample_negative_indices

NO_DROP = dict(
    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
    dropout_input=0.0, dropout_features=0.0,
)


def _binomial_tol(p: float, n: int, sigmas: float = 5.0) -> float:
    """Allowed |empirical frequency - p| for n independent Bernoulli(p) draws (exactly 0 when p is 0 or 1)."""
    return sigmas * math.sqrt(p * (1.0 - p) / n)


def _runs(row: list[bool]) -> list[tuple[int, int]]:
    """Maximal runs of True as (start, length)."""
    runs, start = [], None
    for i, v in enumerate(row + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


# --- span masking: exact per-position probabilities --------------------------------------------------------------------


def _reference_static_mask_law(size: int, t: int, mask_length: int, n_law: list[tuple[int, Fraction]]):
    """Exact law of fairseq's overlapping static-span mask of one utterance, re-derived from REFERENCE.md §1.4.1:
    for span count n (with probability p_n): min_len = mask_length, and if size - min_len <= n then
    min_len = size - n - 1; the n starts are distinct and uniform over [0, size - min_len) (every n-subset equally
    likely); each start s covers s .. s + mask_length - 1, indices >= size dropped.
    Returns (P(frame p masked) for p < t, P(number of masked frames = k))."""
    per_pos = [Fraction(0)] * t
    count_law: dict[int, Fraction] = {}
    for n, p_n in n_law:
        min_len = mask_length
        if size - min_len <= n:
            min_len = size - n - 1
        subsets = list(combinations(range(size - min_len), n))
        for starts in subsets:
            covered = {s + i for s in starts for i in range(mask_length) if s + i < size}
            w = p_n / len(subsets)
            for pos in covered:
                per_pos[pos] += w
            count_law[len(covered)] = count_law.get(len(covered), Fraction(0)) + w
    return per_pos, count_law


@pytest.mark.parametrize(
    "t,size,mask_prob,mask_length,min_masks,n_law",
    [
        # 0.5 * 12 / 3 = 2 exactly: always 2 spans, starts a uniform 2-subset of [0, 9)
        (12, 12, 0.5, 3, 0, [(2, Fraction(1))]),
        # padded to 9 valid frames: 0.5 * 9 / 3 = 1.5 -> 1 or 2 spans with probability 1/2 each, starts in [0, 6)
        (12, 9, 0.5, 3, 0, [(1, Fraction(1, 2)), (2, Fraction(1, 2))]),
        # 0.1 * 5 / 3 < 1 -> min_masks = 2 spans; size - 3 <= 2 so min_len = 5 - 2 - 1 = 2: starts in [0, 3)
        (5, 5, 0.1, 3, 2, [(2, Fraction(1))]),
    ],
)
def test_static_span_mask_matches_exact_reference_law(t, size, mask_prob, mask_length, min_masks, n_law):
    per_pos, count_law = _reference_static_mask_law(size, t, mask_length, n_law)
    if (t, size) == (5, 5):  # by hand: start pairs {0,1} -> 0..3, {0,2} -> 0..4, {1,2} -> 1..4
        assert per_pos == [Fraction(2, 3), 1, 1, 1, Fraction(2, 3)]
        assert count_law == {4: Fraction(2, 3), 5: Fraction(1, 3)}
    if (t, size) == (12, 12):  # the last frame would need a start at 9 = size - mask_length, never drawn
        assert per_pos[11] == 0 and per_pos[10] == Fraction(8, 36)
    n = 20000
    lengths = None if size == t else torch.full((n,), size)
    m = compute_mask((n, t), mask_prob, mask_length, lengths=lengths, min_masks=min_masks,
                     require_same_masks=False, generator=torch.Generator().manual_seed(11))
    assert m.shape == (n, t)
    freq = m.double().mean(0).tolist()
    for pos in range(t):
        p = float(per_pos[pos])
        assert abs(freq[pos] - p) <= _binomial_tol(p, n), (pos, freq[pos], p)
    counts = torch.bincount(m.sum(1), minlength=t + 1).tolist()
    for k in range(t + 1):
        p = float(count_law.get(k, Fraction(0)))
        assert abs(counts[k] / n - p) <= _binomial_tol(p, n), (k, counts[k] / n, p)


def test_static_spans_never_start_past_size_minus_mask_length_minus_one():
    """Hand invariant of the reference (starts from [0, size - mask_length)): with one span of length 4 per
    utterance, every masked run is exactly 4 frames starting at <= size - 5, so the last valid frame is never
    masked, for every utterance length of a padded batch."""
    n, t = 4000, 16
    lengths = torch.tensor([16, 13, 9, 6]).repeat(n // 4)
    # mask_prob * size / 4 < 1 for every size: n = max(min_masks, 0 or 1) = 1 span
    m = compute_mask((n, t), 0.2, 4, lengths=lengths, min_masks=1, require_same_masks=False,
                     generator=torch.Generator().manual_seed(2))
    first_start = {}
    for row, size in zip(m.tolist(), lengths.tolist()):
        runs = _runs(row)
        assert len(runs) == 1 and runs[0][1] == 4, runs
        assert runs[0][0] <= size - 5, (size, runs)
        first_start.setdefault(size, set()).add(runs[0][0])
    # and every allowed start does occur (uniform over size - 4 values, 1000 draws each)
    for size, starts in first_start.items():
        assert starts == set(range(size - 4)), (size, sorted(starts))


# --- no_overlap / min_space --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_space", [1, 3])
def test_no_overlap_spans_are_separate_runs_with_min_space_gaps(min_space):
    """Non-overlapping mode (REFERENCE.md §1.4.1): 0.25 * 320 / 10 = 8 spans exactly, all of which fit in 320 frames,
    so every row has exactly 8 runs of exactly 10 frames and every gap between two runs is >= min_space (a put-back
    part ends min_space frames before the span, the right part starts min_space frames after it)."""
    b, t, length = 300, 320, 10
    m = compute_mask((b, t), 0.25, length, no_overlap=True, min_space=min_space, require_same_masks=False,
                     generator=torch.Generator().manual_seed(4))
    smallest_gap = t
    for row in m.tolist():
        runs = _runs(row)
        assert len(runs) == 8, runs
        assert all(r == length for _, r in runs), runs
        gaps = [s2 - (s1 + l1) for (s1, l1), (s2, _) in zip(runs, runs[1:])]
        assert all(g >= min_space for g in gaps), (min_space, gaps)
        smallest_gap = min(smallest_gap, *gaps)
    # the bound is attained: spans do get placed as close as allowed
    assert smallest_gap == min_space


# --- channel masking in the model --------------------------------------------------------------------------------------


def _normal_round_law(mean: float, std: float, k: int) -> float:
    """P(max(1, round(N(mean, std))) = k)."""
    cdf = lambda x: 0.5 * (1.0 + math.erf((x - mean) / (std * math.sqrt(2.0))))  # noqa: E731
    return cdf(k + 0.5) - (0.0 if k == 1 else cdf(k - 0.5))


@pytest.mark.parametrize("no_overlap", [False, True])
@pytest.mark.parametrize("selection, other, law", [
    ("uniform", 2, lambda k: 1 / 19 if 2 <= k <= 20 else 0.0),            # integers uniform in [other, 2 L]
    ("normal", 3, lambda k: _normal_round_law(10, 3, k)),                    # round(N(L, other)), at least 1
    ("poisson", 0, lambda k: math.exp(k * math.log(10) - 10 - math.lgamma(k + 1))),  # Poisson(L)
])
def test_span_length_selection_follows_the_reference_law(selection, other, law, no_overlap):
    """REFERENCE 1.4.1's span-length draws (``--mask_selection``). With p T / L = 1 every row gets exactly one span,
    which fits inside the utterance, so its masked count is the span's length: the histogram over 20,000 rows
    matches the law within 5 binomial standard deviations per length."""
    rows, t, span = 20000, 200, 10
    mask = compute_mask((rows, t), span / t, span, lengths=torch.full((rows,), t), selection=selection,
                        mask_other=other, no_overlap=no_overlap, require_same_masks=False,
                        generator=torch.Generator().manual_seed(5))
    counts = torch.bincount(mask.sum(1), minlength=t + 1).tolist()
    common = [k for k in range(1, t + 1) if law(k) * rows >= 10]  # the rest, the law's far tails, checked together
    for k in common:
        assert abs(counts[k] / rows - law(k)) <= _binomial_tol(law(k), rows), (k, counts[k], law(k))
    tail = 1.0 - sum(law(k) for k in common)
    assert abs((rows - sum(counts[k] for k in common)) / rows - tail) <= _binomial_tol(tail, rows) + 3 / rows


def _encoder_inputs(model: Wav2Vec2Model, wave: torch.Tensor, seed: int) -> torch.Tensor:
    """The features the encoder receives (after masking) in a training-mode masked forward."""
    seen = []
    handle = model.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            model.extract_features(wave, mask=True, generator=torch.Generator().manual_seed(seed))
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def _channel_pair(**overrides):
    cfg = preset("tiny", mask_channel_length=9, **{**NO_DROP, **overrides})  # C = 144
    torch.manual_seed(0)
    masked = Wav2Vec2Model(cfg).train()
    plain = Wav2Vec2Model(cfg.replace(mask_channel_prob=0.0, mask_prob=0.0)).train()
    plain.load_state_dict(masked.state_dict())
    return masked, plain


def test_channel_mask_zeroes_whole_channels_and_leaves_the_rest():
    """Time masking off, mask_channel_prob 0.125, length 9, C = 144: 0.125 * 144 / 9 = 2 spans per utterance
    (REFERENCE.md §1.4.2: channel mask with min_masks 0, zeroed over all time steps). Oracle: a model with the same
    weights and no masking. Masked channels are exactly zero at every frame, the others bit-identical; the masked
    set of one utterance is the union of 2 distinct length-9 spans (10..18 channels: one run, or two runs of 9);
    in a batch every utterance keeps the same count (equalisation) but draws its own channels."""
    masked, plain = _channel_pair(mask_prob=0.0, mask_channel_prob=0.125)
    torch.manual_seed(1)
    wave = torch.randn(3, 4000)
    ref = _encoder_inputs(plain, wave, 0)
    assert (ref != 0).all()  # a zero in the oracle would be ambiguous
    batch_sets = []
    for seed in range(6):
        for rows in (slice(0, 1), slice(0, 3)):
            x = _encoder_inputs(masked, wave[rows], seed)
            r = ref[rows]
            zero = (x == 0).all(dim=1)  # B x C: channel zero at every frame
            changed = (x != r).any(dim=1)
            assert torch.equal(zero, changed)  # what changed is exactly what is zeroed
            assert torch.equal(x[~zero[:, None, :].expand_as(x)], r[~zero[:, None, :].expand_as(r)])
            counts = zero.sum(1).tolist()
            assert len(set(counts)) == 1 and 10 <= counts[0] <= 18, counts
            if rows.stop == 1:
                runs = _runs(zero[0].tolist())
                assert (len(runs) == 1 and 10 <= runs[0][1] <= 18) or [l for _, l in runs] == [9, 9], runs
            else:
                batch_sets.append([tuple(zero[i].nonzero().flatten().tolist()) for i in range(3)])
    assert any(len(set(sets)) > 1 for sets in batch_sets)  # per-utterance channel draws


@pytest.mark.parametrize("before", [False, True])
def test_channel_mask_order_relative_to_time_mask(before):
    """REFERENCE.md §1.4.2: by default channels are zeroed after time masking (so also on the mask_emb frames);
    with mask_channel_before they are zeroed first and the time-masked frames then hold the whole mask_emb.
    Oracle: the same weights without masking. Time-masked frames are those that differ from the oracle in a
    channel that is not zero; the masked channels are those zero at every other frame."""
    masked, plain = _channel_pair(mask_prob=0.65, mask_length=2, mask_channel_prob=0.125, mask_channel_before=before)
    torch.manual_seed(1)
    wave = torch.randn(2, 4000)
    ref = _encoder_inputs(plain, wave, 0)
    x = _encoder_inputs(masked, wave, 3)
    emb = masked.mask_emb.detach()
    assert (ref != 0).all() and (emb != 0).all()
    time_masked = ((x != ref) & (x != 0)).any(-1)  # B x T
    counts = time_masked.sum(1).tolist()
    assert counts[0] == counts[1] and 0 < counts[0] < x.shape[1]  # equal counts (require_same_masks)
    for i in range(2):
        tm = time_masked[i]
        chan = (x[i][~tm] == 0).all(0)
        keep = ~chan
        assert chan.any()
        assert torch.equal(x[i][~tm][:, keep], ref[i][~tm][:, keep])
        if before:
            assert torch.equal(x[i][tm], emb.expand(int(tm.sum()), -1))
        else:
            assert torch.equal(x[i][tm][:, keep], emb[keep].expand(int(tm.sum()), -1))
            assert (x[i][tm][:, chan] == 0).all()


# --- negatives ---------------------------------------------------------------------------------------------------------


def test_cross_sample_negatives_uniform_over_all_other_targets_of_the_batch():
    """REFERENCE.md §1.6 (with Q14 fixed, the positive itself excluded): the cross-sample negatives of target
    (b, j) are uniform over the B*M - 1 other flat indices, including other utterances' frames."""
    b, m, k = 3, 5, 14000
    idx = sample_negative_indices(b, m, 0, cross_sample_negatives=k, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (b, m, k)
    total = b * m
    p = 1.0 / (total - 1)
    tol = _binomial_tol(p, k)
    chi2 = 0.0
    for u in range(b):
        for j in range(m):
            counts = torch.bincount(idx[u, j], minlength=total).double() / k
            assert counts.numel() == total  # nothing out of range
            pos = u * m + j
            assert counts[pos] == 0
            others = torch.cat([counts[:pos], counts[pos + 1:]])
            assert (others - p).abs().max() <= tol, (u, j, others)
            chi2 += float(((others * k - k * p) ** 2 / (k * p)).sum())
            assert (idx[u, j] // m != u).any()  # other utterances' targets do occur
    dof = b * m * (total - 2)
    assert chi2 <= dof + 6 * math.sqrt(2 * dof), (chi2, dof)


def test_within_utterance_negatives_uniform_over_the_other_frames_of_the_utterance():
    """REFERENCE.md §1.6: within-utterance negatives of (b, j) are uniform over the other M - 1 masked frames of
    utterance b (flat index b*M + i, i != j), with replacement."""
    b, m, k = 3, 6, 10000
    idx = sample_negative_indices(b, m, k, generator=torch.Generator().manual_seed(1))
    assert idx.shape == (b, m, k)
    p = 1.0 / (m - 1)
    tol = _binomial_tol(p, k)
    for u in range(b):
        for j in range(m):
            row = idx[u, j]
            assert ((row >= u * m) & (row < (u + 1) * m)).all()
            counts = torch.bincount(row - u * m, minlength=m).double() / k
            assert counts[j] == 0
            others = torch.cat([counts[:j], counts[j + 1:]])
            assert (others - p).abs().max() <= tol, (u, j, others)


# --- LayerDrop ---------------------------------------------------------------------------------------------------------


def _layerdrop_model(p: float = 0.5) -> Wav2Vec2Model:
    return Wav2Vec2Model(preset("tiny", **{**NO_DROP, "encoder_layerdrop": p, "encoder_layers": 8})).train()


def _kept_layers(model: Wav2Vec2Model, x: torch.Tensor) -> tuple[int, ...]:
    ran: list[int] = []
    handles = [layer.register_forward_hook(lambda mod, inp, out, i=i: ran.append(i))
               for i, layer in enumerate(model.encoder.layers)]
    try:
        with torch.no_grad():
            model.encoder(x)
    finally:
        for h in handles:
            h.remove()
    return tuple(ran)


_LD_X = torch.randn(1, 6, 144, generator=torch.Generator().manual_seed(0))


def _fresh_kept_layers(k: int) -> tuple[int, ...]:
    """Kept layers of a freshly built model (its own weights) set to update k, global RNG seeded to 0."""
    torch.manual_seed(100 + k)
    fresh = _layerdrop_model()
    fresh.set_num_updates(k)
    torch.manual_seed(0)
    return _kept_layers(fresh, _LD_X)


def test_layerdrop_decisions_vary_with_the_update_number():
    """Fresh models set to updates 1..6 (global RNG identical before each forward) do not all keep the same layers:
    the update number, not a fixed stream, drives the draws (8 layers at p = 0.5: 256 equally likely sets)."""
    assert len({_fresh_kept_layers(k) for k in range(1, 7)}) > 1


def test_layerdrop_decisions_do_not_depend_on_the_model_history():
    """A model with a different history (other updates, several forwards per update, other weights, heavy and
    differently seeded global RNG use) set to update k keeps exactly the layers a fresh model set to k keeps."""
    expected = {k: _fresh_kept_layers(k) for k in range(1, 7)}
    torch.manual_seed(7)
    used = _layerdrop_model()
    for k_prev in (3, 11, 2):
        used.set_num_updates(k_prev)
        for _ in range(2):
            _kept_layers(used, _LD_X)
        torch.rand(1000)
    for k in range(1, 7):
        used.set_num_updates(k)
        torch.manual_seed(1000 + k)
        assert _kept_layers(used, _LD_X) == expected[k], k


def test_layerdrop_decisions_do_not_depend_on_the_global_seed():
    """Setting the same update twice, with torch.manual_seed changed (and global draws made) in between, keeps
    the same layers."""
    model = _layerdrop_model()
    for k in range(1, 7):
        model.set_num_updates(k)
        torch.manual_seed(k)
        first = _kept_layers(model, _LD_X)
        model.set_num_updates(k)
        torch.manual_seed(500 + k)
        torch.rand(17)
        assert _kept_layers(model, _LD_X) == first, k


def test_layerdrop_keeps_each_layer_with_probability_one_minus_p():
    """REFERENCE.md §1.8: a layer runs iff a fresh uniform draw exceeds encoder_layerdrop: over 300 updates x 8
    layers the kept fraction is 1 - p = 0.7 within binomial error (and both outcomes occur for every layer)."""
    p = 0.3
    model = _layerdrop_model(p)
    x = torch.randn(1, 4, 144, generator=torch.Generator().manual_seed(0))
    per_layer = [0] * 8
    updates = 300
    for k in range(updates):
        model.set_num_updates(k)
        for i in _kept_layers(model, x):
            per_layer[i] += 1
    n = updates * 8
    assert abs(sum(per_layer) / n - (1 - p)) <= _binomial_tol(1 - p, n)
    assert all(0 < c < updates for c in per_layer)
    model.eval()
    assert _kept_layers(model, x) == tuple(range(8))  # eval: every layer runs
