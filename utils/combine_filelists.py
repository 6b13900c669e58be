"""Combine several manifests into one, relative to the common directory of their roots.

Usage::

    python -m utils.combine_filelists A.tsv B.tsv ... [-o OUT.tsv]

Line 1 of the output is the common path of all roots; every entry of every input, in input order,
is re-expressed relative to it. Written to stdout (as the reference) or to ``-o``.
"""
from __future__ import annotations

import argparse
import os
import sys

from .common import DataToolError, read_manifest, run_main, write_lines


def combine(paths: list) -> list:
    """Return the combined manifest lines."""
    if not paths:
        raise DataToolError("no manifests given")
    manifests = [read_manifest(p) for p in paths]
    try:
        root = os.path.commonpath([os.path.abspath(m.root) for m in manifests])
    except ValueError as exc:
        raise DataToolError(f"manifest roots have no common path: {exc}") from None
    lines = [root]
    for m in manifests:
        prefix = os.path.relpath(os.path.abspath(m.root), root)
        for rel, n, _ in m.entries:
            joined = os.path.normpath(os.path.join(prefix, rel)).replace(os.sep, "/")
            lines.append(f"{joined}\t{n}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.combine_filelists", description=__doc__.split("\n")[0])
    p.add_argument("tsvs", nargs="+", metavar="TSV")
    p.add_argument("-o", "--output", default=None, help="output manifest (default: stdout)")
    args = p.parse_args(argv)
    lines = combine(args.tsvs)
    if args.output:
        write_lines(args.output, lines)
    else:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
