"""Build a label dictionary (``dict.ltr.txt``) from a letter label file.

Usage::

    python -m utils.generate_dictionary IN.ltr [MORE.ltr ...] OUT.txt

Counts every token of every line, as training splits a label line (at whitespace; ``|`` counted) and
writes ``<symbol> <count>`` lines by descending count; equal counts are ordered by symbol (code point), so
the result does not depend on line order. For ``.ltr`` files a token is a letter (a letter written with a
combining accent, ``E`` + U+0301, is one token when ``utils.text_labels`` wrote it so); a token of several
characters is one symbol, because training looks the whole token up (counting its characters instead would
leave it out of the dictionary). Unlike the reference, the last character of a line is
never dropped (the reference removed it assuming a newline; a final line without one lost a letter).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

from .common import DataToolError, read_lines, run_main, write_lines


def count_symbols(path: str) -> Counter:
    if not os.path.isfile(path):
        raise DataToolError(f"label file {path} does not exist")
    counts = Counter()
    for line in read_lines(path):
        counts.update(line.split())
    return counts


def dictionary_lines(counts: Counter) -> list:
    return [f"{sym} {n}" for sym, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.generate_dictionary", description=__doc__.split("\n")[0])
    p.add_argument("inputs", metavar="IN_LTR", nargs="+",
                   help="label file(s); with several, their counts are added (e.g. train.ltr dev.ltr test.ltr, so "
                        "that a letter only the evaluation transcripts contain still has a model output)")
    p.add_argument("output", metavar="OUT_TXT")
    args = p.parse_args(argv)
    counts = Counter()
    for path in args.inputs:
        counts.update(count_symbols(path))
    if not counts:
        raise DataToolError(f"{' '.join(args.inputs)}: no symbols found")
    write_lines(args.output, dictionary_lines(counts))
    print(f"{args.output}: {len(counts)} symbols", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
