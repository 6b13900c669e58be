"""One pretraining step (forward, backward, AdamW step) of ours vs HF transformers' Wav2Vec2ForPreTraining.

Same configuration, same weights, same batch, same mask and negatives; the two models run alternately in one
process and the medians are compared. Also prints frames/s, masked frames/s, model FLOPs per step (counted by
torch's FLOP counter on our forward+backward), achieved FLOP/s and its fraction of this machine's measured dense
matmul rate (MFU), and peak memory (CPU: max RSS growth is not measured per model; see --help).

    python -m benchmarks.train_step --preset base --no-hourglass --batch 4 --seconds 15.6 --steps 6
    python -m benchmarks.train_step --preset base --batch 4 --seconds 15.6 --steps 6      # ours with Hourglass
    python -m benchmarks.train_step --preset tiny --batch 8 --seconds 4 --steps 20
    python -m benchmarks.train_step --preset base --no-hourglass --bf16 ...               # BF16 autocast (ours)

HF has no Hourglass encoder: with Hourglass on, HF runs the plain 12-layer stack (the model the Hourglass replaces).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common.optim import OptimizerConfig, build_optimizer
from wav2vec2 import Wav2Vec2Model, preset
from wav2vec2.checkpoint import hf_config, hf_state_dict
from wav2vec2.criterion import ContrastiveCriterion
from wav2vec2.masking import compute_mask
from wav2vec2.negatives import sample_negative_indices

NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
               dropout_input=0.0, dropout_features=0.0)


def matmul_rate(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def _hf_negatives(neg, mask):
    b, t = mask.shape
    m = int(mask[0].sum())
    pos = torch.stack([mask[i].nonzero().squeeze(1) for i in range(b)])
    utt, slot = neg // m, neg % m
    frame = pos[utt, slot] + utt * t
    out = torch.zeros(b, t, neg.shape[-1], dtype=torch.long)
    for i in range(b):
        out[i, pos[i]] = frame[i]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base", choices=["base", "large", "tiny"])
    p.add_argument("--no-hourglass", action="store_true", help="plain stack (fairseq Base)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=15.6, help="utterance length (all equal, as cropped pretraining batches)")
    p.add_argument("--steps", type=int, default=6, help="measured steps per model (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bf16", action="store_true", help="ours under BF16 autocast (HF stays FP32 unless --hf-bf16)")
    p.add_argument("--hf-bf16", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = dict(NO_DROP)
    if args.no_hourglass:
        overrides["hourglass_transformer"] = None
    cfg = preset(args.preset, **overrides)
    ours = Wav2Vec2Model(cfg).train()
    x = torch.randn(args.batch, int(args.seconds * 16000)) * 0.1
    t = int(ours.output_lengths(torch.tensor([x.shape[1]]))[0])
    g = torch.Generator().manual_seed(0)
    mask = compute_mask((args.batch, t), cfg.mask_prob, cfg.mask_length, min_masks=2, generator=g)
    m = int(mask[0].sum())
    neg = sample_negative_indices(args.batch, m, cfg.num_negatives, generator=g)
    crit = ContrastiveCriterion(loss_weights=(0.1, 10.0))
    # ours: the trainer's optimizer (torch AdamW with the fused kernel on CPU and CUDA); HF: torch AdamW with
    # foreach=True, faster than the per-tensor loop the HF Trainer's default "adamw_torch" gets on CPU
    opt_ours = build_optimizer(ours.parameters(), OptimizerConfig(lr=1e-5))

    hf = opt_hf = None
    if not args.skip_hf:
        import transformers

        plain = cfg.replace(hourglass_transformer=None)
        hc = {k: v for k, v in hf_config(plain).items() if k != "wav2vec2_trainer_config"}
        hf = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**hc)).train()
        if cfg.hourglass is None:
            hf.load_state_dict(hf_state_dict(ours))
        hf_neg = _hf_negatives(neg, mask)
        opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-5, foreach=True)

    def step_ours():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            out = ours(x, mask_indices=mask, negative_indices=neg, generator=g)
            loss, _, _ = crit(out)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_hf():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if args.hf_bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            out = hf(x, mask_time_indices=mask, sampled_negative_indices=hf_neg)
            loss = out.loss
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    # FLOPs of one of our steps (forward + backward)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = ours(x, mask_indices=mask, negative_indices=neg, generator=g)
        crit(out)[0].backward()
    ours.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()

    for _ in range(2):
        step_ours()
        if hf is not None:
            step_hf()
    times_ours, times_hf = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step_ours()
        times_ours.append(time.perf_counter() - t0)
        if hf is not None:
            t0 = time.perf_counter()
            step_hf()
            times_hf.append(time.perf_counter() - t0)
    rate = matmul_rate(torch.bfloat16 if args.bf16 else torch.float32)
    med = statistics.median(times_ours)
    frames = args.batch * t
    print(f"preset={args.preset} hourglass={cfg.hourglass_transformer} batch={args.batch}x{args.seconds}s "
          f"frames/step={frames} masked/step={args.batch * m} threads={torch.get_num_threads()} "
          f"precision={'bf16' if args.bf16 else 'fp32'} optimizer: ours {opt_ours.implementation_name}, "
          f"HF torch.AdamW(foreach)")
    print(f"ours: median {med * 1000:.0f} ms/step  {frames / med:,.0f} frames/s  {args.batch * m / med:,.0f} masked frames/s")
    print(f"ours: {flops / 1e9:.1f} GFLOP/step (fwd+bwd)  {flops / med / 1e9:.1f} GFLOP/s  "
          f"MFU {flops / med / rate:.1%} of measured {'bf16' if args.bf16 else 'fp32'} matmul {rate / 1e9:.0f} GFLOP/s")
    if hf is not None:
        mh = statistics.median(times_hf)
        print(f"HF:   median {mh * 1000:.0f} ms/step  {frames / mh:,.0f} frames/s")
        print(f"ratio (ours throughput / HF throughput): {mh / med:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
