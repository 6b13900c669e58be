"""Convert between checkpoint formats.

    python -m wav2vec2.convert SRC DST --to hf|fairseq|ours

SRC is anything :func:`wav2vec2.load_model` reads (ours, NVIDIA DLE, fairseq, a HuggingFace directory).
``--to hf`` writes a directory (config.json, model.safetensors, vocab.json for CTC models with a dictionary);
``--to fairseq`` a fairseq-style checkpoint; ``--to ours`` this project's format (also readable by NVIDIA's).
"""

from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, model_checkpoint, save_fairseq, save_hf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wav2vec2.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint file or HuggingFace directory")
    p.add_argument("dst", help="output file (fairseq, ours) or directory (hf)")
    p.add_argument("--to", required=True, choices=["hf", "fairseq", "ours"])
    p.add_argument("--use_ema", action="store_true", help="convert the EMA weights of a checkpoint of ours")
    args = p.parse_args(argv)
    try:
        loaded = load_checkpoint(args.src, use_ema=args.use_ema)
        if args.to == "hf":
            save_hf(loaded.model, args.dst, labels=loaded.labels)
        elif args.to == "fairseq":
            save_fairseq(loaded.model, args.dst, labels=loaded.labels)
        else:
            atomic_torch_save(model_checkpoint(loaded.model, labels=loaded.labels), args.dst)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = sum(p.numel() for p in loaded.model.parameters())
    print(f"converted {loaded.source_format} {loaded.kind} model ({n / 1e6:.1f}M params) -> {args.to}: {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
