"""Select nested labelled subsets of a given duration from a labelled list (e.g. train-10min, train-1h).

Usage::

    python -m utils.select_subset DIR/train --minutes 10 60 [--seed 1] [--out-dir DIR] [--prefix train]

Utterances are taken in a seeded random order, round-robin over speakers (so every subset is
speaker-balanced), until each requested duration is reached; since all sizes walk the same order
the subsets are nested (10 min inside 1 h, as Libri-light's 1h inside 10h). Each subset keeps the
source list's order and is written as ``<prefix>-<size>.{tsv,wrd,ltr}`` where size is ``<h>h`` for
whole hours and ``<m>min`` otherwise. The speaker is the first ``-`` field of the file stem.
"""
from __future__ import annotations

import argparse
import os
import random
import sys

from .common import DataToolError, load_labelled, run_main


def size_name(minutes: float) -> str:
    if minutes >= 60 and minutes % 60 == 0:
        return f"{int(minutes // 60)}h"
    if float(minutes).is_integer():
        return f"{int(minutes)}min"
    return f"{minutes:g}min"


def balanced_order(rel_paths: list, seed: int) -> list:
    """Indices in a seeded, speaker round-robin order."""
    by_speaker = {}
    for i, rel in enumerate(rel_paths):
        speaker = os.path.basename(rel).split("-", 1)[0]
        by_speaker.setdefault(speaker, []).append(i)
    rng = random.Random(f"select_subset:{seed}")
    speakers = sorted(by_speaker)
    rng.shuffle(speakers)
    queues = []
    for s in speakers:
        q = list(by_speaker[s])
        rng.shuffle(q)
        queues.append(q)
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop())
    return order


def select_nested(sizes: list, order: list, minutes: list, sample_rate: int) -> dict:
    """``{minutes: sorted indices}`` for each requested duration."""
    result = {}
    for m in sorted(minutes):
        target = m * 60 * sample_rate
        total, chosen = 0, []
        for i in order:
            if total >= target:
                break
            chosen.append(i)
            total += sizes[i]
        result[m] = sorted(chosen)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.select_subset", description=__doc__.split("\n")[0])
    p.add_argument("source", metavar="PREFIX", help="labelled list without extension, e.g. data/train")
    p.add_argument("--minutes", type=float, nargs="+", required=True, help="subset durations in minutes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out-dir", default=None, help="default: the source directory")
    p.add_argument("--prefix", default=None, help="output name prefix (default: the source name)")
    p.add_argument("--sample-rate", type=int, default=16000)
    args = p.parse_args(argv)
    if any(m <= 0 for m in args.minutes):
        raise DataToolError("--minutes must be positive")
    src = load_labelled(args.source)
    entries = src.manifest.entries
    sizes = [e[1] for e in entries]
    total_min = sum(sizes) / args.sample_rate / 60
    order = balanced_order([e[0] for e in entries], args.seed)
    out_dir = args.out_dir or os.path.dirname(args.source) or "."
    prefix = args.prefix or os.path.basename(args.source)
    for m, chosen in select_nested(sizes, order, args.minutes, args.sample_rate).items():
        name = f"{prefix}-{size_name(m)}"
        src.write_subset(os.path.join(out_dir, name), chosen)
        got = sum(sizes[i] for i in chosen) / args.sample_rate / 60
        note = f" (WARNING: the source has only {total_min:.1f} min)" if total_min < m else ""
        print(f"{name}: {len(chosen)} utterances, {got:.1f} min{note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
