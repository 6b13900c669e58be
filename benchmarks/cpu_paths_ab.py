#!/usr/bin/env python
"""A/B measurements of this repository's CPU fast paths against the code paths they replace, in one process,
alternating (the figures of the fourth session's rows in docs/BENCHMARKS.md).

    python benchmarks/cpu_paths_ab.py inference --batch 1 --repeats 10   # Base CTC forward, 6.5 s
    python benchmarks/cpu_paths_ab.py norm                               # layer-0 norm forward + backward
    python benchmarks/cpu_paths_ab.py gelu                               # Base BF16 forward + backward
    python benchmarks/cpu_paths_ab.py conv                               # extractor layer 1, split GEMMs vs oneDNN
    python benchmarks/cpu_paths_ab.py adamw                              # optimizer step, fused vs foreach
    python benchmarks/cpu_paths_ab.py mkl_packed                         # a dropped idea: prepacked MKL weights
    python benchmarks/cpu_paths_ab.py compile_frozen                     # a dropped idea: inductor + freezing

* ``inference``: our forward (FFT positional convolution + chunked layer 0) vs the same model with the layer-0 block
  on its autograd path (``old_l0``), with the positional convolution on ``F.conv1d`` (``old_pc``), and both.
* ``norm``: the time-major layer-0 norm (hand-written chunked backward) vs ``torch.var_mean`` with autograd, Base
  shape 2 x 25,599 x 512.
* ``gelu``: Base BF16 pretraining forward + backward with our activation vs GELU through an explicit float32 round
  trip (fairseq's formulation).
* ``conv``: extractor layer 1 (512 -> 512, kernel 3, stride 2) on 2 x 25,599 time-major frames, forward and
  forward + backward: ``conv1d_time_major`` vs ``F.conv1d`` (oneDNN) with the B x C x T transposes around it.
* ``adamw``: one ``torch.optim.AdamW`` step over the Base model's parameters, ``fused=True`` vs ``foreach=True``.
* ``mkl_packed``: the Base batch-1 inference GEMMs (and extractor layer 1's) through ``torch.nn.functional.linear``
  vs MKL with the weight prepacked once (``torch.ops.mkl._mkl_linear``, what inductor's freezing uses).
* ``compile_frozen``: the Base CTC forward (batch 1, 6.5 s) eager vs ``torch.compile`` with inductor's ``freezing``
  (constant-folded, prepacked weights, fused elementwise kernels); prints the compile time.

Each prints medians and the median of the per-pair ratios (each A timed next to its B).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2Model, preset  # noqa: E402

NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0,
               dropout_features=0.0)


def alternate(variants, repeats: int, warmup: int = 1) -> None:
    """Time each ``name -> callable`` alternately; print medians and per-pair ratios against the first."""
    times = {k: [] for k in variants}
    for i in range(warmup + repeats):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    first = next(iter(variants))
    for k, v in times.items():
        pairs = [a / b for a, b in zip(v, times[first])]
        print(f"{k:10s} median {1000 * statistics.median(v):8.1f} ms  {k}/{first} per pair: median "
              f"{statistics.median(pairs):.3f}")


def inference(args) -> None:
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("base", hourglass_transformer=None, final_dropout=0.0, **NO_DROP), 32).eval()
    x = 0.1 * torch.randn(args.batch, 104000)
    block0 = model.w2v_model.feature_extractor.conv_layers[0]
    pos_conv = model.w2v_model.encoder.pos_conv[0]

    @contextlib.contextmanager
    def old_l0():  # the layer-0 block's autograd path (conv, masked norm, GELU on the whole tensor)
        def forward(self, xx, lengths=None):
            with torch.enable_grad():
                return type(self).forward(self, xx, lengths)
        block0.forward = types.MethodType(forward, block0)
        try:
            yield
        finally:
            del block0.forward

    @contextlib.contextmanager
    def old_pc():  # the positional convolution on F.conv1d
        pos_conv._use_fft = lambda xx: False
        try:
            yield
        finally:
            del pos_conv._use_fft

    @contextlib.contextmanager
    def both():
        with old_l0(), old_pc():
            yield

    def run(ctx):
        def fn():
            with ctx():
                model(x, None)
        return fn

    with torch.no_grad():  # not inference_mode: old_l0 re-enables autograd inside, which needs normal tensors
        with both():
            ref = model(x, None)[0]
        print(f"max |logit difference| new vs old: {float((model(x, None)[0] - ref).abs().max()):.1e}")
        alternate({"new": run(contextlib.nullcontext), "old_l0": run(old_l0), "old_pc": run(old_pc),
                   "old_both": run(both)}, args.repeats)


def norm(args) -> None:
    from wav2vec2.feature_extractor import masked_group_norm

    gn = torch.nn.GroupNorm(512, 512)
    x0 = torch.randn(2, 25599, 512)
    dy = torch.randn(2, 25599, 512)

    def ours():
        x = x0.clone().requires_grad_(True)
        masked_group_norm(x, None, gn, fp32=True, time_dim=1).backward(dy)

    def var_mean():
        x = x0.clone().requires_grad_(True)
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        scale = torch.rsqrt(var + gn.eps) * gn.weight.view(1, 1, -1)
        torch.addcmul(gn.bias.view(1, 1, -1) - mean * scale, x, scale).backward(dy)

    alternate({"ours": ours, "var_mean": var_mean}, args.repeats)


def gelu(args) -> None:
    from wav2vec2.encoder import TransformerLayer
    from wav2vec2.criterion import ContrastiveCriterion
    from wav2vec2.masking import compute_mask
    from wav2vec2.negatives import sample_negative_indices

    cfg = preset("base", hourglass_transformer=None, **NO_DROP)
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).train()
    x = torch.randn(2, 128000) * 0.1
    t = int(model.output_lengths(torch.tensor([x.shape[1]]))[0])
    g = torch.Generator().manual_seed(0)
    mask = compute_mask((2, t), cfg.mask_prob, cfg.mask_length, min_masks=2, generator=g)
    neg = sample_negative_indices(2, int(mask[0].sum()), cfg.num_negatives, generator=g)
    crit = ContrastiveCriterion(loss_weights=(0.1, 10.0))
    layers = [m for m in model.modules() if isinstance(m, TransformerLayer)]
    ours = layers[0].activation

    def round_trip(z):
        return F.gelu(z.float()).to(z.dtype)

    def step(act):
        def fn():
            for layer in layers:
                layer.activation = act
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = crit(model(x, mask_indices=mask, negative_indices=neg, generator=g))[0]
            loss.backward()
            model.zero_grad(set_to_none=True)
        return fn

    alternate({"ours": step(ours), "round_trip": step(round_trip)}, args.repeats)


def conv(args) -> None:
    from wav2vec2.feature_extractor import conv1d_time_major

    torch.manual_seed(0)
    weight = (torch.randn(512, 512, 3) / 40).requires_grad_(True)
    x0 = torch.randn(2, 25599, 512)
    t_out = (25599 - 3) // 2 + 1
    dy = torch.randn(2, t_out, 512)

    def ours(backward):
        def fn():
            x = x0.clone().requires_grad_(backward)
            y = conv1d_time_major(x, weight, None, 2)
            if backward:
                y.backward(dy)
        return fn

    def onednn(backward):
        def fn():
            x = x0.clone().requires_grad_(backward)
            y = F.conv1d(x.transpose(1, 2), weight, None, stride=2).transpose(1, 2)
            if backward:
                y.backward(dy)
        return fn

    with torch.no_grad():
        diff = (conv1d_time_major(x0, weight, None, 2) - F.conv1d(x0.transpose(1, 2), weight, None, 2).transpose(1, 2))
    print(f"max |difference|: {float(diff.abs().max()):.1e}")
    with torch.no_grad():
        print("forward")
        alternate({"ours": ours(False), "onednn": onednn(False)}, args.repeats)
    print("forward + backward")
    alternate({"ours": ours(True), "onednn": onednn(True)}, args.repeats)


def adamw(args) -> None:
    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("base", hourglass_transformer=None, **NO_DROP))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    print(f"{sum(p.numel() for p in params) / 1e6:.1f} M parameters")
    fused = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)
    foreach = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=True)
    alternate({"fused": fused.step, "foreach": foreach.step}, args.repeats)


def mkl_packed(args) -> None:
    if not hasattr(torch.ops.mkl, "_mkl_linear"):
        raise SystemExit("this torch build has no torch.ops.mkl._mkl_linear")
    torch.manual_seed(0)
    for m, k, n in [(324, 768, 3072), (324, 3072, 768), (324, 768, 768), (10399, 1024, 512)]:
        x, w, b = torch.randn(m, k), torch.randn(n, k) / k ** 0.5, torch.randn(n)
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
        diff = (torch.ops.mkl._mkl_linear(x, packed, w, b, m) - F.linear(x, w, b)).abs().max()
        print(f"{m} x {k} -> {n}: max |difference| {float(diff):.1e}")
        alternate({"linear": lambda: F.linear(x, w, b),
                   "packed": lambda: torch.ops.mkl._mkl_linear(x, packed, w, b, m)}, args.repeats)


def compile_frozen(args) -> None:
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("base", hourglass_transformer=None, final_dropout=0.0, **NO_DROP), 32).eval()
    x = 0.1 * torch.randn(args.batch, 104000)
    with torch.no_grad(), inductor_config.patch(freezing=True):
        compiled = torch.compile(model, dynamic=False)
        t0 = time.perf_counter()
        out = compiled(x, None)[0]
        print(f"compile: {time.perf_counter() - t0:.1f} s; max |logit difference| "
              f"{float((out - model(x, None)[0]).abs().max()):.1e}")
        alternate({"eager": lambda: model(x, None), "compiled": lambda: compiled(x, None)}, args.repeats)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["inference", "norm", "gelu", "conv", "adamw", "mkl_packed", "compile_frozen"])
    p.add_argument("--batch", type=int, default=1, help="inference, compile_frozen: utterances of 6.5 s")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"inference": inference, "norm": norm, "gelu": gelu, "conv": conv, "adamw": adamw,
     "mkl_packed": mkl_packed, "compile_frozen": compile_frozen}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
