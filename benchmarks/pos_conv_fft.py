#!/usr/bin/env python
"""The positional convolution (grouped conv1d, 768 channels, kernel 128, 16 groups, padding 64) two ways, alternating
in one process: oneDNN / cuDNN ``F.conv1d`` vs our overlap-save FFT (``WeightNormConv1d._forward_fft``, the
inference path on CPU), forward only, without autograd. Prints medians and the relative error against a float64
``F.conv1d``.

    python benchmarks/pos_conv_fft.py                      # CPU, 2 threads
    python benchmarks/pos_conv_fft.py --device cuda        # does the FFT path pay on a GPU too? (not enabled there)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.distributed import synchronize  # noqa: E402
from wav2vec2.encoder import WeightNormConv1d  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--shapes", default="1x324,8x324,1x1749", help="BATCHxFRAMES,... (324 frames = 6.5 s)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    conv = WeightNormConv1d(768, 128, 16).to(device)

    print(f"torch {torch.__version__}, device {device}, threads {args.threads}")
    for shape in args.shapes.split(","):
        b, t = (int(v) for v in shape.split("x"))
        x = torch.randn(b, t, 768, device=device).transpose(1, 2)  # as the encoder passes it: a transposed view
        fns = {"conv1d": lambda: F.conv1d(x, conv.weight(), conv.bias, padding=64, groups=16),
               "fft": lambda: conv._forward_fft(x)}
        times = {k: [] for k in fns}
        with torch.inference_mode():
            ref = F.conv1d(x.double(), conv.weight().double(), conv.bias.double(), padding=64, groups=16)
            err = float((conv._forward_fft(x).double() - ref).abs().max() / ref.abs().max())
            for i in range(2 + args.repeats):
                for k, f in fns.items():
                    synchronize(device)
                    t0 = time.perf_counter()
                    f()
                    synchronize(device)
                    if i >= 2:
                        times[k].append(time.perf_counter() - t0)
        med = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(f"batch {b} x {t} frames: conv1d {med['conv1d']:.2f} ms, FFT {med['fft']:.2f} ms "
              f"({med['conv1d'] / med['fft']:.2f}x), FFT relative error {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
