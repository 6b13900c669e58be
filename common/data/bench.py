"""Loader throughput benchmark (batches/s and audio seconds/s) on a manifest, plus a tiny corpus generator.

Examples::

    python -m common.data.bench --make-corpus /tmp/corpus --num-files 400        # writes FLAC + train.tsv
    python -m common.data.bench --manifest /tmp/corpus/train.tsv --max-tokens 1400000 \\
        --max-sample-size 250000 --num-workers 2 --batches 60

The generated corpus is noise-like speech stand-in audio (a few decaying sines plus noise), 16 kHz mono FLAC with
lengths drawn uniformly from ``--min-seconds``..``--max-seconds``; it only exercises decoding and collation.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from typing import List, Optional, Sequence

import numpy as np
import soundfile as sf

from common.data.dataset import AudioDataset
from common.data.loader import LoaderConfig, build_loader
from common.data.manifest import load_manifest

SAMPLE_RATE = 16000


def write_corpus(
    directory: str,
    lengths: Sequence[int],
    split: str = "train",
    fmt: str = "flac",
    seed: int = 0,
    transcripts: Optional[Sequence[str]] = None,
) -> str:
    """Write one 16 kHz mono file per length, ``<split>.tsv`` (and ``<split>.ltr`` when transcripts are given).

    Samples are multiples of 1/32768 so that 16-bit files read back exactly. Returns the manifest path.
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: List[str] = [os.path.abspath(directory)]
    for i, n in enumerate(lengths):
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.uniform(90, 300)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) * np.exp(-4 * (t % 0.5)) + 0.05 * rng.standard_normal(n)
        x = np.round(np.clip(x, -1, 1 - 1 / 32768) * 32768).astype(np.int16)
        name = f"utt{i:05d}.{fmt}"
        sf.write(os.path.join(directory, name), x, SAMPLE_RATE, subtype="PCM_16")
        rows.append(f"{name}\t{n}")
    manifest = os.path.join(directory, f"{split}.tsv")
    with open(manifest, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    if transcripts is not None:
        with open(os.path.join(directory, f"{split}.ltr"), "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in transcripts))
    return manifest


def bench(manifest: str, config: LoaderConfig, batches: int, warmup: int) -> dict:
    """Iterate ``warmup`` then ``batches`` batches (wrapping over epochs); return timing figures."""
    ds = AudioDataset(load_manifest(manifest))
    loader = build_loader(ds, config)
    n_done, samples, t0, epoch = 0, 0, None, 1
    total = warmup + batches
    start_wall = time.perf_counter()
    while n_done < total:
        loader.set_epoch(epoch)
        for batch in loader:
            n_done += 1
            if n_done == warmup:
                t0 = time.perf_counter()
            elif n_done > warmup:
                samples += int(batch["lengths"].sum())
            if n_done >= total:
                break
        epoch += 1
    dt = time.perf_counter() - (t0 if t0 is not None else start_wall)
    return {
        "batches": batches,
        "seconds": dt,
        "batches_per_s": batches / dt,
        "audio_s_per_s": samples / SAMPLE_RATE / dt,
        "batches_per_epoch": len(loader),
        "startup_s": (t0 or start_wall) - start_wall,
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make-corpus", metavar="DIR", help="write a synthetic FLAC corpus and DIR/train.tsv, then exit")
    p.add_argument("--num-files", type=int, default=400)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=16.0)
    p.add_argument("--manifest", help="manifest (.tsv) to benchmark")
    p.add_argument("--max-tokens", type=int, default=1_400_000)
    p.add_argument("--max-sample-size", type=int, default=250_000, help="crop cap; 0 = none")
    p.add_argument("--pad", action="store_true", help="pad instead of crop (fine-tuning style)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--prefetch-factor", type=int, default=2)
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.make_corpus:
        rng = np.random.default_rng(args.seed)
        lengths = rng.integers(int(args.min_seconds * SAMPLE_RATE), int(args.max_seconds * SAMPLE_RATE) + 1,
                               size=args.num_files)
        print(write_corpus(args.make_corpus, lengths.tolist(), seed=args.seed))
        return
    if not args.manifest:
        p.error("--manifest or --make-corpus is required")
    cfg = LoaderConfig(max_tokens=args.max_tokens, max_sample_size=args.max_sample_size or None, pad=args.pad,
                       num_workers=args.num_workers, prefetch_factor=args.prefetch_factor, seed=args.seed)
    r = bench(args.manifest, cfg, args.batches, args.warmup)
    print(f"{r['batches_per_s']:.2f} batches/s, {r['audio_s_per_s']:.0f} s of audio/s "
          f"({r['batches']} batches in {r['seconds']:.2f} s after {args.warmup} warm-up batches, "
          f"start-up {r['startup_s']:.2f} s, {r['batches_per_epoch']} batches/epoch, "
          f"num_workers={args.num_workers})")


if __name__ == "__main__":
    main()
