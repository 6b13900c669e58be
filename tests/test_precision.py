"""Precision policy and dynamic loss scaler (REFERENCE.md §5.3; worked numbers of REFERENCE-QUIRKS §10)."""

import logging
import math

from common.lr_schedules import LRScheduleConfig, LRScheduler
from common.optim import OptimizerConfig, build_optimizer

import pytest
import torch

from common.optim import clip_grad_norm, scale_gradients
from common.precision import (
    DynamicLossScaler,
    MinimumLossScaleError,
    NoOpLossScaler,
    PrecisionPolicy,
    scale_window_for,
    set_tf32,
)


@pytest.mark.parametrize("w,u,expected", [(8, 1, 2048), (1, 8, 2048), (4, 2, 2048), (1, 64, 256), (1, 1, 16384)])
def test_scale_window(w, u, expected):
    assert scale_window_for(w, u) == expected


def test_policy_from_flags():
    assert PrecisionPolicy.from_flags().mode == "tf32"
    assert PrecisionPolicy.from_flags(cpu=True).mode == "fp32"
    assert PrecisionPolicy.from_flags(bf16=True, cpu=True).autocast_dtype == torch.bfloat16
    with pytest.raises(ValueError):
        PrecisionPolicy.from_flags(fp16=True, bf16=True)
    with pytest.raises(ValueError):
        PrecisionPolicy(mode="fp16", device="cpu")
    assert PrecisionPolicy("fp16", "cuda").uses_loss_scaling
    assert PrecisionPolicy("bf16", "cpu").uses_loss_scaling               # reference: bf16 uses the scaler too
    assert not PrecisionPolicy("bf16", "cpu", bf16_loss_scaling=False).uses_loss_scaling
    assert not PrecisionPolicy("fp32", "cpu").uses_loss_scaling


def test_bf16_autocast_on_cpu_and_fp32_region():
    pol = PrecisionPolicy("bf16", "cpu")
    a = torch.randn(4, 4)
    with pol.autocast():
        assert (a @ a).dtype == torch.bfloat16
        with pol.fp32_region():
            assert (a @ a).dtype == torch.float32
    with PrecisionPolicy("fp32", "cpu").autocast():
        assert (a @ a).dtype == torch.float32


def test_tf32_switches_restore():
    prev = set_tf32(True)
    try:
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        PrecisionPolicy("fp32", "cpu").apply_tf32()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        set_tf32(prev["matmul"], matmul=prev["matmul"], cudnn=prev["cudnn"])


def test_make_loss_scaler_uses_reference_window_and_init():
    s = PrecisionPolicy("fp16", "cuda").make_loss_scaler(world_size=8, update_freq=1)
    assert isinstance(s, DynamicLossScaler) and s.scale_window == 2048 and s.loss_scale == 128.0
    assert s.min_loss_scale == 1e-4
    assert isinstance(PrecisionPolicy("fp32", "cpu").make_loss_scaler(), NoOpLossScaler)


def test_injected_inf_gradient_skips_step_and_halves_scale(caplog):
    scaler = DynamicLossScaler(init_scale=128.0, scale_window=2048)
    p = torch.nn.Parameter(torch.ones(3))
    loss = scaler.scale((p * torch.tensor([1.0, 2.0, 3.0])).sum())
    loss.backward()
    p.grad[1] = float("inf")                           # injected overflow
    scale_gradients([p], 1.0 / scaler.loss_scale)  # sample size 1
    norm = clip_grad_norm([p], 25.0)
    with caplog.at_level(logging.WARNING, logger="common.precision"):
        out = scaler.update(norm, update=7)
    assert out.skipped and out.update == 7
    assert scaler.loss_scale == 64.0 and out.loss_scale == 64.0
    assert "update 7" in out.reason and "64" in out.reason
    assert "update 7" in caplog.text
    # NaN is an overflow too
    assert scaler.update(float("nan"), update=8).skipped and scaler.loss_scale == 32.0


def test_growth_after_window():
    scaler = DynamicLossScaler(init_scale=4.0, scale_window=3)
    # iter 0,1 clean (0-(-1)=1, 2 not multiples of 3); iter 2: 3 % 3 == 0 -> double
    assert [scaler.update(1.0, k).loss_scale for k in (1, 2, 3)] == [4.0, 4.0, 8.0]
    # overflow at iter 3 -> 4; the next doubling comes 3 clean iterations later (iter 6: 6-3 = 3)
    assert scaler.update(math.inf, 4).loss_scale == 4.0
    assert [scaler.update(1.0, k).loss_scale for k in (5, 6, 7)] == [4.0, 4.0, 8.0]


def test_reference_window_first_doubling_after_2048_clean_updates():
    scaler = DynamicLossScaler(init_scale=128.0, scale_window=scale_window_for(8, 1))
    for k in range(1, 2048):
        scaler.update(1.0, k)
    assert scaler.loss_scale == 128.0
    scaler.update(1.0, 2048)
    assert scaler.loss_scale == 256.0


def test_min_scale_stop_message_names_update_and_scale():
    scaler = DynamicLossScaler(init_scale=4e-4, scale_window=10, min_loss_scale=1e-4)
    assert scaler.update(math.inf, 11).loss_scale == 2e-4
    with pytest.raises(MinimumLossScaleError) as exc:
        scaler.update(math.inf, 12)
    msg = str(exc.value)
    assert "update 12" in msg and "0.0001" in msg and "Minimum loss scale reached" in msg
    assert isinstance(exc.value, FloatingPointError)
    assert scaler.loss_scale == 2e-4                   # previous scale restored


def test_state_dict_round_trip_and_reference_format():
    a = DynamicLossScaler(init_scale=8.0, scale_window=3)
    for g in (1.0, math.inf, 1.0):
        a.update(g)
    b = DynamicLossScaler(init_scale=128.0, scale_window=3)
    b.load_state_dict(a.state_dict())
    for g in (1.0, 1.0, math.inf, 1.0, 1.0, 1.0, 1.0):
        assert a.update(g).loss_scale == b.update(g).loss_scale
    c = DynamicLossScaler(init_scale=128.0, scale_window=3)
    c.load_state_dict({"loss_scale": 16.0})            # reference optimizer state carries only this
    assert c.loss_scale == 16.0


def test_noop_scaler_skips_non_finite():
    s = NoOpLossScaler()
    t = torch.tensor(2.0)
    assert s.scale(t) is t and s.loss_scale == 1.0
    assert not s.update(3.0, 1).skipped
    assert s.update(math.nan, 2).skipped


def test_update_loop_contract_bf16_cpu_with_overflow():
    """The trainer's per-update sequence on CPU/bf16: scale -> backward -> normalise -> clip -> scaler -> step.
    An overflowed update is skipped, yet the lr schedule advances (Q4). (That a skipped update leaves the weights
    alone is the trainer's to show: tests/test_trainer.py::test_overflow_is_skipped_and_scale_backs_off.)"""
    torch.manual_seed(0)
    pol = PrecisionPolicy("bf16", "cpu")
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(model.parameters(), OptimizerConfig(lr=1e-3, clip_norm=25.0))
    sched = LRScheduler(opt, LRScheduleConfig(lr=1e-3, max_update=10, warmup_updates=2))
    scaler = pol.make_loss_scaler(world_size=1, update_freq=2, init_scale=128.0)
    sched.begin()
    lrs, skipped = [], []
    for update in range(1, 5):
        sample_size = 0
        for _ in range(2):                               # update_freq = 2 micro-batches
            x = torch.randn(3, 4)
            with pol.autocast():
                loss = model(x).float().pow(2).sum()     # summed loss
            scaler.scale(loss).backward()
            sample_size += x.shape[0]
        if update == 3:
            model.weight.grad[0, 0] = float("inf")      # injected overflow
        scale_gradients(model.parameters(), 1.0 / (sample_size * scaler.loss_scale))
        norm = clip_grad_norm(model.parameters(), 25.0)
        lrs.append(opt.param_groups[0]["lr"])
        res = scaler.update(norm, update=update)
        if not res.skipped:
            opt.step()
        skipped.append(res.skipped)
        opt.zero_grad(set_to_none=True)
        sched.step(update)
    assert skipped == [False, False, True, False]
    assert scaler.loss_scale == 64.0
    assert lrs == pytest.approx([5e-4, 5e-4, 1e-3, 1e-3 * (1 - 1 / 8)])   # policy(1), policy(1), policy(2), policy(3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_autocast_and_scaler_on_cuda():
    pol = PrecisionPolicy("fp16", "cuda")
    model = torch.nn.Linear(8, 8).cuda()
    scaler = pol.make_loss_scaler()
    with pol.autocast():
        y = model(torch.randn(4, 8, device="cuda"))
    assert y.dtype == torch.float16
    scaler.scale(y.float().sum()).backward()
    assert model.weight.grad.dtype == torch.float32
    assert not scaler.update(clip_grad_norm(model.parameters(), 0.0), update=1).skipped


def test_tolerance_and_threshold_worked_by_hand():
    """fairseq's optional scaler arguments (the recipes keep tolerance 0 and no threshold). Tolerance 0.5: the scale
    is divided only when at least half of the updates since the last rescale overflowed; threshold 3: never below 3.
    Updates 1-2 clean; update 3 overflows (1 of 3 since the start: kept at 8, still skipped); update 4 overflows (2 of
    4: 8 -> 4); update 5 overflows (1 of 1 since that rescale: 4 -> 2, raised to the threshold 3)."""
    scaler = DynamicLossScaler(init_scale=8.0, scale_window=1000, tolerance=0.5, threshold=3.0)
    assert [scaler.update(1.0, k).skipped for k in (1, 2)] == [False, False]
    results = [scaler.update(math.inf, k) for k in (3, 4, 5)]
    assert all(r.skipped for r in results)
    assert [r.loss_scale for r in results] == [8.0, 4.0, 3.0]


def test_fp32_attention_and_cosine_similarity_stay_float32_under_bf16_autocast(monkeypatch):
    """--fp32_mha_softmax and --fp32_cosine_sim (the FP16 recipe sets the latter): autocast casts the inputs of SDPA,
    bmm and @ down to the autocast dtype, so casting them to float32 was not enough (float32 in, bfloat16 out).
    Oracle: the same computation in float64 without autocast; BF16 is ~1e-2 away, float32 ~1e-6."""
    import torch.nn.functional as F

    import wav2vec2.encoder as encoder
    from wav2vec2.negatives import contrastive_logits, contrastive_logits_from_indices

    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kw):
        out = real_sdpa(q, k, v, **kw)
        calls.append((q.detach(), k.detach(), v.detach(), out.detach()))
        return out

    monkeypatch.setattr(encoder.F, "scaled_dot_product_attention", recording_sdpa)
    torch.manual_seed(0)
    attn = encoder.MultiheadSelfAttention(16, 2, 0.0, fp32_softmax=True).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        attn(torch.randn(2, 7, 16))
    q, k, v, out = calls[0]
    assert q.dtype == out.dtype == torch.float32
    ref = real_sdpa(q.double(), k.double(), v.double())
    assert (out.double() - ref).abs().max() < 1e-5
    xs, ys = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    idx = torch.randint(0, 10, (2, 5, 3))
    ref = contrastive_logits_from_indices(xs.double(), ys.double(), idx, 0, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fp32 = contrastive_logits_from_indices(xs, ys, idx, 0, 0.1, fp32=True)
        low = contrastive_logits_from_indices(xs, ys, idx, 0, 0.1, fp32=False)
    finite = torch.isfinite(ref)
    assert fp32.dtype == torch.float32 and (fp32.double() - ref)[finite].abs().max() < 1e-5
    assert (low.double() - ref)[finite].abs().max() > 1e-3  # what the flag exists to avoid
    negs = ys.unsqueeze(0).expand(3, -1, -1, -1) + torch.randn(3, 2, 5, 8)
    ref = contrastive_logits(xs.double(), ys.double(), negs.double(), 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fp32 = contrastive_logits(xs, ys, negs, 0.1, fp32=True)
    assert (fp32.double() - ref).abs().max() < 1e-5
