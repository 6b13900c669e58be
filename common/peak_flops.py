"""The denominator of MFU (model FLOPs utilisation): a device's dense matmul rate, measured.

A datasheet peak is not known for every CPU, and GPUs rarely reach theirs (clocks, power), so the training log
divides its achieved FLOP/s by what square matmuls of the run's precision reach on this device, measured once at
start-up in a fraction of a second. ``--peak_tflops`` replaces the measurement (a datasheet figure, or the same
number on every machine for comparable logs).
"""

from __future__ import annotations

import time

import torch

from common.distributed import synchronize

__all__ = ["matmul_flops", "matmul_dtype"]


def matmul_dtype(bf16: bool = False, fp16: bool = False) -> torch.dtype:
    """The matmul precision of a run's flags (float32 also stands for TF32 where it is allowed)."""
    return torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None,
                 budget_s: float = 0.1, min_repeats: int = 3) -> float:
    """Dense FLOP/s of square products on ``device``: the best of the timed products, for about ``budget_s``
    seconds and at least ``min_repeats`` products. The size is ``size``; else 8192 on GPUs, and on the CPU the
    largest power of two up to 1024 whose (warmed-up) product takes at most 1/64 of the budget, so that the next
    size's, 8x costlier, stays within an eighth (a slow precision, such as float16 on most CPUs, is measured on
    smaller products instead of stalling the start of a run). Every size is warmed up before it is timed: the first
    product also pays for library set-up (cuBLAS handles, oneDNN kernels)."""
    limit = size or (1024 if device.type == "cpu" else 8192)
    n = limit if (size or device.type != "cpu") else min(limit, 256)
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        if n >= limit or time.perf_counter() - t0 > budget_s / 64:
            break
        n *= 2
    best, spent, repeats = float("inf"), 0.0, 0
    while repeats < min_repeats or spent < budget_s:
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        took = time.perf_counter() - t0
        best, spent, repeats = min(best, took), spent + took, repeats + 1
    return 2.0 * n**3 / best
