"""Model FLOPs per step of the docs/BENCHMARKS.md configurations, beside torch's FLOP counter on the same step.

    python -m benchmarks.flop_counts

``wav2vec2.flops`` counts from the shapes (what ``train.py`` logs as ``tflop/s`` / ``mfu`` and
``benchmarks.train_step`` prints); ``torch.utils.flop_counter`` runs our forward and backward once. The two differ
where the counter is wrong: it charges the grouped positional convolution's backward as if it were ungrouped and does
not see the CPU's fused attention kernel (tests/test_flops.py shows them equal once both are accounted for).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.train_step import NO_DROP, VOCAB, _finetune_setup, _pretrain_setup
from wav2vec2 import preset
from wav2vec2.flops import ctc_flops, pretraining_flops

CONFIGS = [  # (name, preset, plain stack, batch, seconds, task): the rows of the CPU pretraining-step table
    ("tiny (8 x 4 s)", "tiny", True, 8, 4.0, "pretrain"),
    ("Base plain (2 x 8 s)", "base", True, 2, 8.0, "pretrain"),
    ("Base Hourglass (2 x 8 s)", "base", False, 2, 8.0, "pretrain"),
    ("Base fine-tuning (2 x 8 s)", "base", True, 2, 8.0, "finetune"),
]


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="python -m benchmarks.flop_counts", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    for name, preset_name, plain, batch, seconds, task in CONFIGS:
        args = argparse.Namespace(batch=batch, seconds=seconds, skip_hf=True, letters=15.0)
        overrides = dict(NO_DROP, **({"hourglass_transformer": None} if plain else {}))
        torch.manual_seed(0)
        x = torch.randn(batch, int(seconds * 16000)) * 0.1
        setup = _finetune_setup if task == "finetune" else _pretrain_setup
        ours, forward, _, _, tokens, _ = setup(args, preset(preset_name, **overrides), x, torch.device("cpu"))
        if task == "finetune":
            model = ctc_flops(ours.cfg, batch, x.shape[1], VOCAB)
        else:
            model = pretraining_flops(ours.cfg, batch, x.shape[1], tokens)
        with FlopCounterMode(display=False) as counter:
            forward().backward()
        print(f"{name}: model FLOPs {model.total / 1e9:.1f} GFLOP/step (forward {model.forward / 1e9:.1f}), "
              f"torch's counter {counter.get_total_flops() / 1e9:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
