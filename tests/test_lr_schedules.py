"""LR schedules against the worked numbers of REFERENCE-QUIRKS §10 / REFERENCE §11 (hand-computed)."""

import math

import pytest
import torch

from common.lr_schedules import LRScheduleConfig, LRScheduler, exp_lr, make_lr_policy, poly_lr

POLY = LRScheduleConfig(lr_policy="poly", lr=5e-4, max_update=400000, warmup_updates=32000)
EXP = LRScheduleConfig(lr_policy="exp", lr=1e-4, max_update=320000, warmup_updates=32000, hold_updates=128000,
                       initial_lr_scale=0.01, final_lr_scale=0.05)


@pytest.mark.parametrize("step,expected", [(1, 1.5625e-8), (32000, 5e-4), (216000, 2.5e-4), (400000, 0.0),
                                           (400001, 0.0), (16000, 2.5e-4)])
def test_poly_worked_numbers(step, expected):
    assert make_lr_policy(POLY)(step) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_exp_worked_numbers():
    p = make_lr_policy(EXP)
    assert p(1) == pytest.approx(1e-6 + (1 / 32000) * 9.9e-5, rel=1e-12)
    assert p(16000) == pytest.approx(5.05e-5, rel=1e-12)
    for s in (32000, 32001, 100000, 160000):
        assert p(s) == pytest.approx(1e-4, rel=1e-12)
    assert p(240000) == pytest.approx(1e-4 * math.sqrt(0.05), rel=1e-9)
    assert p(240000) == pytest.approx(2.2361e-5, rel=1e-4)
    assert p(320000) == pytest.approx(5e-6, rel=1e-9)
    assert p(500000) == pytest.approx(5e-6, rel=1e-9)  # clamped at s1 after max_update
    # decay rate d = ln(0.05)/160000
    assert math.log(p(160001) / p(160000)) == pytest.approx(-1.87236e-5, rel=1e-4)


def test_tri_stage_preset_matches_recipe():
    cfg = LRScheduleConfig.tri_stage(lr=1e-4, max_update=320000)
    assert (cfg.warmup_updates, cfg.hold_updates) == (32000, 128000)
    assert make_lr_policy(cfg)(240000) == make_lr_policy(EXP)(240000)


def test_exp_explicit_decay_factor():
    # lr_exp_decay = 0.5 per update: one update after the hold -> lr/2, floored at s1
    assert exp_lr(11, 1.0, 100, 10, 0, 0.0, 0.05, lr_exp_decay=0.5) == pytest.approx(0.5)
    assert exp_lr(30, 1.0, 100, 10, 0, 0.0, 0.05, lr_exp_decay=0.5) == pytest.approx(0.05)


def test_poly_hold_q11_fixed_and_reproducible():
    kw = dict(lr=1.0, max_update=100, warmup_updates=10, hold_updates=40)
    # fixed: continuous after the hold, reaches 0 at max_update; frac = (step-50)/50
    assert poly_lr(50, **kw) == 1.0
    assert poly_lr(51, **kw) == pytest.approx(1 - 1 / 50)
    assert poly_lr(75, **kw) == pytest.approx(0.5)
    # reference (Q11): frac measured from the end of warm-up: (51-10)/90
    assert poly_lr(51, reproduce_q11=True, **kw) == pytest.approx(1 - 41 / 90)


def test_poly_power_and_scales():
    # s0 = 0.1, s1 = 0.2 (lr 1), power 2; at step 55 of [10, 100]: (1-0.2)*(1-0.5)^2+0.2
    kw = dict(lr=1.0, max_update=100, warmup_updates=10, initial_lr_scale=0.1, final_lr_scale=0.2, power=2.0)
    assert poly_lr(5, **kw) == pytest.approx(0.1 + 0.5 * 0.9)
    assert poly_lr(55, **kw) == pytest.approx(0.8 * 0.25 + 0.2)
    assert poly_lr(101, **kw) == pytest.approx(0.2)


def test_invalid_configs():
    with pytest.raises(ValueError):
        LRScheduleConfig(lr_policy="cosine")
    with pytest.raises(ValueError):
        LRScheduleConfig(lr_policy="exp", final_lr_scale=0.0)


def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)


def test_scheduler_reference_lag_q2():
    opt = _opt()
    s = LRScheduler(opt, POLY)
    assert s.begin() == pytest.approx(1.5625e-8)          # update 1 uses policy(1)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.5625e-8)
    s.step(1)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.5625e-8)  # update 2 uses policy(1)
    s.step(2)
    assert opt.param_groups[0]["lr"] == pytest.approx(2 * 1.5625e-8)  # update 3 uses policy(2)
    assert s.lr_for_update(32001) == pytest.approx(5e-4)
    assert s.lr_for_update(216001) == pytest.approx(2.5e-4)


def test_scheduler_without_lag():
    s = LRScheduler(_opt(), POLY, lag=False)
    assert s.begin() == pytest.approx(1.5625e-8)
    assert s.step(1) == pytest.approx(2 * 1.5625e-8)


def test_scheduler_state_dict_resume():
    a = LRScheduler(_opt(), EXP)
    a.begin()
    for k in range(1, 40001):
        if k % 10000 == 0:
            a.step(k)
    a.step(40000)
    opt_b = _opt()
    b = LRScheduler(opt_b, EXP)
    b.load_state_dict(a.state_dict())
    assert b.completed_update == 40000
    assert opt_b.param_groups[0]["lr"] == pytest.approx(a.current_lr)
    assert b.current_lr == pytest.approx(1e-4)
