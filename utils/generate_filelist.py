"""Write a wav2vec manifest (.tsv) for all audio files under a directory.

Usage::

    python -m utils.generate_filelist DIR OUT.tsv [--extension flac|wav] [--quiet] [--progress-interval S]

Line 1 is the absolute path of DIR; every further line is ``<path relative to DIR><TAB><frames>``
with ``frames = soundfile.info(file).frames``. Files are listed in SORTED order of their relative
paths (the reference used filesystem traversal order, which differs between machines).

An unreadable file stops the tool with an error naming it (no manifest is written); so does a
truncated WAV, shorter than its header declares (libsndfile reports the frames present, so the
manifest would agree with the short file). Files processed, rate and ETA are printed to stderr
every ``--progress-interval`` seconds (default 10; ``--quiet`` turns them off).
"""
from __future__ import annotations

import argparse
import os
import sys

import soundfile as sf

from common.progress import Progress

from .common import DataToolError, run_main, write_lines

PROGRESS_INTERVAL_S = 10.0
WAV_FORMATS = ("WAV", "WAVEX")  # soundfile format names of RIFF/WAVE files (common.data.audio.WAV_FORMATS)


def wav_header_tools():
    """The module ``common.data.audio`` (WAV header check), imported on first use: ``common.data`` pulls in torch
    (about 2 s), which FLAC corpora never need. Callers import it before timing progress when WAVs are listed."""
    import common.data.audio as audio
    return audio


def check_not_truncated(path: str, info) -> None:
    """Raise :class:`DataToolError` when ``path`` is a WAV shorter than its header declares."""
    if info.format not in WAV_FORMATS:
        return
    from common.data.errors import DataError
    try:
        wav_header_tools().check_wav_complete(path, info.frames)
    except DataError as exc:
        raise DataToolError(str(exc)) from None


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


def build_manifest(directory: str, extension: str, *, progress: bool = False,
                   interval_s: float = PROGRESS_INTERVAL_S) -> list:
    """Return the manifest lines (root first) for ``directory``; with ``progress``, report files done."""
    if not os.path.isdir(directory):
        raise DataToolError(f"audio directory {directory} does not exist")
    root = os.path.abspath(directory)
    lines = [root]
    files = find_audio(root, extension)
    if any(rel.lower().endswith(".wav") for rel in files):
        wav_header_tools()  # the import is not charged to the first file's rate
    prog = Progress(total=len(files), desc=f"generate_filelist {directory}", unit="files",
                    interval_s=interval_s, enabled=progress)
    for rel in files:
        full = os.path.join(root, rel)
        try:
            info = sf.info(full)
        except Exception as exc:  # soundfile raises RuntimeError/LibsndfileError
            raise DataToolError(f"cannot read audio file {full}: {exc}") from None
        check_not_truncated(full, info)
        lines.append(f"{rel}\t{info.frames}")
        prog.update()
    if files:
        prog.close()
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.generate_filelist", description=__doc__.split("\n")[0])
    p.add_argument("dir", metavar="DIR", help="audio directory (searched recursively)")
    p.add_argument("output", metavar="OUT_TSV", help="manifest to write")
    p.add_argument("--extension", default="flac", help="audio file extension (flac or wav; default flac)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--progress-interval", "--progress_interval", dest="progress_interval", type=float,
                   default=PROGRESS_INTERVAL_S, metavar="SECONDS",
                   help=f"seconds between progress lines on stderr (default {PROGRESS_INTERVAL_S:g})")
    args = p.parse_args(argv)
    lines = build_manifest(args.dir, args.extension, progress=not args.quiet, interval_s=args.progress_interval)
    if len(lines) == 1:
        print(f"WARNING: no .{args.extension} files found under {args.dir}", file=sys.stderr)
    write_lines(args.output, lines)
    total = sum(int(line.rsplit("\t", 1)[1]) for line in lines[1:])
    print(f"{args.output}: {len(lines) - 1} files, {total} samples "
          f"({total / 16000 / 3600:.2f} h at 16 kHz)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
