"""Gumbel quantizer training path, feature penalty, per-sub-batch diversity and CTC edge cases against independent
oracles: Gumbel-max statistics (softmax of the logits), autograd of a hand-written straight-through Gumbel-softmax,
a float64 re-computation of the feature extractor with torch's functional ops, the perplexity formula by hand
(REFERENCE.md 1.5, 3.1; DEVIATIONS Q6) and torch.nn.CTCLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wav2vec2 import Wav2Vec2Model, preset
from wav2vec2.criterion import ContrastiveCriterion, CtcCriterion
from wav2vec2.quantizer import GumbelVectorQuantizer

NO_DROP = dict(
    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
    dropout_input=0.0, dropout_features=0.0,
)


# --- oracles ----------------------------------------------------------------------------------------------------------


def _features_oracle(model: Wav2Vec2Model, wave: torch.Tensor, lengths=None) -> torch.Tensor:
    """The conv feature extractor ("default" mode) recomputed in float64 with F.conv1d / F.group_norm / F.gelu from
    the model's parameters: B x T x E. With ``lengths`` the layer-0 GroupNorm statistics cover each utterance's valid
    frames only (masked extractor, DEVIATIONS Q12) and still normalise every frame; without, plain GroupNorm over the
    whole (padded) time axis, as the reference trains."""
    x = wave.double().unsqueeze(1)
    frames = None if lengths is None else lengths.clone()
    for i, block in enumerate(model.feature_extractor.conv_layers):
        conv = block.conv
        k, s = conv.kernel_size[0], conv.stride[0]
        x = F.conv1d(x, conv.weight.detach().double(), None if conv.bias is None else conv.bias.detach().double(),
                     stride=s)
        if frames is not None:
            frames = torch.div(frames - k, s, rounding_mode="floor") + 1
        if i == 0:
            norm = block.norm
            w, b = norm.weight.detach().double(), norm.bias.detach().double()
            if frames is None:
                x = F.group_norm(x, x.shape[1], w, b, eps=norm.eps)
            else:
                out = []
                for u in range(x.shape[0]):
                    valid = x[u, :, : int(frames[u])]
                    mean = valid.mean(-1, keepdim=True)
                    var = valid.var(-1, unbiased=False, keepdim=True)
                    out.append((x[u] - mean) / torch.sqrt(var + norm.eps) * w[:, None] + b[:, None])
                x = torch.stack(out)
        x = F.gelu(x)
    return x.transpose(1, 2)


def _prob_perplexity_oracle(logits: torch.Tensor) -> torch.Tensor:
    """REFERENCE 1.5 step 4: sum over groups of exp(entropy) of the frame-mean softmax (no noise, no temperature).
    logits: N x G x V."""
    avg = torch.softmax(logits, dim=-1).mean(0)
    return torch.exp(-(avg * torch.log(avg + 1e-7)).sum(-1)).sum()


# --- Gumbel quantizer, training path ----------------------------------------------------------------------------------


def _constant_logit_quantizer(logit_row: list[float], groups: int = 2) -> GumbelVectorQuantizer:
    """Every input row gets the same logits (zero projection weight, bias = the logits); code vector v of group g is
    the constant g * V + v, so the chosen entry can be read back from the quantized output."""
    v = len(logit_row)
    q = GumbelVectorQuantizer(4, v, (2.0, 0.5, 0.999995), groups, False, 2 * groups).train()
    with torch.no_grad():
        q.weight_proj.weight.zero_()
        q.weight_proj.bias.copy_(torch.tensor(logit_row).repeat(groups))
        q.vars.copy_(torch.arange(groups * v, dtype=torch.float32).view(1, -1, 1).expand_as(q.vars))
    return q


@pytest.mark.parametrize("num_updates", [0, 10**6])  # tau 2.0 and 0.5: the Gumbel-max argmax ignores tau
def test_gumbel_choices_follow_softmax_of_logits(num_updates):
    """Gumbel-max: argmax_v (l_v + g_v), g i.i.d. Gumbel(0, 1), picks v with probability softmax(l)_v, whatever the
    temperature. Oracle: softmax of the logits; tolerance 5 binomial standard deviations per code."""
    logit_row = [1.5, 0.5, 0.0, -1.0, 0.8]
    groups, v, n = 2, len(logit_row), 20000
    q = _constant_logit_quantizer(logit_row, groups)
    q.set_num_updates(num_updates)
    with torch.no_grad():
        out = q(torch.zeros(n, 4), generator=torch.Generator().manual_seed(1234))
    codes = out.x.view(n, groups, 2)[..., 0].round().long()  # g * V + chosen entry
    chosen = codes - torch.arange(groups)[None, :] * v
    assert chosen.min() >= 0 and chosen.max() < v
    draws = n * groups  # the groups are independent draws from the same distribution
    freq = torch.bincount(chosen.flatten(), minlength=v).double() / draws
    p = torch.softmax(torch.tensor(logit_row, dtype=torch.float64), 0)
    sd = torch.sqrt(p * (1 - p) / draws)
    assert torch.all((freq - p).abs() < 5 * sd), (freq, p)


@pytest.mark.parametrize("num_updates,tau", [(0, 2.0), (100000, 1.2131), (10**6, 0.5)])
def test_gumbel_straight_through_equals_hand_written_soft_sample(num_updates, tau):
    """Forward = the hard one-hot of argmax((l + g) / tau); backward = the gradient of the soft sample
    softmax((l + g) / tau), with the same Gumbel draws g = -log(u), u ~ Exp(1) drawn n x G x V in float32 from the
    generator (read from a clone of it). Oracle: autograd of the hand-written formula in float64."""
    n, dim, groups, v, d = 6, 16, 2, 5, 3
    g0 = torch.Generator().manual_seed(0)
    q = GumbelVectorQuantizer(dim, v, (2.0, 0.5, 0.999995), groups, False, groups * d).train()
    with torch.no_grad():  # logits of moderate size so that the soft sample is not saturated
        q.weight_proj.weight.copy_(0.3 * torch.randn(q.weight_proj.weight.shape, generator=g0))
        q.weight_proj.bias.copy_(0.3 * torch.randn(q.weight_proj.bias.shape, generator=g0))
    q.set_num_updates(num_updates)
    assert abs(q.curr_temp - tau) < 1e-4
    x = torch.randn(n, dim, generator=g0, requires_grad=True)
    upstream = torch.randn(n, groups * d, generator=g0)

    gen = torch.Generator().manual_seed(99)
    clone = torch.Generator()
    clone.set_state(gen.get_state())
    out = q(x, generator=gen)
    params = (x, q.weight_proj.weight, q.weight_proj.bias, q.vars)
    got = torch.autograd.grad((out.x * upstream).sum(), params)

    gumbel = -torch.log(torch.empty(n, groups, v).exponential_(generator=clone)).double()
    xd, w, b, book = (t.detach().double().requires_grad_(True) for t in params)
    logits = (xd @ w.T + b).view(n, groups, v)
    soft = torch.softmax((logits + gumbel) / q.curr_temp, dim=-1)
    hard = F.one_hot(soft.argmax(-1), v).double()
    assert torch.equal(soft.argmax(-1), (logits + gumbel).argmax(-1))
    sample = hard - soft.detach() + soft
    ref = torch.einsum("ngv,gvd->ngd", sample, book.view(groups, v, d)).reshape(n, groups * d)
    expected = torch.autograd.grad((ref * upstream.double()).sum(), (xd, w, b, book))

    # forward: exactly the code vectors of the hard choice
    torch.testing.assert_close(out.x.detach().double(), ref.detach(), rtol=0, atol=1e-6)
    assert not torch.equal(hard.argmax(-1), logits.argmax(-1))  # the noise changed at least one choice
    for a, e in zip(got, expected):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-6)
    assert expected[0].abs().max() > 1e-2  # the soft path carries a real gradient to the input


# --- feature penalty --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked_extractor,padded", [(False, False), (False, True), (True, True)])
def test_features_pen_is_mean_square_of_extractor_output(masked_extractor, padded):
    """REFERENCE 1.1 step 3: features_pen = mean over all B x T x E elements (padded frames included) of the squared
    extractor output, before the layer norm, in float32; the criterion adds loss_weights[1] * features_pen * S
    (3.1 step 6). Oracle: the extractor recomputed in float64 with torch's functional ops."""
    torch.manual_seed(0)
    cfg = preset("tiny", masked_feature_extractor=masked_extractor, **NO_DROP)
    model = Wav2Vec2Model(cfg).train()
    g = torch.Generator().manual_seed(3)
    wave = torch.randn(2, 8000, generator=g)
    lengths = torch.tensor([8000, 5000]) if padded else None
    if padded:
        wave[1, 5000:] = 0.0
    out = model(wave, lengths, generator=torch.Generator().manual_seed(0))
    feats = _features_oracle(model, wave, lengths if masked_extractor else None)
    pen = feats.pow(2).mean()
    assert out.features_pen.dtype == torch.float32
    torch.testing.assert_close(out.features_pen.detach().double(), pen, rtol=1e-5, atol=0)
    # the mean covers the padded frames too: over the valid frames only it would differ
    if padded:
        valid = int(model.output_lengths(torch.tensor([5000]))[0])
        valid_only = torch.cat([feats[0].flatten(), feats[1, :valid].flatten()]).pow(2).mean()
        assert abs(float(valid_only) - float(pen)) > 1e-2 * float(pen)

    w_pen = 7.5
    loss, s, log = ContrastiveCriterion((0.0, w_pen))(out)
    assert s == int(out.mask_indices.sum())
    term = w_pen * s * float(pen)
    assert abs(float(log["loss_1"]) - term) < 1e-5 * term
    ce = F.cross_entropy(out.logits.detach().double(), torch.zeros(s, dtype=torch.long), reduction="sum")
    assert abs(float(loss.detach()) - (float(ce) + term)) < 1e-5 * (float(ce) + term)


# --- diversity loss with concatenated sub-batches ---------------------------------------------------------------------


def test_diversity_loss_uses_each_sub_batch_perplexity():
    """DEVIATIONS Q6 (criterion docstring): with sub-batches, diversity = w_div * sum_s S_s * (GV - P_s) / GV with
    P_s the prob perplexity of sub-batch s's masked targets alone and S_s its masked-frame count; the logged
    perplexity is the mean over sub-batches. Oracle: P_s by hand from the float64 extractor, layer norm and
    quantizer projection at the model's masked frames."""
    torch.manual_seed(0)
    cfg = preset("tiny", **NO_DROP)
    model = Wav2Vec2Model(cfg).train()
    wave = torch.randn(4, 8000, generator=torch.Generator().manual_seed(5))
    sizes = [3, 1]
    out = model(wave, sub_batch_sizes=torch.tensor(sizes), generator=torch.Generator().manual_seed(0))
    w_div = 0.1
    loss, s, log = ContrastiveCriterion((w_div, 0.0))(out)

    feats = _features_oracle(model, wave)
    ln = model.layer_norm
    y_all = F.layer_norm(feats, (feats.shape[-1],), ln.weight.detach().double(), ln.bias.detach().double(), ln.eps)
    wp = model.quantizer.weight_proj
    gv = cfg.latent_groups * cfg.latent_vars
    ppls, rows = [], []
    start = 0
    for size in sizes:
        mask = out.mask_indices[start : start + size]
        y = y_all[start : start + size][mask]
        logits = (y @ wp.weight.detach().double().T + wp.bias.detach().double()).view(-1, cfg.latent_groups,
                                                                                      cfg.latent_vars)
        ppls.append(float(_prob_perplexity_oracle(logits)))
        rows.append(int(mask.sum()))
        start += size
    assert sum(rows) == s
    expected = w_div * sum(r * (gv - p) / gv for r, p in zip(rows, ppls))
    tol = 1e-5 * expected
    assert abs(float(log["loss_1"]) - expected) < tol
    ce = F.cross_entropy(out.logits.detach().double(), torch.zeros(s, dtype=torch.long), reduction="sum")
    assert abs(float(loss.detach()) - (float(ce) + expected)) < 1e-5 * (float(ce) + expected)
    torch.testing.assert_close(out.prob_perplexity.detach().double(), torch.tensor(ppls, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    assert abs(float(log["prob_perplexity"]) - sum(ppls) / len(ppls)) < 1e-5 * max(ppls)
    # the sub-batches' perplexities differ enough that one sub-batch's value for all would be seen
    assert w_div * rows[1] * abs(ppls[0] - ppls[1]) / gv > 100 * tol


# --- CTC ----------------------------------------------------------------------------------------------------------------


def test_ctc_infeasible_alignment_gives_zero_loss_and_finite_gradient():
    """zero_infinity (REFERENCE 3.2): one frame cannot emit two labels; that utterance's infinite loss becomes 0
    and its gradient 0, the feasible utterance is unaffected. Oracle: torch.nn.CTCLoss(zero_infinity=True,
    reduction='sum') on float32 log-softmax, values and gradients."""
    g = torch.Generator().manual_seed(0)
    crit = CtcCriterion()
    # alone: T = 1 frame, target of 2 labels
    logits = torch.randn(1, 1, 7, generator=g, requires_grad=True)
    loss, size, _ = crit(logits, torch.tensor([1]), torch.tensor([[4, 5]]), torch.tensor([2]))
    (grad,) = torch.autograd.grad(loss, logits)
    assert float(loss.detach()) == 0.0 and size == 1
    assert torch.isfinite(grad).all() and float(grad.abs().max()) == 0.0

    # in a batch with a feasible utterance
    logits = torch.randn(2, 6, 7, generator=g, requires_grad=True)
    out_lengths = torch.tensor([1, 6])
    target = torch.tensor([[4, 5, 1], [4, 6, 4]])
    tl = torch.tensor([2, 3])
    loss, size, _ = crit(logits, out_lengths, target, tl)
    (grad,) = torch.autograd.grad(loss, logits)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = torch.nn.CTCLoss(blank=0, reduction="sum", zero_infinity=True)(
        ref_logits.float().log_softmax(-1).transpose(0, 1), torch.tensor([4, 5, 4, 6, 4]), out_lengths, tl)
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) > 0
    assert abs(float(loss.detach()) - float(ref.detach())) < 1e-5 * float(ref.detach())
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    assert float(grad[0].abs().max()) == 0.0


@pytest.mark.parametrize("target,lengths", [
    ([[4, 5, 1], [6, 1, 1]], [2, 2]),  # one too many
    ([[4, 5, 1], [6, 1, 1]], [1, 1]),  # one too few
    ([[4, 5, 2], [6, 1, 1]], [3, 1]),  # the eos entry is not a target token
])
def test_ctc_rejects_target_lengths_that_disagree_with_target(target, lengths):
    """target_lengths must equal the count of non-pad, non-eos entries per row (REFERENCE 3.2 step 3)."""
    logits = torch.randn(2, 8, 7, generator=torch.Generator().manual_seed(0))
    crit = CtcCriterion()
    with pytest.raises(ValueError, match="target_lengths"):
        crit(logits, torch.tensor([8, 8]), torch.tensor(target), torch.tensor(lengths))
    # the agreeing lengths are accepted
    correct = [sum(1 for t in row if t not in (1, 2)) for row in target]
    loss, _, log = crit(logits, torch.tensor([8, 8]), torch.tensor(target), torch.tensor(correct))
    assert math.isfinite(float(loss)) and log["ntokens"] == sum(correct)


def test_a_single_loss_weight_applies_to_both_extra_terms():
    """REFERENCE 3.1 step 6: one ``loss_weights`` value is replicated over the extra losses (diversity and feature
    penalty, whose two-weight form the tests above check by hand); three values are refused."""
    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny", **NO_DROP)).train()
    out = model(torch.randn(2, 16000), generator=torch.Generator().manual_seed(0))
    one = ContrastiveCriterion(loss_weights=(0.5,))(out)
    two = ContrastiveCriterion(loss_weights=(0.5, 0.5))(out)
    assert torch.equal(one[0], two[0]) and set(one[2]) == set(two[2]) and "loss_2" in one[2]
    with pytest.raises(ValueError, match="1 or 2 values"):
        ContrastiveCriterion(loss_weights=(0.1, 10.0, 1.0))


@pytest.mark.parametrize("combine", [False, True])
def test_eval_lookup_by_hand(combine):
    """Eval mode: group g of each frame is the code vector argmax_v of its logits, from group g's own block of
    ``vars`` or, with ``combine_groups`` (fairseq: one codebook repeated over the groups), from the shared one."""
    torch.manual_seed(1)
    q = GumbelVectorQuantizer(16, 5, (2.0, 0.5, 0.999995), 2, combine, 6).eval()
    assert tuple(q.vars.shape) == ((1, 5, 3) if combine else (1, 10, 3))
    x = torch.randn(7, 16)
    logits = (x @ q.weight_proj.weight.T + q.weight_proj.bias).view(7, 2, 5)
    expected = torch.stack([
        torch.cat([q.vars[0, (0 if combine else 5 * g) + int(logits[i, g].argmax())] for g in range(2)])
        for i in range(7)])
    with torch.no_grad():
        assert torch.allclose(q(x).x, expected)
