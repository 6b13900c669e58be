"""Mixed-precision audit (BF16 autocast on the CPU): what runs in float32, the --fp32_cosine_sim logits, CTC in BF16,
and the loss scaler after its minimum-scale stop. Oracles: float64 computations of the same (rounded) inputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from common.precision import DynamicLossScaler, MinimumLossScaleError
from wav2vec2.config import preset
from wav2vec2.criterion import ContrastiveCriterion, CtcCriterion
from wav2vec2.model import Wav2Vec2ForCTC, Wav2Vec2Model
from wav2vec2.negatives import contrastive_logits, contrastive_logits_from_indices, gather_negatives


def _near_parallel(seed=0, b=2, m=6, d=16):
    """bf16 predictions and targets whose cosine similarities lie near 1 (logits near 1 / 0.1 = 10, where bf16 steps
    are 0.0625), as after the first updates of a pretraining run."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, 1, d, generator=g) + 0.1 * torch.randn(b, m, d, generator=g)  # the frames alike too
    x = (base + 0.05 * torch.randn(b, m, d, generator=g)).bfloat16()
    y = (base + 0.05 * torch.randn(b, m, d, generator=g)).bfloat16()
    return x, y


def _cos_oracle(x, y, negs, temp=0.1):
    t = torch.cat([y.unsqueeze(0), negs], 0).double()
    xd = x.double().unsqueeze(0)
    return (xd * t).sum(-1) / (xd.norm(dim=-1).clamp_min(1e-8) * t.norm(dim=-1).clamp_min(1e-8)) / temp


def test_fp32_cosine_sim_keeps_float32_logits_under_bf16_autocast():
    """--fp32_cosine_sim: the similarities and the division by logit_temp in float32, and the logits stay float32
    (cast back to BF16 they were up to 0.03 off and candidates tied with the positive)."""
    x, y = _near_parallel()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 5, (2, 6, 4), generator=g)
    idx = idx + (idx >= torch.arange(6).view(1, 6, 1)).long() + torch.arange(2).view(2, 1, 1) * 6
    negs = gather_negatives(y, idx)
    ref = _cos_oracle(x, y, negs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = contrastive_logits_from_indices(x, y, idx, 4, 0.1, fp32=True)
        b = contrastive_logits(x, y, negs, 0.1, fp32=True)
        low = contrastive_logits_from_indices(x, y, idx, 4, 0.1, fp32=False)
    fin = torch.isfinite(ref)
    assert ref[fin].min() > 8.0                                  # the regime where BF16 steps are 0.0625
    for got in (a, b):
        assert got.dtype == torch.float32
        assert (got.double() - ref)[fin].abs().max() < 1e-4
    assert low.dtype == torch.bfloat16 and (low.double() - ref)[fin].abs().max() > 5e-3  # the default: as reference


def test_model_logits_float32_with_fp32_cosine_sim_under_bf16():
    cfg = preset("tiny", fp32_cosine_sim=True)
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).train()
    wav = torch.randn(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(wav, generator=torch.Generator().manual_seed(0))
        loss, ss, log = ContrastiveCriterion()(out)
    assert out.logits.dtype == torch.float32 and loss.dtype == torch.float32 and math.isfinite(loss.item())


class _OpDtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.seen.setdefault(name, set()).add(t.dtype)
                break
        return out


def test_bf16_forward_fragile_ops_run_in_float32():
    """Under the trainer's BF16 autocast: quantizer softmax and perplexities, attention softmax (training, dropout),
    the contrastive log-softmax/NLL, features_pen and the CTC log-softmax/loss are float32; the transformer layer
    norms are float32 only with --fp32_transformer_layernorm (the reference's O2 runs them in BF16 otherwise)."""
    torch.manual_seed(0)
    wav = torch.randn(2, 8000)
    for flag in (False, True):
        model = Wav2Vec2Model(preset("tiny", fp32_transformer_layernorm=flag)).train()
        ln_dtypes = []
        for layer in model.encoder.layers:
            for ln in (layer.self_attn_layer_norm, layer.final_layer_norm):
                ln.register_forward_hook(lambda mod, inp, out: ln_dtypes.append(out.dtype))
        rec = _OpDtypes()
        with rec, torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(wav, generator=torch.Generator().manual_seed(0))
            ContrastiveCriterion()(out)
        # layers' LNs: float32 inside, cast back to the input dtype (BF16) as the reference's Fp32LayerNorm does
        assert set(ln_dtypes) == {torch.bfloat16}
        assert rec.seen["native_layer_norm"] == ({torch.bfloat16, torch.float32} if flag else {torch.bfloat16})
        for op in ("_softmax", "_log_softmax", "nll_loss_forward", "exp", "log"):
            assert rec.seen[op] == {torch.float32}, op
        assert out.features_pen.dtype == torch.float32 and out.prob_perplexity.dtype == torch.float32
    ctc = Wav2Vec2ForCTC(preset("tiny"), 32).train()
    rec = _OpDtypes()
    with rec, torch.autocast("cpu", dtype=torch.bfloat16):
        logits, fl = ctc(wav, torch.tensor([8000, 6000]))
        loss, _, _ = CtcCriterion()(logits, fl, torch.randint(4, 32, (2, 3)), torch.tensor([3, 3]))
    assert logits.dtype == torch.bfloat16
    assert rec.seen["_log_softmax"] == {torch.float32} and rec.seen["_ctc_loss"] == {torch.float32}


def test_ctc_in_bf16_matches_float64_oracle_and_zero_infinity():
    """CTC under BF16 autocast: blank 0, SUM, sample_size B, float32 log-softmax (oracle: float64 on the same
    BF16 logits); an impossible target (more labels than frames) gives 0 and finite zero gradients."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 12, 6, generator=g).bfloat16().requires_grad_(True)
    target = torch.tensor([[3, 4, 4, 1, 1], [5, 3, 4, 5, 4]])                   # pad 1
    tl = torch.tensor([3, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, ss, log = CtcCriterion()(logits, torch.tensor([12, 10]), target, tl)
    lp = F.log_softmax(logits.detach().double(), -1).transpose(0, 1)
    ref = F.ctc_loss(lp, torch.tensor([3, 4, 4, 5, 3, 4, 5, 4]), torch.tensor([12, 10]), tl, blank=0, reduction="sum")
    assert loss.dtype == torch.float32 and ss == 2 and log["ntokens"] == 8
    assert abs(loss.item() - ref.item()) < 1e-4 * ref.item()
    short = torch.randn(1, 3, 6, generator=g).bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = CtcCriterion()(short, torch.tensor([3]), torch.tensor([[3, 4, 5, 3]]), torch.tensor([4]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(short.grad.float()).all() and short.grad.abs().max() == 0


def test_overflow_after_minimum_scale_error_raises_it_again():
    """After the minimum-scale stop, a caller that catches it and meets another overflow gets the same error
    (it divided by zero: the stop had set last_rescale_iter to the current iteration)."""
    scaler = DynamicLossScaler(init_scale=4e-4, scale_window=10, min_loss_scale=1e-4)
    scaler.update(math.inf, 1)
    with pytest.raises(MinimumLossScaleError):
        scaler.update(math.inf, 2)
    with pytest.raises(MinimumLossScaleError) as exc:
        scaler.update(math.inf, 3)
    assert "update 3" in str(exc.value) and scaler.loss_scale == 2e-4
