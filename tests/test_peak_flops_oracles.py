"""Oracle tests for common/peak_flops.py found by mutation testing: the measured rate is 2 n^3 FLOPs over the BEST
timed product, timing runs for at least ``min_repeats`` products AND ``budget_s`` seconds, and an explicit ``size``
is used as given. A fake clock advanced by a patched device synchronisation makes every product take a chosen time."""

from types import SimpleNamespace

import pytest
import torch

import common.peak_flops as peak


def _fake_device(monkeypatch, durations):
    """Products after the size search take ``durations`` seconds in turn (the search's two products take 0 s)."""
    state = {"t": 0.0, "calls": 0}
    plan = [0.0, 0.0] + list(durations)
    sizes = []
    real_randn = torch.randn

    def sync(device):
        state["t"] += plan[state["calls"]] if state["calls"] < len(plan) else 1.0
        state["calls"] += 1

    def randn(*shape, **kw):
        sizes.append(shape[0])
        return real_randn(*shape, **kw)

    monkeypatch.setattr(peak, "synchronize", sync)
    monkeypatch.setattr(peak, "time", SimpleNamespace(perf_counter=lambda: state["t"]))
    monkeypatch.setattr(torch, "randn", randn)
    return state, sizes


def test_rate_is_two_n_cubed_over_the_fastest_of_at_least_min_repeats(monkeypatch):
    # 3 products: 0.5 s, 0.25 s, 0.125 s (binary-exact); the budget (0.625 s) is spent after the second,
    # min_repeats=3 asks a third
    state, sizes = _fake_device(monkeypatch, [0.5, 0.25, 0.125])
    rate = peak.matmul_flops(torch.device("cpu"), torch.float32, size=64, budget_s=0.625, min_repeats=3)
    assert sizes == [64, 64]                       # the given size, not the CPU search's 256..1024
    assert rate == pytest.approx(2.0 * 64**3 / 0.125)
    assert state["calls"] == 2 + 3


def test_timing_continues_until_the_budget_is_spent(monkeypatch):
    # min_repeats reached after 3 products (0.375 s) but the budget is 0.5 s: two more run, the fastest among them
    state, _ = _fake_device(monkeypatch, [0.125, 0.125, 0.125, 0.0625, 0.0625])
    rate = peak.matmul_flops(torch.device("cpu"), torch.float32, size=32, budget_s=0.5, min_repeats=3)
    assert state["calls"] == 2 + 5
    assert rate == pytest.approx(2.0 * 32**3 / 0.0625)
