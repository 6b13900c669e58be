"""Microbenchmark: the positional convolution (grouped conv1d, k=128, 16 groups, width 768) as oneDNN ``conv1d``
vs per-group GEMMs over chunks of unfolded taps on time-major activations. Checks that both agree, then times the
forward (medians of 5, alternating). docs/BENCHMARKS.md records the result (the GEMM form was 2x slower: dropped).

    python benchmarks/pos_conv_split_gemm.py [--threads 1]
"""

import argparse
import time

import torch
import torch.nn.functional as F


def grouped_conv_time_major(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, pad: int, chunk: int) -> torch.Tensor:
    """x: B x T x C (time-major); w: C x C/G x K. Returns B x T' x C with T' = T + 2 pad - K + 1."""
    b, t, c = x.shape
    _, cg, k = w.shape
    g = c // cg
    xp = F.pad(x, (0, 0, pad, pad)).contiguous()
    tp = xp.shape[1]
    t_out = tp - k + 1
    wg = w.view(g, cg, cg, k).permute(0, 3, 2, 1)  # G x K x C_in/G x C_out/G
    out = None
    for k0 in range(0, k, chunk):
        kn = min(chunk, k - k0)
        # unfolded taps k0..k0+kn of every group: G x (B*T') x (kn*C/G), copied from an overlapping view
        view = xp.as_strided((b, t_out, kn, g, cg), (tp * c, c, c, cg, 1), xp.storage_offset() + k0 * c)
        u = view.permute(3, 0, 1, 2, 4).reshape(g, b * t_out, kn * cg)
        wk = wg[:, k0:k0 + kn].reshape(g, kn * cg, cg)
        out = torch.bmm(u, wk) if out is None else out.baddbmm_(u, wk)
    return out.view(g, b, t_out, cg).permute(1, 2, 0, 3).reshape(b, t_out, c) + bias


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    b, t, c, k, g = 2, 399, 768, 128, 16
    x = torch.randn(b, t, c)
    w = torch.randn(c, c // g, k) * 0.01
    bias = torch.randn(c)

    def onednn() -> torch.Tensor:
        return F.conv1d(x.transpose(1, 2), w, bias, padding=k // 2, groups=g).transpose(1, 2).contiguous()

    diff = (onednn() - grouped_conv_time_major(x, w, bias, k // 2, 16)).abs().max().item()
    print(f"max |difference| {diff:.2e}")
    for chunk in (8, 16, 32):
        ref, ours = [], []
        for _ in range(5):
            start = time.perf_counter()
            onednn()
            ref.append(time.perf_counter() - start)
            start = time.perf_counter()
            grouped_conv_time_major(x, w, bias, k // 2, chunk)
            ours.append(time.perf_counter() - start)
        print(f"chunk {chunk}: conv1d {sorted(ref)[2] * 1e3:.1f} ms, split GEMMs {sorted(ours)[2] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
