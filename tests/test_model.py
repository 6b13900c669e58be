"""Model package behaviour against worked numbers from the facts sheet and hand-derived oracles."""

from __future__ import annotations

import math

import pytest
import torch

from wav2vec2 import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Model, parse_conv_layers, parse_hourglass, preset
from wav2vec2.criterion import ContrastiveCriterion, CtcCriterion, contrastive_accuracy
from wav2vec2.masking import compute_mask
from wav2vec2.negatives import contrastive_logits, contrastive_logits_from_indices, gather_negatives, sample_negative_indices
from wav2vec2.quantizer import GumbelVectorQuantizer

NO_DROP = dict(
    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
    dropout_input=0.0, dropout_features=0.0,
)


# --- configuration ----------------------------------------------------------------------------------------------------


def test_conv_spec_parsing_and_rejection():
    layers = parse_conv_layers("[(512,10,5)]+[(512,3,2)]*4+[(512,2,2)]+[(512,2,2)]")
    assert [k for _, k, _ in layers] == [10, 3, 3, 3, 3, 2, 2]
    assert math.prod(s for _, _, s in layers) == 320
    for bad in ("__import__('os').system('true')", "[(1,2)]", "[(512,10,5)]*'a'", "[x]", ""):
        with pytest.raises(ValueError):
            parse_conv_layers(bad)


def test_hourglass_spec():
    hg = parse_hourglass("[2,(8,4),2]")
    assert (hg.n_pre, hg.n_shortened, hg.factor, hg.n_post, hg.num_layers) == (2, 8, 4, 2, 12)
    assert parse_hourglass("") is None and parse_hourglass(None) is None
    for bad in ("[2,8,2]", "[2,(8,0),2]", "open('x')", "[2,(8,4)]"):
        with pytest.raises(ValueError):
            parse_hourglass(bad)
    with pytest.raises(ValueError):
        Wav2Vec2Config(hourglass_transformer="[2,(8,4),2]", layer_norm_first=True)


def test_parameter_counts_match_reference():
    # REFERENCE-QUIRKS §10: BASE pre-train 95,044,608; BASE CTC (V=32) 94,396,320; Hourglass naive adds nothing
    assert sum(p.numel() for p in Wav2Vec2Model(preset("base")).parameters()) == 95_044_608
    plain = preset("base", hourglass_transformer=None)
    assert sum(p.numel() for p in Wav2Vec2Model(plain).parameters()) == 95_044_608
    assert sum(p.numel() for p in Wav2Vec2ForCTC(plain, 32).parameters()) == 94_396_320


def test_state_dict_keys_are_fairseq_names():
    keys = set(Wav2Vec2Model(preset("base")).state_dict())
    for k in (
        "feature_extractor.conv_layers.0.0.weight",
        "feature_extractor.conv_layers.0.2.weight",
        "feature_extractor.conv_layers.6.0.weight",
        "post_extract_proj.weight",
        "quantizer.vars",
        "quantizer.weight_proj.weight",
        "project_q.weight",
        "mask_emb",
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv.0.weight_v",
        "encoder.layers.1.self_attn.q_proj.weight",
        "encoder.hourglass_layers.7.fc1.weight",
        "encoder.post_layers.1.final_layer_norm.bias",
        "encoder.layer_norm.weight",
        "layer_norm.weight",
        "final_proj.weight",
    ):
        assert k in keys, k
    sd = Wav2Vec2Model(preset("base")).state_dict()
    assert tuple(sd["encoder.pos_conv.0.weight_g"].shape) == (1, 1, 128)
    assert tuple(sd["encoder.pos_conv.0.weight_v"].shape) == (768, 48, 128)
    assert tuple(sd["quantizer.vars"].shape) == (1, 640, 128)
    large = set(Wav2Vec2Model(preset("large")).state_dict())
    assert "feature_extractor.conv_layers.3.2.1.weight" in large and "feature_extractor.conv_layers.3.0.bias" in large


@pytest.mark.parametrize("samples,frames", [(16000, 49), (32000, 99), (250000, 781), (320000, 999)])
def test_conv_output_lengths(samples, frames):
    m = Wav2Vec2Model(preset("tiny"))
    assert int(m.output_lengths(torch.tensor([samples]))[0]) == frames


def test_conv_output_lengths_match_real_forward():
    m = Wav2Vec2Model(preset("tiny")).eval()
    for n in (400, 401, 719, 720, 16000):
        feats, _ = m.feature_extractor(torch.zeros(1, n))
        assert feats.shape[-1] == int(m.output_lengths(torch.tensor([n]))[0])


# --- padding invariance ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hourglass", [None, "[1,(2,3),1]", "[1,(2,4),1]"])
@pytest.mark.parametrize("resample", ["naive", "linear"])
def test_batched_equals_one_by_one(hourglass, resample):
    torch.manual_seed(0)
    cfg = preset("tiny", hourglass_transformer=hourglass, hourglass_resample=resample, **NO_DROP)
    m = Wav2Vec2Model(cfg).eval()
    lengths = [16000, 12345, 9001, 4000]  # frame counts 49, 38, 27, 12: not divisible by 3 or 4
    x = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n)
    with torch.no_grad():
        batched, frames = m.extract_features(x, torch.tensor(lengths))
        for i, n in enumerate(lengths):
            alone, f = m.extract_features(x[i : i + 1, :n])
            assert alone.shape[1] == frames[i]
            assert (batched[i, : frames[i]] - alone[0]).abs().max() < 1e-5


def test_ctc_padded_frames_force_blank():
    m = Wav2Vec2ForCTC(preset("tiny", **NO_DROP), 10).eval()
    with torch.no_grad():
        logits, frames = m(torch.randn(2, 8000), torch.tensor([8000, 4000]))
    pad = logits[1, frames[1]:]
    assert torch.all(pad.argmax(-1) == 0)
    assert torch.isinf(pad[:, 1:]).all()


@pytest.mark.parametrize("mode", ["add", "set"])
def test_blank_weight_applies_at_inference_only(mode):
    """Q20 fixed (fairseq's semantics): blank_weight shifts (add) or replaces (set) the blank logit in eval mode only;
    training logits, hence the CTC loss, are those of blank_weight 0. Oracle: the same weights with blank_weight 0."""
    torch.manual_seed(0)
    plain = Wav2Vec2ForCTC(preset("tiny", mask_prob=0.0, mask_channel_prob=0.0, final_dropout=0.0, **NO_DROP), 10)
    weighted = Wav2Vec2ForCTC(plain.cfg.replace(blank_weight=3.0, blank_mode=mode), 10)
    weighted.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 6000])
    for training in (True, False):
        plain.train(training)
        weighted.train(training)
        ref, frames = plain(x, lengths)
        got, _ = weighted(x, lengths)
        if training:
            assert torch.equal(got, ref)
            continue
        valid = torch.arange(ref.shape[1])[None, :] < frames[:, None]
        expected_blank = ref[..., 0] + 3.0 if mode == "add" else torch.full_like(ref[..., 0], 3.0)
        assert torch.allclose(got[..., 0][valid], expected_blank[valid])
        assert torch.equal(got[..., 1:][valid], ref[..., 1:][valid])
        assert torch.equal(got[~valid], ref[~valid])  # padded frames stay forced to the blank


# --- Hourglass ---------------------------------------------------------------------------------------------------------


def test_hourglass_factor_one_is_residual_composition_of_plain_layers():
    """With factor 1 the shortening is the identity, so the encoder is pre -> (mid(x) + x) -> post."""
    torch.manual_seed(0)
    cfg = preset("tiny", hourglass_transformer="[1,(2,1),1]", **NO_DROP)
    enc = Wav2Vec2Model(cfg).eval().encoder
    x = torch.randn(2, 30, cfg.encoder_embed_dim)
    with torch.no_grad():
        got = enc(x)
        h = x + enc.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        h = enc.layer_norm(h)
        h = enc.layers[0](h)
        mid = enc.hourglass_layers[1](enc.hourglass_layers[0](h))
        h = enc.post_layers[0](mid + h)
    assert (got - h).abs().max() < 1e-5


def test_empty_hourglass_spec_is_the_plain_stack():
    """The scripts pass ``--hourglass_transformer ""`` to turn the Hourglass off: the same model as None."""
    torch.manual_seed(0)
    a = Wav2Vec2Model(preset("tiny", **NO_DROP)).eval()
    b = Wav2Vec2Model(preset("tiny", hourglass_transformer="", **NO_DROP)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8000)
    with torch.no_grad():
        assert torch.equal(a.extract_features(x)[0], b.extract_features(x)[0])


def test_hourglass_shortened_length_worked_number():
    # REFERENCE-QUIRKS §10: factor 4 with T=781 -> 3 padded frames, 196 shortened frames
    torch.manual_seed(0)
    cfg = preset("tiny", hourglass_transformer="[1,(1,4),1]", **NO_DROP)
    enc = Wav2Vec2Model(cfg).eval().encoder
    seen = []
    enc.hourglass_layers[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    with torch.no_grad():
        y = enc(torch.randn(1, 781, cfg.encoder_embed_dim))
    assert seen == [196] and y.shape[1] == 781


# --- masking -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [37, 120, 500])
def test_masked_fraction_at_recipe_sizes_matches_the_exact_law(size):
    """Pretraining masking (p 0.65, spans of 10, min_masks 2) at realistic lengths. Oracle, derived here from
    REFERENCE 1.4.1: n = floor(p T / L + U) spans (U uniform), at least min_masks, starts drawn without replacement
    from the N = T - L positions [0, T - L); frame j is unmasked iff none of the k_j starts covering it is drawn, so
    P(j masked | n) = 1 - C(N - k_j, n) / C(N, n). The empirical mean over 6,000 rows is within 5 standard errors."""
    import math

    p, span, min_masks, rows = 0.65, 10, 2, 6000
    x = p * size / span
    law = {math.floor(x): 1 - (x - math.floor(x)), math.floor(x) + 1: x - math.floor(x)}
    starts = size - span
    expected = 0.0
    for n, weight in law.items():
        n = max(min_masks, n)
        covering = [min(j, starts - 1) - max(0, j - span + 1) + 1 for j in range(size)]
        expected += weight * sum(1 - math.comb(starts - k, n) / math.comb(starts, n) for k in covering) / size
    g = torch.Generator().manual_seed(0)
    m = compute_mask((rows, size), p, span, lengths=torch.full((rows,), size), min_masks=min_masks,
                     require_same_masks=False, generator=g)
    per_row = m.float().mean(1)
    assert abs(per_row.mean().item() - expected) < 5 * per_row.std().item() / math.sqrt(rows)


def test_span_count_probabilistic_rounding_worked_number():
    # T = 781, p*T/span = 50.765 -> 51 spans w.p. 0.765, else 50. With span length 1 starts are distinct frames.
    g = torch.Generator().manual_seed(0)
    n = 4000
    m = compute_mask((n, 781), 50.765 / 781, 1, lengths=torch.full((n,), 781), require_same_masks=False, generator=g)
    counts = m.sum(1)
    assert set(counts.unique().tolist()) == {50, 51}
    assert abs((counts == 51).float().mean().item() - 0.765) < 0.03


def test_masks_respect_padding_and_equalise():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([200, 150, 60, 25])
    m = compute_mask((4, 200), 0.65, 10, lengths=lengths, min_masks=2, generator=g)
    counts = m.sum(1)
    assert torch.all(counts == counts[0]) and counts[0] > 0
    for i, n in enumerate(lengths.tolist()):
        assert not m[i, n:].any()


def test_channel_mask_may_draw_zero_spans():
    g = torch.Generator().manual_seed(0)
    m = compute_mask((3, 16), 0.01, 4, min_masks=0, generator=g)
    assert m.shape == (3, 16) and not m.any()


def test_mask_dropout_removes_rounded_fraction():
    g = torch.Generator().manual_seed(0)
    full = compute_mask((2, 100), 0.5, 5, min_masks=2, generator=torch.Generator().manual_seed(5))
    dropped = compute_mask((2, 100), 0.5, 5, min_masks=2, mask_dropout=0.25, generator=torch.Generator().manual_seed(5))
    assert (dropped & ~full).sum() == 0
    c = int(full[0].sum())
    assert int(dropped[0].sum()) == c - round(c * 0.25)
    del g


def test_mask_is_reproducible_from_generator():
    a = compute_mask((4, 100), 0.65, 10, min_masks=2, generator=torch.Generator().manual_seed(3))
    b = compute_mask((4, 100), 0.65, 10, min_masks=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# --- negatives and logits ----------------------------------------------------------------------------------------------


def test_contrastive_logits_by_hand():
    x = torch.tensor([[[1.0, 0.0]]])  # B=1, M=1, D=2
    y = torch.tensor([[[1.0, 1.0]]])
    negs = torch.tensor([[[[0.0, 2.0]]], [[[1.0, 1.0]]]])  # second negative equals the positive
    lg = contrastive_logits(x, y, negs, 0.1)
    assert lg.shape == (3, 1, 1)
    assert abs(lg[0, 0, 0].item() - (1 / math.sqrt(2)) / 0.1) < 1e-5
    assert abs(lg[1, 0, 0].item()) < 1e-6
    assert lg[2, 0, 0].item() == float("-inf")



@pytest.mark.parametrize("n_within,n_cross", [(7, 0), (5, 3), (0, 4)])
def test_contrastive_logits_from_indices_match_gathered_negatives(n_within, n_cross):
    g = torch.Generator().manual_seed(3)
    b, m, d = 3, 6, 5
    x = torch.randn(b, m, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(b, m, d, generator=g, dtype=torch.float64)
    y[1, 2] = y[1, 4]  # two identical targets: a negative equal to the positive must get -inf
    y[0, 1] = y[2, 3]  # the same across utterances (cross-sample negatives)
    y.requires_grad_(True)
    idx = sample_negative_indices(b, m, n_within, cross_sample_negatives=n_cross, generator=g)
    ref = contrastive_logits(x, y, gather_negatives(y, idx), 0.1)
    got = contrastive_logits_from_indices(x, y, idx, n_within, 0.1)
    assert torch.equal(torch.isinf(ref), torch.isinf(got)) and torch.isinf(got).any() == bool(torch.isinf(ref).any())
    finite = torch.isfinite(ref)
    torch.testing.assert_close(got[finite], ref[finite], rtol=1e-12, atol=1e-12)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((ref.masked_fill(~finite, 0) * w).sum(), (x, y))
    gb = torch.autograd.grad((got.masked_fill(~finite, 0) * w).sum(), (x, y))
    for a, c in zip(ga, gb):
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-12)


def test_contrastive_logits_from_indices_rejects_cross_utterance_index_in_within_columns():
    x = torch.randn(2, 3, 4)
    idx = torch.zeros(2, 3, 1, dtype=torch.long)  # utterance 1 pointing at utterance 0's frame
    with pytest.raises(RuntimeError):
        contrastive_logits_from_indices(x, x.clone(), idx, 1, 0.1)


# --- quantizer ---------------------------------------------------------------------------------------------------------


def test_gumbel_temperature_schedule_worked_numbers():
    q = GumbelVectorQuantizer(8, 4, (2.0, 0.5, 0.999995), 2, False, 8)
    for updates, expected in ((0, 2.0), (100000, 1.2131), (277259, 0.5), (10**6, 0.5)):
        q.set_num_updates(updates)
        assert abs(q.curr_temp - expected) < 1e-4
    large = GumbelVectorQuantizer(8, 4, (2.0, 0.1, 0.999995), 2, False, 8)
    large.set_num_updates(599_146)
    assert abs(large.curr_temp - 0.1) < 1e-6
    large.set_num_updates(590_000)
    assert large.curr_temp > 0.1


def test_quantizer_perplexity_bounds_and_eval_lookup():
    torch.manual_seed(0)
    q = GumbelVectorQuantizer(16, 5, (2.0, 0.5, 0.999995), 2, False, 6).eval()
    x = torch.randn(3, 40, 16)
    out = q(x, produce_targets=True)
    assert 2.0 <= float(out.code_perplexity) <= 10.0 and 2.0 <= float(out.prob_perplexity.detach()) <= 10.0
    # eval: each group picks its argmax entry, vectors concatenated
    logits = q.weight_proj(x.reshape(-1, 16)).view(-1, 2, 5)
    choice = logits.argmax(-1)
    book = q.vars.view(2, 5, 3)
    expected = torch.cat([book[0][choice[:, 0]], book[1][choice[:, 1]]], dim=-1).view(3, 40, 6)
    assert torch.allclose(out.x, expected)
    assert torch.equal(out.targets.view(-1, 2), choice)


def test_perplexity_of_uniform_and_collapsed_codes():
    from wav2vec2.quantizer import perplexity

    uniform = torch.full((10, 2, 4), 0.25)
    assert abs(float(perplexity(uniform)) - 8.0) < 1e-4
    collapsed = torch.zeros(10, 2, 4)
    collapsed[..., 0] = 1
    assert abs(float(perplexity(collapsed)) - 2.0) < 1e-4


# --- criteria ----------------------------------------------------------------------------------------------------------


def test_accuracy_counts_by_reference_rule():
    logits = torch.tensor([[3.0, 1.0, 2.0], [1.0, 3.0, 2.0], [1.0, 1.0, 1.0], [2.0, 2.0, 0.0]])
    # row 0 correct; row 1 wrong; row 2 all tie (argmax=argmin=0) -> not counted; row 3 argmax 0, argmin 2 -> correct
    assert contrastive_accuracy(logits) == (2, 4)


def test_pretraining_loss_composition_by_hand():
    torch.manual_seed(0)
    cfg = preset("tiny", **NO_DROP)
    m = Wav2Vec2Model(cfg).train()
    out = m(torch.randn(2, 8000), generator=torch.Generator().manual_seed(0))
    loss, s, log = ContrastiveCriterion((0.1, 10.0))(out)
    loss = loss.detach()
    ce = torch.nn.functional.cross_entropy(out.logits.detach().float(), torch.zeros(s, dtype=torch.long),
                                           reduction="sum")
    gv = cfg.latent_vars * cfg.latent_groups
    div = 0.1 * s * (gv - float(out.prob_perplexity[0].detach())) / gv
    pen = 10.0 * s * float(out.features_pen.detach())
    assert s == int(out.mask_indices.sum())
    assert abs(float(loss) - (float(ce) + div + pen)) < 1e-3 * float(loss)
    assert abs(log["loss_1"] - div) < 1e-3 and abs(log["loss_2"] - pen) < 1e-2


def test_sub_batches_have_own_masks_and_stats():
    torch.manual_seed(0)
    m = Wav2Vec2Model(preset("tiny", **NO_DROP)).train()
    out = m(torch.randn(4, 8000), sub_batch_sizes=torch.tensor([3, 1]), generator=torch.Generator().manual_seed(0))
    assert len(out.sub_batch_rows) == 2 and sum(out.sub_batch_rows) == out.logits.shape[0]
    assert out.prob_perplexity.shape == (2,)
    ContrastiveCriterion()(out)[0].backward()


def test_ctc_loss_matches_hand_computed_case():
    # T=2, V=2 (blank 0, symbol 1), target [1]: valid paths 11, 01, 10
    p = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    logits = p.log().unsqueeze(0)  # B x T x V (log-softmax of log-probs is the identity)
    crit = CtcCriterion(pad_index=-1, eos_index=-2)  # two-symbol vocabulary: no pad/eos entries
    loss, size, log = crit(logits, torch.tensor([2]), torch.tensor([[1]]), torch.tensor([1]))
    prob = 0.4 * 0.7 + 0.6 * 0.7 + 0.4 * 0.3
    assert abs(float(loss) + math.log(prob)) < 1e-5
    assert size == 1 and log["ntokens"] == 1


def test_ctc_criterion_excludes_pad_and_matches_torch_ctcloss():
    torch.manual_seed(0)
    logits = torch.randn(2, 12, 6)
    target = torch.tensor([[4, 5, 4, 1, 1], [5, 3, 4, 5, 4]])
    tl = torch.tensor([3, 5])
    loss, _, _ = CtcCriterion()(logits, torch.tensor([12, 10]), target, tl)
    ref = torch.nn.CTCLoss(blank=0, reduction="sum", zero_infinity=True)(
        logits.log_softmax(-1).transpose(0, 1), torch.tensor([4, 5, 4, 5, 3, 4, 5, 4]), torch.tensor([12, 10]), tl
    )
    assert abs(float(loss) - float(ref)) < 1e-4


def test_freeze_finetune_updates():
    cfg = preset("tiny", freeze_finetune_updates=3, **NO_DROP)
    m = Wav2Vec2ForCTC(cfg, 8).train()
    x = torch.randn(1, 4000)
    m.set_num_updates(2)
    m(x)[0].sum().backward()
    assert m.w2v_encoder.proj.weight.grad is not None
    assert all(p.grad is None for p in m.w2v_model.parameters())
    m.set_num_updates(3)
    m(x)[0].sum().backward()
    assert m.w2v_model.encoder.layers[0].fc1.weight.grad is not None


def test_feature_grad_mult_scales_extractor_gradient():
    torch.manual_seed(0)
    cfg = preset("tiny", feature_grad_mult=1.0, mask_prob=0.0, **NO_DROP)
    a = Wav2Vec2Model(cfg).train()
    b = Wav2Vec2Model(cfg.replace(feature_grad_mult=0.1)).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4000)
    for m in (a, b):
        m.extract_features(x)[0].sum().backward()
    ga = a.feature_extractor.conv_layers[0].conv.weight.grad
    gb = b.feature_extractor.conv_layers[0].conv.weight.grad
    assert torch.allclose(gb, 0.1 * ga, rtol=1e-4, atol=1e-7)


def test_bf16_autocast_forward_backward_on_cpu():
    torch.manual_seed(0)
    cfg = preset("tiny", fp32_pos_conv=True, fp32_cosine_sim=True, fp32_transformer_layernorm=True, fp32_conv_norms=True)
    m = Wav2Vec2Model(cfg).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(2, 8000), generator=torch.Generator().manual_seed(0))
        loss, _, log = ContrastiveCriterion()(out)
    loss.backward()
    assert math.isfinite(log["loss"])


# --- positional convolution: the inference FFT path -----------------------------------------------------------------


def _pos_conv(seed=0, channels=96, kernel=128, groups=16):
    from wav2vec2.encoder import WeightNormConv1d

    torch.manual_seed(seed)
    conv = WeightNormConv1d(channels, kernel, groups)
    with torch.no_grad():
        conv.bias.normal_()
        conv.weight_g.mul_(torch.rand_like(conv.weight_g) + 0.5)
    return conv


@pytest.mark.parametrize("batch,frames", [(1, 324), (3, 97), (2, 1), (1, 400), (2, 129)])
def test_pos_conv_fft_path_matches_grouped_conv1d(batch, frames):
    """Oracle: F.conv1d (grouped, padding K // 2) in float64. Lengths around the overlap-save block (129 outputs
    per 256-sample block), shorter than the kernel, and a single frame."""
    import torch.nn.functional as F

    conv = _pos_conv()
    x = torch.randn(batch, 96, frames)
    with torch.no_grad():
        assert conv._use_fft(x)
        got = conv(x)
        ref = F.conv1d(x.double(), conv.weight().double(), conv.bias.double(), padding=64, groups=16)
    assert got.shape == ref.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_pos_conv_fft_spectrum_follows_parameter_updates():
    import torch.nn.functional as F

    conv = _pos_conv()
    x = torch.randn(1, 96, 50)
    with torch.no_grad():
        conv(x)
        conv.weight_g.mul_(2.0)  # in place, as an optimizer step
        after_step = conv(x)
        ref = F.conv1d(x, conv.weight(), conv.bias, padding=64, groups=16)
    torch.testing.assert_close(after_step, ref, rtol=1e-4, atol=1e-4)
    other = _pos_conv(seed=1)
    conv.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(conv(x), other(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("between", ["nothing", "train_eval"])
def test_pos_conv_fft_spectrum_follows_the_trainers_fused_adamw_steps(between):
    """The trainer's optimizer on the CPU (fused AdamW) updates parameters in place WITHOUT bumping ``_version``:
    validation after a training step must still use the new weights (it used the first validation's spectrum,
    which made every later validation loss, and the best-checkpoint choice, wrong). Oracle: F.conv1d."""
    import torch.nn.functional as F

    from common.optim import OptimizerConfig, build_optimizer

    conv = _pos_conv()
    opt = build_optimizer(conv.parameters(), OptimizerConfig(lr=0.05, implementation="torch"))
    assert opt.implementation_name == "torch.AdamW(fused)"
    x = torch.randn(1, 96, 50)
    conv.eval()
    with torch.no_grad():
        conv(x)  # the spectrum is cached
    versions = (conv.weight_v._version, conv.weight_g._version)
    if between == "train_eval":
        conv.train()
    conv(torch.randn(1, 96, 50, requires_grad=True)).pow(2).sum().backward()
    opt.step()
    if between == "train_eval":
        conv.eval()
    with torch.no_grad():
        got = conv(x)
        ref = F.conv1d(x, conv.weight(), conv.bias, padding=64, groups=16)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    if between == "nothing":  # what made this necessary; if torch starts bumping it, the probe is merely redundant
        print("fused AdamW bumps _version:", versions != (conv.weight_v._version, conv.weight_g._version))


def test_pos_conv_trains_through_conv1d_and_autocast_keeps_its_dtype():
    conv = _pos_conv()
    x = torch.randn(2, 96, 40, requires_grad=True)
    assert not conv._use_fft(x)  # autograd: oneDNN's convolution and its backward
    conv(x).sum().backward()
    assert conv.weight_v.grad is not None and x.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = conv(x.detach())
    assert fast.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slow = conv(x)
    torch.testing.assert_close(fast.float(), slow.detach().float(), rtol=0.05, atol=0.05)


def test_pos_conv_bf16_on_cpu_is_right_for_few_channels_per_group():
    """torch's CPU BF16 grouped conv1d is wrong for 2-12 channels per group (kernel >= 16): those shapes run in
    float32. Oracle: float64 F.conv1d; BF16 rounding of the output only."""
    import torch.nn.functional as F

    conv = _pos_conv(channels=64, kernel=32)  # 4 channels per group
    x = torch.randn(2, 64, 60, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    ref = F.conv1d(x.detach().double(), conv.weight().detach().double(), conv.bias.detach().double(), padding=16,
                   groups=16)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.detach().double(), ref, rtol=0.02, atol=0.02 * float(ref.abs().max()))


@pytest.mark.parametrize("name", ["gelu", "gelu_fast"])
def test_activation_in_bf16_equals_float32_computation_bitwise(name):
    """fairseq computes GELU in float32 and casts back; ours skips the casts for bfloat16 inputs because torch's
    kernel computes in float32 internally. Oracle: the explicit casts, forward and backward, bit for bit."""
    import torch.nn.functional as F

    from wav2vec2.layers import get_activation

    act = get_activation(name)
    approx = "none" if name == "gelu" else "tanh"
    x = (torch.randn(64, 300, generator=torch.Generator().manual_seed(8)) * 3).bfloat16().requires_grad_(True)
    dy = torch.randn(64, 300, generator=torch.Generator().manual_seed(9)).bfloat16()
    got = act(x)
    ref = F.gelu(x.float(), approximate=approx).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, ref)
    assert torch.equal(torch.autograd.grad(got, x, dy)[0], torch.autograd.grad(ref, x, dy)[0])


# --- host-device synchronisation of the training step ------------------------------------------------------------


def test_masked_positions_gather_the_frames_of_boolean_indexing():
    """masked_positions + gather_frames == x[mask].view(B, m, C), values and gradients (boolean indexing reads the
    mask back to the host on a GPU, the gather does not)."""
    from wav2vec2.model import gather_frames, masked_positions

    g = torch.Generator().manual_seed(0)
    mask = compute_mask((3, 50), 0.5, 4, min_masks=2, generator=g)
    m = int(mask[0].sum())
    x = torch.randn(3, 50, 7, generator=g, requires_grad=True)
    ref = x[mask].view(3, m, 7)
    got = gather_frames(x, masked_positions(mask, m))
    assert torch.equal(got, ref)
    w = torch.randn(3, m, 7, generator=g)
    (gr,) = torch.autograd.grad((ref * w).sum(), x)
    (gg,) = torch.autograd.grad((got * w).sum(), x)
    assert torch.equal(gr, gg)


def test_quantizer_one_hot_equals_torch_one_hot():
    from wav2vec2.quantizer import _one_hot

    index = torch.randint(0, 9, (5, 2))
    assert torch.equal(_one_hot(index, 9, torch.float32), torch.nn.functional.one_hot(index, 9).float())


def test_pretraining_step_reads_nothing_back_between_kernels():
    """Forward, criterion and backward of a pretraining micro-batch make no scalar read (``.item()``, ``float()``,
    ``bool()`` of a tensor) and no data-dependent indexing: on a GPU each would stall the launch queue. The one
    read left is the masked-frame count, a ``tolist`` that sets the shapes. Oracle: torch's own dispatcher."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from wav2vec2.tasks import PretrainTask

    reads = []

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            boolean_index = name.startswith("index") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for a in args if isinstance(a, (list, tuple))
                for i in a)
            if name in ("_local_scalar_dense", "nonzero", "masked_select", "equal") or boolean_index:
                reads.append(name)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny")).train()
    batch = {"source": torch.randn(2, 24000), "lengths": torch.tensor([24000, 24000]), "padded": False}
    task = PretrainTask(ContrastiveCriterion(loss_weights=(0.1, 10.0)))
    with Reads():
        loss, _, log = task.train_step(model, batch, torch.Generator().manual_seed(0))
        loss.backward()
    assert reads == []
    assert isinstance(log["loss"], torch.Tensor)  # logs stay on the device until the metrics read them at once
    with Reads():  # the oracle sees reads: the old boolean indexing and a float() of a tensor
        x = torch.randn(2, 5)
        float(x[x > 0].sum())
    assert reads == ["index", "_local_scalar_dense"]


def test_loss_terms_logged_only_when_there_are_several():
    """REFERENCE 3.1 step 7: loss_0, loss_1, ... appear only when the loss has more than one term."""
    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny", **NO_DROP)).train()
    out = model(torch.randn(2, 16000), generator=torch.Generator().manual_seed(0))
    assert "loss_0" not in ContrastiveCriterion(loss_weights=(0.0, 0.0))(out)[2]
    keys = ContrastiveCriterion(loss_weights=(0.1, 0.0))(out)[2]
    assert "loss_0" in keys and "loss_1" in keys and "loss_2" not in keys


def test_log_keys_choose_the_quantizer_statistics_in_the_log():
    """--log_keys (default prob_perplexity code_perplexity temp): the keys the model outputs are copied into the log,
    others ignored (REFERENCE 3.1 step 7)."""
    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny", **NO_DROP)).train()
    out = model(torch.randn(2, 16000), generator=torch.Generator().manual_seed(0))
    stats = {"prob_perplexity", "code_perplexity", "temp"}
    assert stats <= set(ContrastiveCriterion()(out)[2])
    log = ContrastiveCriterion(log_keys=("temp", "no_such_key"))(out)[2]
    assert stats & set(log) == {"temp"} and "no_such_key" not in log
    assert log["temp"] == out.temp
    assert not stats & set(ContrastiveCriterion(log_keys=())(out)[2])


def test_finetuning_runs_an_unpadded_batch_without_lengths():
    """REFERENCE 1.4.1: without padding there is one span-count draw for the whole batch; with lengths the draws
    would be per utterance (then cut to the smallest). The task hands the model lengths only for padded batches,
    and the CTC loss is the same either way."""
    from wav2vec2.tasks import FinetuneTask

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("tiny", mask_prob=0.0, mask_channel_prob=0.0, final_dropout=0.0, **NO_DROP), 10)
    seen = []
    forward = model.forward
    model.forward = lambda x, lengths=None, **kw: (seen.append(lengths), forward(x, lengths, **kw))[1]
    task = FinetuneTask(CtcCriterion(), symbols=[str(i) for i in range(10)])
    source = torch.randn(2, 16000)
    target = torch.tensor([[4, 5, 6], [7, 8, 1]])
    batch = {"source": source, "lengths": torch.tensor([16000, 16000]), "target": target,
             "target_lengths": torch.tensor([3, 2])}
    losses = [task.train_step(model, dict(batch, padded=False), None)[0],
              task.train_step(model, batch, None)[0]]  # no flag: the lengths are inspected
    assert seen[0] is None and seen[1] is None
    padded = task.train_step(model, dict(batch, padded=True), None)[0]
    assert seen[2] is not None
    assert torch.allclose(losses[0], padded, rtol=1e-5) and torch.equal(losses[0], losses[1])


@pytest.mark.parametrize("masked_extractor", [True, False])
def test_finetuning_host_frame_lengths_equal_the_models(masked_extractor):
    """The CTC loss of a padded batch is the same with the task's host-computed frame lengths as with the lengths
    the model returns (masked extractor: mapped through each conv block; plain: computed after the stack)."""
    from wav2vec2.tasks import FinetuneTask

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("tiny", mask_prob=0.0, mask_channel_prob=0.0, **NO_DROP), 10)
    model.w2v_model.feature_extractor.mask_padding = masked_extractor
    lengths = torch.tensor([24000, 16001, 9999])
    batch = {"source": torch.randn(3, 24000), "lengths": lengths, "padded": True,
             "target": torch.tensor([[4, 5, 6], [7, 8, 1], [9, 1, 1]]), "target_lengths": torch.tensor([3, 2, 1])}
    _, out_lengths = model(batch["source"], lengths)
    assert out_lengths.tolist() == [74, 49, 30]  # floor((L - 400) / 320) + 1 for the 0.025 s / 0.02 s frames
    plain = FinetuneTask(CtcCriterion(), symbols=[str(i) for i in range(10)])
    host = FinetuneTask(CtcCriterion(), symbols=plain.symbols, frame_lengths=model.w2v_model.output_lengths)
    expected = plain.train_step(model, batch, None)[0]
    got = host.train_step(model, dict(batch, host_lengths=lengths), None)[0]
    assert torch.equal(got, expected)
