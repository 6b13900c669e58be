"""Audio helpers: a band-limited (windowed-sinc, polyphase) resampler in numpy and PCM conversion.

:func:`resample` converts between any two integer rates with ratio ``up/down`` (reduced by their
gcd; 22050 -> 16000 Hz is 320/441). Each output sample is a dot product of the input with a
Kaiser-windowed sinc low-pass kernel centred on the output instant; the kernels are tabulated once
per output phase (``up`` phases), every row normalised to unit DC gain. The cut-off sits at
``rolloff`` times the lower Nyquist frequency, so content above the new Nyquist is removed
(> 80 dB stop-band with the defaults) instead of aliasing.
"""
from __future__ import annotations

from functools import lru_cache
from math import ceil, gcd

import numpy as np


@lru_cache(maxsize=16)
def _kernel_table(up: int, down: int, zero_crossings: int, rolloff: float, beta: float):
    """``(table[up, 2K], K)``: kernel weights for every output phase, taps at offsets -K+1..K."""
    fc = 0.5 * min(1.0, up / down) * rolloff  # cut-off in cycles per input sample
    half_width = zero_crossings / (2.0 * fc)  # kernel half-length in input samples
    k = int(ceil(half_width))
    offsets = np.arange(-k + 1, k + 1, dtype=np.float64)
    frac = np.arange(up, dtype=np.float64)[:, None] / up
    d = frac - offsets[None, :]  # distance (input samples) between output instant and tap
    window = np.where(np.abs(d) <= half_width,
                      np.i0(beta * np.sqrt(np.clip(1.0 - (d / half_width) ** 2, 0.0, 1.0))) / np.i0(beta),
                      0.0)
    table = 2.0 * fc * np.sinc(2.0 * fc * d) * window
    table /= table.sum(axis=1, keepdims=True)
    return table, k


def resample(x: np.ndarray, orig_sr: int, new_sr: int, *, zero_crossings: int = 32,
             rolloff: float = 0.94, beta: float = 9.0, chunk: int = 16384) -> np.ndarray:
    """Resample a 1-D signal from ``orig_sr`` to ``new_sr`` Hz; returns float64 (float32 in -> float32 out).

    Output length is ``ceil(len(x) * new_sr / orig_sr)``; output sample n is at input time
    ``n * orig_sr / new_sr``; the signal is zero outside its support.
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D signal, got shape {x.shape}")
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError("sample rates must be positive")
    out_dtype = np.float32 if x.dtype == np.float32 else np.float64
    if orig_sr == new_sr:
        return x.astype(out_dtype, copy=True)
    g = gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    table, k = _kernel_table(up, down, zero_crossings, float(rolloff), float(beta))
    n_out = int(ceil(len(x) * up / down))
    xp = np.concatenate([np.zeros(k), x.astype(np.float64), np.zeros(k + 1)])
    taps = np.arange(-k + 1, k + 1)
    y = np.empty(n_out, dtype=np.float64)
    for start in range(0, n_out, chunk):
        n = np.arange(start, min(start + chunk, n_out), dtype=np.int64)
        num = n * down
        base, phase = num // up, num % up
        idx = base[:, None] + taps[None, :] + k
        y[start:start + len(n)] = np.einsum("ij,ij->i", xp[idx], table[phase])
    return y.astype(out_dtype, copy=False)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] -> int16 PCM with rounding and clipping."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32767.0), -32768, 32767).astype(np.int16)
