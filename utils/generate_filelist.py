"""Write a wav2vec manifest (.tsv) for all audio files under a directory.

Usage::

    python -m utils.generate_filelist DIR OUT.tsv [--extension flac|wav]

Line 1 is the absolute path of DIR; every further line is ``<path relative to DIR><TAB><frames>``
with ``frames = soundfile.info(file).frames``. Files are listed in SORTED order of their relative
paths (the reference used filesystem traversal order, which differs between machines).
"""
from __future__ import annotations

import argparse
import os
import sys

import soundfile as sf

from .common import DataToolError, run_main, write_lines


def find_audio(directory: str, extension: str) -> list:
    """Relative POSIX paths of all files ending in ``.<extension>`` under ``directory``, sorted."""
    suffix = "." + extension.lstrip(".").lower()
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(suffix):
                rel = os.path.relpath(os.path.join(dirpath, name), directory)
                found.append(rel.replace(os.sep, "/"))
    found.sort()
    return found


def build_manifest(directory: str, extension: str) -> list:
    """Return the manifest lines (root first) for ``directory``."""
    if not os.path.isdir(directory):
        raise DataToolError(f"audio directory {directory} does not exist")
    root = os.path.abspath(directory)
    lines = [root]
    for rel in find_audio(root, extension):
        full = os.path.join(root, rel)
        try:
            frames = sf.info(full).frames
        except Exception as exc:  # soundfile raises RuntimeError/LibsndfileError
            raise DataToolError(f"cannot read audio file {full}: {exc}") from None
        lines.append(f"{rel}\t{frames}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.generate_filelist", description=__doc__.split("\n")[0])
    p.add_argument("dir", metavar="DIR", help="audio directory (searched recursively)")
    p.add_argument("output", metavar="OUT_TSV", help="manifest to write")
    p.add_argument("--extension", default="flac", help="audio file extension (flac or wav; default flac)")
    args = p.parse_args(argv)
    lines = build_manifest(args.dir, args.extension)
    if len(lines) == 1:
        print(f"WARNING: no .{args.extension} files found under {args.dir}", file=sys.stderr)
    write_lines(args.output, lines)
    total = sum(int(line.rsplit("\t", 1)[1]) for line in lines[1:])
    print(f"{args.output}: {len(lines) - 1} files, {total} samples "
          f"({total / 16000 / 3600:.2f} h at 16 kHz)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
