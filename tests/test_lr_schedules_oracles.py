"""Oracle tests for common/lr_schedules.py found by mutation testing.

Oracle: REFERENCE.md §5.5 formulas evaluated by hand (poly with the Q11 fraction measured from the end of warm-up,
exp with ``min(step, Nu)`` and ``d = ln(--lr_exp_decay)``), §7.2's integer shell arithmetic for the fine-tuning
phases (WARMUP = Nu/10, HOLD = (Nu/10)*4)."""

import math

import pytest

from common.lr_schedules import LRScheduleConfig, LRScheduler, exp_lr, make_lr_policy, poly_lr


def test_q11_poly_holds_the_peak_through_the_last_hold_step():
    """Wu = 10, Hu = 10, Nu = 30: steps 11..20 are lr (hold, inclusive); step 21 uses the reference's fraction
    (21 - 10) / (30 - 10) = 0.55 -> lr * 0.45."""
    kw = dict(lr=1.0, max_update=30, warmup_updates=10, hold_updates=10, reproduce_q11=True)
    assert poly_lr(20, **kw) == 1.0
    assert poly_lr(11, **kw) == 1.0
    assert poly_lr(21, **kw) == pytest.approx(0.45)
    assert poly_lr(21, **dict(kw, reproduce_q11=False)) == pytest.approx(0.9)  # (21 - 20) / (30 - 20) = 0.1


def test_exp_with_an_explicit_decay_stops_decaying_at_max_update():
    """d = ln(0.5): lr halves each update after Wu + Hu = 4, and the exponent stops at Nu = 10 (min(step, Nu)):
    steps 10, 12 and 100 all give lr * 0.5^6, far above the floor s1 = 1e-9 lr."""
    kw = dict(lr=1.0, max_update=10, warmup_updates=2, hold_updates=2, initial_lr_scale=0.01,
              final_lr_scale=1e-9, lr_exp_decay=0.5)
    assert exp_lr(5, **kw) == pytest.approx(0.5)
    assert exp_lr(10, **kw) == pytest.approx(0.5 ** 6)
    assert exp_lr(12, **kw) == pytest.approx(0.5 ** 6)
    assert exp_lr(100, **kw) == pytest.approx(0.5 ** 6)


def test_tri_stage_phases_use_integer_shell_arithmetic():
    """Nu = 25: WARMUP = 25/10 = 2, HOLD = (25/10)*4 = 8 (not 25*4/10 = 10); the decay then runs steps 11..25."""
    cfg = LRScheduleConfig.tri_stage(lr=1.0, max_update=25)
    assert (cfg.warmup_updates, cfg.hold_updates) == (2, 8)
    policy = make_lr_policy(cfg)
    assert policy(10) == 1.0
    d = math.log(0.05) / (25 - 2 - 8)
    assert policy(11) == pytest.approx(math.exp(d))
    assert policy(25) == pytest.approx(0.05)


def test_exp_without_a_decay_span_is_refused():
    """d = ln(s1/lr) / (Nu - Wu - Hu) needs Nu > Wu + Hu: equality is a configuration error, not a division by 0."""
    with pytest.raises(ValueError):
        LRScheduleConfig(lr_policy="exp", max_update=10, warmup_updates=5, hold_updates=5, final_lr_scale=0.05)


def test_scheduler_state_restores_the_saved_lag():
    """A schedule saved without the lag (lag=False) resumes without it: update 5 then runs with policy(5)."""
    cfg = LRScheduleConfig(lr=1.0, max_update=100, warmup_updates=10)
    sched = LRScheduler(None, cfg, lag=True)
    sched.load_state_dict({"completed_update": 4, "lag": False, "config": {}})
    assert sched.current_lr == pytest.approx(0.5)  # warm-up: 5 / 10
    sched.begin(7)
    assert sched.current_lr == pytest.approx(0.7) and sched.completed_update == 6
