"""Print the effective rank of each layer's output of a checkpoint on a few utterances of a filelist.

    python -m utils.layer_rank CHECKPOINT [CHECKPOINT ...] --data data/synthetic/LibriSpeech --subset dev-clean

A pretrained model whose top layers use only a few directions (rank of a few units against the encoder width) is a
poor starting point for fine-tuning; see :mod:`wav2vec2.probe` and docs/RESULTS.md. ``random:<preset>`` probes a
randomly initialised model of that preset, for comparison.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch

from common.data.audio import AudioOrigin, normalize_waveform, read_audio
from common.data.manifest import load_manifest
from wav2vec2.checkpoint import load_model
from wav2vec2.config import preset
from wav2vec2.model import Wav2Vec2Model
from wav2vec2.probe import layer_effective_ranks


def _load(spec: str, seed: int) -> torch.nn.Module:
    if spec.startswith("random:"):
        torch.manual_seed(seed)
        return Wav2Vec2Model(preset(spec.split(":", 1)[1]))
    return load_model(spec)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.layer_rank", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint paths (ours/fairseq/NVIDIA/HF dir) or random:<preset>")
    p.add_argument("--data", required=True, help="directory holding <subset>.tsv")
    p.add_argument("--subset", default="dev-clean")
    p.add_argument("--utterances", type=int, default=8, help="first N utterances of the filelist")
    p.add_argument("--seed", type=int, default=0, help="seed of random:<preset> models")
    p.add_argument("--warn_below", type=float, default=0.0,
                   help="print a WARNING when the effective rank of the features or of any layer is below this "
                        "(e.g. 4)")
    args = p.parse_args(argv)
    if args.utterances < 1:
        p.error(f"--utterances must be at least 1, got {args.utterances}")
    from common.data.errors import DataError, error_message
    from wav2vec2.checkpoint import CheckpointError

    try:
        return _report(args)
    except (CheckpointError, DataError, OSError) as exc:  # a missing/bad checkpoint or corpus file: one line
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace) -> int:
    manifest = load_manifest(os.path.join(args.data, f"{args.subset}.tsv"))
    n = min(args.utterances, len(manifest))
    if n == 0:
        print(f"ERROR: {manifest.path} has no utterances", file=sys.stderr)
        return 2
    raw = [torch.from_numpy(read_audio(manifest.audio_path(i), expected_num_samples=int(manifest.sizes[i]),
                                       origin=AudioOrigin(manifest.path, int(manifest.line_numbers[i]))))
           for i in range(n)]
    for spec in args.checkpoints:
        model = _load(spec, args.seed)
        w2v = getattr(model, "w2v_model", model)
        waves = [normalize_waveform(w) if w2v.cfg.normalize else w for w in raw]
        ranks = layer_effective_ranks(model, waves)
        width = w2v.cfg.encoder_embed_dim
        cells = " ".join(f"{k}={v:.1f}" for k, v in ranks.items())
        print(f"{spec}: effective rank (of {width}) {cells}")
        # the lowest of all probed outputs: a collapsed extractor (constant features, rank 0) can leave the top
        # layers a few positional directions (pos_conv edge effects) that look healthier than the model is
        low = min(ranks, key=ranks.get)
        if ranks[low] < args.warn_below:
            print(f"WARNING: {spec}: the effective rank of {low} is {ranks[low]:.1f} (below {args.warn_below:g}): the "
                  f"model has collapsed onto a few directions; fine-tuning from it is likely to stall at blank-only "
                  f"output (lower the pretraining lr or pretrain longer; docs/RESULTS.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
