"""Write a randomly initialised pretraining model as a checkpoint (a baseline for fine-tuning without pretraining).

    python -m wav2vec2.init_checkpoint --preset tiny --out model.pt [--seed 1]
"""

from __future__ import annotations

import argparse
import sys

import torch

from common.checkpointing import atomic_torch_save

from .checkpoint import model_checkpoint
from .config import PRESETS, preset
from .model import Wav2Vec2Model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wav2vec2.init_checkpoint", description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model = Wav2Vec2Model(preset(args.preset))
    atomic_torch_save(model_checkpoint(model, args={"seed": args.seed, "random_init": True}), args.out)
    print(f"wrote a randomly initialised {args.preset} model to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
