#!/usr/bin/env python
"""``torch.profiler`` tables of our Base model on the CPU (the profiles cited in docs/BENCHMARKS.md).

    python benchmarks/profile_base.py inference                 # CTC forward, 1 x 6.5 s, plain 12 layers
    python benchmarks/profile_base.py train --batch 2 --seconds 8   # pretraining step (fwd, bwd, fused AdamW)
    python benchmarks/profile_base.py train --bf16               # the same under BF16 autocast

Prints the time per call outside the profiler, then the ops by self CPU time, grouped by input shape.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2Model, preset  # noqa: E402
from wav2vec2.criterion import ContrastiveCriterion  # noqa: E402
from wav2vec2.masking import compute_mask  # noqa: E402
from wav2vec2.negatives import sample_negative_indices  # noqa: E402

NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0,
               dropout_features=0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["inference", "train"])
    p.add_argument("--batch", type=int, default=None, help="default: 1 (inference), 2 (train)")
    p.add_argument("--seconds", type=float, default=None, help="default: 6.5 (inference), 8 (train)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=28)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset("base", hourglass_transformer=None, **NO_DROP)
    batch = args.batch or (1 if args.what == "inference" else 2)
    x = 0.1 * torch.randn(batch, int((args.seconds or (6.5 if args.what == "inference" else 8.0)) * 16000))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    if args.what == "inference":
        model = Wav2Vec2ForCTC(cfg.replace(final_dropout=0.0), 32).eval()

        def run():
            with torch.no_grad(), autocast:
                model(x, None)
    else:
        model = Wav2Vec2Model(cfg).train()
        t = int(model.output_lengths(torch.tensor([x.shape[1]]))[0])
        g = torch.Generator().manual_seed(0)
        mask = compute_mask((batch, t), cfg.mask_prob, cfg.mask_length, min_masks=2, generator=g)
        neg = sample_negative_indices(batch, int(mask[0].sum()), cfg.num_negatives, generator=g)
        crit = ContrastiveCriterion(loss_weights=(0.1, 10.0))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

        def run():
            with autocast:
                loss = crit(model(x, mask_indices=mask, negative_indices=neg, generator=g))[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(2):
        run()
    t0 = time.perf_counter()
    run()
    print(f"{args.what}: {1000 * (time.perf_counter() - t0):.0f} ms per call (outside the profiler)")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=36, max_shapes_column_width=80))
    return 0


if __name__ == "__main__":
    sys.exit(main())
