"""Microbenchmark: q/k/v projections + SDPA, forward and backward, with three separate projections vs one packed
projection (the three weights concatenated per call). Base shape: 2 x 400 frames x 768, 12 heads; the two variants
alternate, medians of 30. docs/BENCHMARKS.md records the result.

    python benchmarks/qkv_packing.py [--threads 2]
"""

import argparse
import time

import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    b, t, c, h = 2, 400, 768, 12
    proj = [torch.nn.Linear(c, c) for _ in range(3)]
    x = torch.randn(b, t, c, requires_grad=True)
    grad = torch.randn(b, h, t, c // h)

    def heads(y: torch.Tensor) -> torch.Tensor:
        return y.view(b, t, h, c // h).transpose(1, 2)

    def separate() -> torch.Tensor:
        q, k, v = (heads(m(x)) for m in proj)
        return F.scaled_dot_product_attention(q, k, v)

    def packed() -> torch.Tensor:
        w = torch.cat([m.weight for m in proj])
        bias = torch.cat([m.bias for m in proj])
        q, k, v = F.linear(x, w, bias).view(b, t, 3, h, c // h).unbind(2)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    def timed(fn) -> float:
        start = time.perf_counter()
        fn().backward(grad)
        return time.perf_counter() - start

    variants = {"separate": separate, "packed": packed}
    for fn in variants.values():  # warm-up
        timed(fn)
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    for name, ts in times.items():
        print(f"{name}: median {sorted(ts)[len(ts) // 2] * 1e3:.1f} ms (forward + backward)")


if __name__ == "__main__":
    main()
