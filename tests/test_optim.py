"""Optimizer, gradient normalisation and clipping (REFERENCE.md §5.3-5.4).

Gradient normalisation is tested in the form the trainer uses it (common/trainer.py): gradients of the SUMMED,
loss-scaled loss are summed over micro-batches and ranks, then ``scale_gradients(params, 1 / (S * loss_scale))``.
The summing all-reduce itself runs on two gloo processes in tests/test_distributed.py.
"""

import math
import sys
import types

import numpy as np
import pytest
import torch

from common.optim import (
    adam_state_from_reference,
    FINETUNE_ADAM_EPS,
    OptimizerConfig,
    build_optimizer,
    clip_grad_norm,
    grad_norm,
    nvidia_apex_fused_adam,
    scale_gradients,
)


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))
    return [w, b]


def test_defaults_follow_reference():
    cfg = OptimizerConfig()
    assert cfg.adam_betas == (0.9, 0.98) and cfg.adam_eps == 1e-6 and cfg.weight_decay == 0.01
    assert cfg.clip_norm == 0.0 and FINETUNE_ADAM_EPS == 1e-8
    opt = build_optimizer(_params(), cfg)
    # one group with every trainable parameter (biases included), decoupled decay
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 2
    assert opt.param_groups[0]["weight_decay"] == 0.01
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.implementation_name == "torch.AdamW(foreach)"  # float64 parameters: no fused kernel


def test_frozen_parameters_excluded():
    ps = _params()
    ps[1].requires_grad_(False)
    assert len(build_optimizer(ps, OptimizerConfig()).param_groups[0]["params"]) == 1


def _hand_adamw(p, grads, lr, b1, b2, eps, wd):
    """The §5.4 apex-V2 update written out with numpy. A gradient of None (no gradient in that update) skips the
    parameter, moments and weight decay included, while the step count t, kept per group, still advances."""
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if g is None:
            continue
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * (mh / (np.sqrt(vh) + eps) + wd * p)
    return p


@pytest.mark.parametrize("eps,wd", [(1e-6, 0.01), (1e-8, 0.0)])
def test_adam_step_matches_hand_formula_and_torch_adamw(eps, wd):
    ours = _params()
    oracle = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().numpy().copy() for p in ours]
    cfg = OptimizerConfig(lr=1e-2, adam_eps=eps, weight_decay=wd)
    opt = build_optimizer(ours, cfg)
    ref = torch.optim.AdamW(oracle, lr=1e-2, betas=(0.9, 0.98), eps=eps, weight_decay=wd, foreach=False)
    rng = np.random.default_rng(1)
    grads = [[rng.standard_normal(p.shape) for p in ours] for _ in range(3)]
    for gs in grads:
        for p, q, g in zip(ours, oracle, gs):
            p.grad = torch.from_numpy(g.copy())
            q.grad = torch.from_numpy(g.copy())
        opt.step()
        ref.step()
    for i, (p, q) in enumerate(zip(ours, oracle)):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)
        hand = _hand_adamw(start[i], [gs[i] for gs in grads], 1e-2, 0.9, 0.98, eps, wd)
        np.testing.assert_allclose(p.detach().numpy(), hand, rtol=1e-10, atol=1e-13)


def test_scale_gradients_scales_existing_gradients_only():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(3))      # no gradient: left alone
    a.grad = torch.tensor([2.0, -6.0])
    scale_gradients([a, b], 0.5)
    assert a.grad.tolist() == [1.0, -3.0] and b.grad is None
    g = a.grad
    scale_gradients(iter([a, b]), 1.0)          # any iterable; factor 1 is a no-op
    assert a.grad is g and a.grad.tolist() == [1.0, -3.0]


def _hand_mean_gradient(w, xs):
    """Gradient of the MEAN over all rows of ((x @ w) ** 2).sum(-1), written out: 2 X^T X w / S (numpy)."""
    x = np.concatenate([np.asarray(b) for b in xs])
    return 2.0 * x.T @ (x @ np.asarray(w)) / x.shape[0]


def _backward_summed_loss(param, xs, loss_scale):
    """One micro-batch: backward of the SUMMED squared-error loss times the loss scale; returns its sample size."""
    (((xs @ param) ** 2).sum() * loss_scale).backward()
    return xs.shape[0]


@pytest.mark.parametrize("loss_scale", [1.0, 128.0])
def test_one_rank_two_microbatches_equals_two_ranks_one_each(loss_scale):
    """What the trainer does, on micro-batches of unequal size (7 and 3 samples)."""
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    mb1 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    mb2 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    hand = torch.from_numpy(_hand_mean_gradient(w0, [mb1, mb2]))

    # 1 rank x 2 micro-batches: backward accumulates into .grad, S summed over the micro-batches
    pa = torch.nn.Parameter(w0.clone())
    s_total = _backward_summed_loss(pa, mb1, loss_scale) + _backward_summed_loss(pa, mb2, loss_scale)
    scale_gradients([pa], 1.0 / (s_total * loss_scale))

    # 2 ranks x 1 micro-batch: each rank's gradient, SUMMED by the all-reduce, S all-reduced (summed) too
    rank_grads, rank_sizes = [], []
    for mb in (mb1, mb2):
        p = torch.nn.Parameter(w0.clone())
        rank_sizes.append(_backward_summed_loss(p, mb, loss_scale))
        rank_grads.append(p.grad)
    pb = torch.nn.Parameter(w0.clone())
    pb.grad = rank_grads[0] + rank_grads[1]
    scale_gradients([pb], 1.0 / (sum(rank_sizes) * loss_scale))

    torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(pa.grad, hand, rtol=1e-12, atol=1e-14)
    # the per-rank mean averaged over ranks is a different (wrong) gradient with unequal micro-batches
    mean_of_means = (rank_grads[0] / rank_sizes[0] + rank_grads[1] / rank_sizes[1]) / (2 * loss_scale)
    assert not torch.allclose(mean_of_means, hand)


def test_scaling_undoes_the_loss_scale_exactly():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([128.0 * 4, -128.0 * 8])  # loss-scaled by 128, sample size 4
    scale_gradients([p], 1.0 / (4 * 128.0))
    assert p.grad.tolist() == [1.0, -2.0]


def test_clip_grad_norm_returns_total_norm_and_clips():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    a.grad = torch.tensor([3.0, 0.0])
    b.grad = torch.tensor([4.0])
    assert clip_grad_norm([a, b], 25.0) == pytest.approx(5.0)   # below max: unchanged
    assert a.grad.tolist() == [3.0, 0.0]
    assert clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)    # norm before clipping
    assert a.grad.tolist() == pytest.approx([0.6, 0.0]) and b.grad.tolist() == pytest.approx([0.8])
    assert grad_norm([a, b]) == pytest.approx(1.0)
    assert clip_grad_norm([a, b], 0.0) == pytest.approx(1.0)    # 0 = off, still reports the norm


def test_clip_with_non_finite_norm_leaves_grads():
    a = torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([float("inf"), 1.0])
    assert math.isinf(clip_grad_norm([a], 1.0))
    assert a.grad[1].item() == 1.0
    a.grad = torch.tensor([float("nan"), 1.0])
    assert math.isnan(clip_grad_norm([a], 1.0))


def test_missing_grads_are_skipped():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2))
    b.grad = torch.tensor([0.0, 2.0])
    assert grad_norm([a, b]) == 2.0 and grad_norm([a]) == 0.0


def test_apex_detection_requires_nvidia_fused_adam(monkeypatch):
    fake = types.ModuleType("apex")
    fake_opt = types.ModuleType("apex.optimizers")  # another "apex" package: no FusedAdam
    monkeypatch.setitem(sys.modules, "apex", fake)
    monkeypatch.setitem(sys.modules, "apex.optimizers", fake_opt)
    assert nvidia_apex_fused_adam() is None

    class FusedAdam:  # noqa: D401 - stand-in for NVIDIA's class
        pass

    fake_opt.FusedAdam = FusedAdam
    assert nvidia_apex_fused_adam() is FusedAdam
    # on CPU parameters apex is never chosen by "auto"
    assert build_optimizer(_params(), OptimizerConfig()).implementation_name.startswith("torch")
    with pytest.raises(RuntimeError):
        build_optimizer(_params(), OptimizerConfig(implementation="apex"))


def test_invalid_config():
    with pytest.raises(ValueError):
        OptimizerConfig(implementation="lamb")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_adamw_on_cuda_matches_hand_formula():
    p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], device="cuda"))
    opt = build_optimizer([p], OptimizerConfig(lr=1e-2, implementation="torch"))
    assert opt.implementation_name == "torch.AdamW(fused)"
    g = np.array([0.1, -0.2, 0.3])
    p.grad = torch.tensor(g, dtype=torch.float32, device="cuda")
    opt.step()
    hand = _hand_adamw(np.array([0.5, -1.0, 2.0]), [g], 1e-2, 0.9, 0.98, 1e-6, 0.01)
    np.testing.assert_allclose(p.detach().cpu().numpy(), hand, rtol=1e-5, atol=1e-6)


def _two_params():
    return [torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4))]


def test_reference_flat_mixed_precision_state_is_split_per_parameter():
    params = _two_params()
    opt = build_optimizer(params, OptimizerConfig())
    flat_m = torch.arange(10, dtype=torch.float32)
    ref = {"state": {0: {"step": 7, "exp_avg": flat_m, "exp_avg_sq": flat_m * 2}},
           "param_groups": [{"params": [0], "lr": 3e-4, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01}],
           "loss_scale": 256.0}
    opt.load_state_dict(adam_state_from_reference(ref, params, opt))
    st = opt.state[params[0]]
    assert st["exp_avg"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert opt.state[params[1]]["exp_avg_sq"].tolist() == [12, 14, 16, 18]
    assert float(st["step"]) == 7 and opt.param_groups[0]["lr"] == 3e-4
    # the next step continues the bias-correction count at t = 8
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert float(opt.state[params[1]]["step"]) == 8


def test_reference_fp32_per_parameter_state():
    params = _two_params()
    opt = build_optimizer(params, OptimizerConfig())
    ref = {"state": {0: {"exp_avg": torch.ones(2, 3), "exp_avg_sq": torch.ones(2, 3)},
                     1: {"exp_avg": torch.full((4,), 2.0), "exp_avg_sq": torch.ones(4)}},
           "param_groups": [{"params": [0, 1], "lr": 1e-4, "step": 5}]}
    opt.load_state_dict(adam_state_from_reference(ref, params, opt))
    assert opt.state[params[1]]["exp_avg"].tolist() == [2.0] * 4 and float(opt.state[params[0]]["step"]) == 5
    bad = {"state": {0: {"exp_avg": torch.ones(3), "exp_avg_sq": torch.ones(3)}}, "param_groups": [{}]}
    with pytest.raises(ValueError):
        adam_state_from_reference(bad, params, opt)


def test_fused_adamw_on_cpu_matches_hand_formula():
    p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    opt = build_optimizer([p], OptimizerConfig(lr=1e-2, implementation="torch"))
    assert opt.implementation_name == "torch.AdamW(fused)"
    grads = [np.array([0.1, -0.2, 0.3]), np.array([-0.05, 0.4, 0.0])]
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    hand = _hand_adamw(np.array([0.5, -1.0, 2.0]), grads, 1e-2, 0.9, 0.98, 1e-6, 0.01)
    np.testing.assert_allclose(p.detach().numpy(), hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,name,device", [
    (torch.float64, "torch.AdamW(foreach)", "cpu"), (torch.float32, "torch.AdamW(fused)", "cpu"),
    pytest.param(torch.float32, "torch.AdamW(fused)", "cuda",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
])
def test_parameters_without_gradients_keep_the_groups_step_count(dtype, name, device):
    """One step count for the group, as apex FusedAdam V2 keeps it (REFERENCE.md §5.4): a parameter skipped in an
    update (LayerDrop) is not moved but its t advances; one frozen for the first updates (the encoder during
    --freeze_finetune_updates) starts with zero moments at the group's t, so its first update is 0.1 g / sqrt(0.02 g^2)
    = 0.71 lr per coordinate after a long freeze, not torch's fresh-start 1.0. Hand formula with explicit None steps; also across a
    state_dict round trip (resume)."""
    rng = np.random.default_rng(3)
    start = [np.array([0.5, -1.0, 2.0]), np.array([1.0, -2.0]), np.array([0.25, 0.75])]
    dropped = [rng.standard_normal(3), None, rng.standard_normal(3), None, rng.standard_normal(3), rng.standard_normal(3)]
    frozen = [None, None, None, None, rng.standard_normal(2), rng.standard_normal(2)]
    always = [rng.standard_normal(2) for _ in range(6)]
    schedules = [dropped, frozen, always]
    lr, wd = 1e-2, 0.01

    def run(steps, params=None, opt=None):
        params = params or [torch.nn.Parameter(torch.tensor(x, dtype=dtype, device=device)) for x in start]
        opt = opt or build_optimizer(params, OptimizerConfig(lr=lr, weight_decay=wd, implementation="torch"))
        for k in steps:
            for p, sched in zip(params, schedules):
                p.grad = None if sched[k] is None else torch.tensor(sched[k], dtype=dtype, device=device)
            opt.step()
        return params, opt

    params, opt = run(range(6))
    assert opt.implementation_name == name
    tol = dict(rtol=1e-10, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for p, x, sched in zip(params, start, schedules):
        np.testing.assert_allclose(p.detach().cpu().numpy(), _hand_adamw(x, sched, lr, 0.9, 0.98, 1e-6, wd), **tol)
        assert float(opt.state[p]["step"]) == 6
    # the first update of the once-frozen parameter, by itself (decay aside): bias correction at t = 5, where
    # torch's own AdamW would restart at t = 1 and move it by exactly 1 lr per coordinate
    p5, _ = run(range(5))
    p4, _ = run(range(4))
    first_move = (p4[1].detach() * (1 - lr * wd) - p5[1].detach()).cpu().numpy() / lr
    expected = (0.1 / (1 - 0.9 ** 5)) / math.sqrt(0.02 / (1 - 0.98 ** 5))  # 0.535; 0.71 for large t
    np.testing.assert_allclose(np.abs(first_move), expected, rtol=2e-3)
    # resume after 3 updates (the frozen parameter has no moments of its own yet): the same end point
    head, opt_head = run(range(3))
    saved = opt_head.state_dict()
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in head]
    opt_resumed = build_optimizer(resumed, OptimizerConfig(lr=lr, weight_decay=wd, implementation="torch"))
    opt_resumed.load_state_dict(saved)
    run(range(3, 6), resumed, opt_resumed)
    for p, q in zip(params, resumed):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)


class _ApexLikeFusedAdam(torch.optim.Optimizer):
    """NVIDIA apex FusedAdam's Python bookkeeping (AdamW mode): group keys with ``bias_correction``, ONE step count in
    the param group, per-parameter moments only, and a ``zero_grad()`` without ``set_to_none``. The update is
    computed with the same formula in plain torch (the real kernel needs CUDA)."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, adam_w_mode=True,
                 weight_decay=0.0):
        super().__init__(params, dict(lr=lr, bias_correction=bias_correction, betas=betas, eps=eps,
                                      weight_decay=weight_decay))

    def zero_grad(self):  # apex's signature: no set_to_none
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            t = group["step"]
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                update = (st["exp_avg"] / (1 - b1 ** t)) / ((st["exp_avg_sq"] / (1 - b2 ** t)).sqrt() + group["eps"])
                p.add_(update + group["weight_decay"] * p, alpha=-group["lr"])


def test_optimizer_state_moves_between_torch_and_apex_layouts():
    """A run resumed after NVIDIA apex was installed (a rebuilt container) or removed: the other implementation's
    state is converted (moments kept, one step count), and both continue exactly as an uninterrupted run of either
    (the hand formula: both are AdamW). Without the conversion torch failed on apex's state (KeyError 'step')
    and apex on torch's."""
    from common.optim import AdamW, adapt_optimizer_state

    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(3) for _ in range(4)]
    start = np.array([0.5, -1.0, 2.0])

    def run(first, second):
        p = torch.nn.Parameter(torch.tensor(start))
        opt = first([p])
        for g in grads[:2]:
            p.grad = torch.tensor(g)
            opt.step()
        nxt = second([p])
        state, converted = adapt_optimizer_state(opt.state_dict(), nxt)
        nxt.load_state_dict(state)
        for g in grads[2:]:
            p.grad = torch.tensor(g)
            nxt.step()
        return p.detach().numpy(), converted

    def torch_adamw(params):
        return AdamW(params, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, foreach=True)

    def apex(params):
        return _ApexLikeFusedAdam(params, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)

    hand = _hand_adamw(start, grads, 1e-2, 0.9, 0.98, 1e-6, 0.01)
    for first, second, expected in ((apex, torch_adamw, "torch AdamW's layout"),
                                    (torch_adamw, apex, "apex FusedAdam's layout")):
        got, converted = run(first, second)
        assert converted == expected
        np.testing.assert_allclose(got, hand, rtol=1e-10, atol=1e-12)
    same, converted = run(torch_adamw, torch_adamw)
    assert converted == "" and np.allclose(same, hand)


def test_a_torch_adamw_state_with_per_parameter_steps_continues_with_one_count():
    """States saved before the one-count AdamW (torch's own: a late-starting parameter counted fewer steps) load
    with every count set to the largest, so the counts do not stay apart for the rest of the run."""
    from common.optim import AdamW

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    old = torch.optim.AdamW([a, b], lr=1e-3)
    a.grad = torch.ones(2)
    old.step()
    old.step()
    b.grad = torch.ones(3)
    old.step()  # a: 3 steps, b: 1
    assert [float(old.state[p]["step"]) for p in (a, b)] == [3.0, 1.0]
    new = AdamW([a, b], lr=1e-3)
    new.load_state_dict(old.state_dict())
    assert [float(new.state[p]["step"]) for p in (a, b)] == [3.0, 3.0]


def test_a_parameter_that_never_has_a_gradient_keeps_no_state():
    """A frozen feature extractor (no gradient ever) costs no moments in memory or in checkpoints."""
    from common.optim import AdamW

    used, frozen = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1000))
    opt = AdamW([used, frozen], lr=1e-3)
    for _ in range(3):
        used.grad = torch.ones(2)
        opt.step()
    assert frozen not in opt.state or not opt.state[frozen]
    assert [k for k, v in opt.state_dict()["state"].items() if v] == [0]


def test_reference_state_and_a_state_saved_before_any_step_fit_apex_too():
    """A reference checkpoint's optimizer (converted to torch's per-parameter layout) resumed with apex installed
    keeps its step count in apex's group (it restarted at 1); a state saved before the first step loads into the
    other implementation with that implementation's group keys (apex's step() needs bias_correction)."""
    from common.optim import AdamW, adapt_optimizer_state

    params = _two_params()
    apex = _ApexLikeFusedAdam(params, lr=1e-3)
    ref = {"state": {0: {"step": 7, "exp_avg": torch.zeros(10), "exp_avg_sq": torch.zeros(10)}},
           "param_groups": [{"params": [0], "lr": 3e-4, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01}]}
    state, converted = adapt_optimizer_state(adam_state_from_reference(ref, params, apex), apex)
    apex.load_state_dict(state)
    assert converted == "apex FusedAdam's layout" and apex.param_groups[0]["step"] == 7
    assert apex.param_groups[0]["lr"] == 3e-4 and "bias_correction" in apex.param_groups[0]
    fresh = AdamW(_two_params(), lr=1e-3).state_dict()  # no step taken
    other = _ApexLikeFusedAdam(_two_params(), lr=1e-3)
    other.load_state_dict(adapt_optimizer_state(fresh, other)[0])
    for p in other.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    other.step()
    assert other.param_groups[0]["step"] == 1
