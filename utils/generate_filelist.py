"""Write a wav2vec manifest (.tsv) for all audio files under a directory.

Usage::

    python -m utils.generate_filelist DIR OUT.tsv [--extension flac|wav] [--quiet] [--progress-interval S]

Line 1 is the absolute path of DIR; every further line is ``<path relative to DIR><TAB><frames>``
with ``frames = soundfile.info(file).frames``. Files are listed in SORTED order of their relative
paths (the reference used filesystem traversal order, which differs between machines).

An unreadable file stops the tool with an error naming it (no manifest is written); so does a
truncated WAV, shorter than its header declares (libsndfile reports the frames present, so the
manifest would agree with the short file). Files that are not ``--sample-rate`` (16000) Hz mono are
listed, as the reference lists them, but a warning on stderr counts them and names the first few:
training and inference refuse them (resample and down-mix first, e.g. ``utils.convert_to_wav``). Audio files with
another extension than ``--extension`` (``.flac`` in a ``wav`` listing, ...) are not listed; a warning counts them. The
summary line gives the hours of audio from each file's own rate. Files processed, rate and ETA are
printed to stderr every ``--progress-interval`` seconds (default 10; ``--quiet`` turns them off).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import soundfile as sf

from common.progress import Progress

from .common import DataToolError, run_main, write_lines

PROGRESS_INTERVAL_S = 10.0
DEFAULT_SAMPLE_RATE = 16000
NAMED_FILES = 5  # files named in a warning about several
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


def check_decodes_to_end(path: str, frames: int) -> Optional[str]:
    """None when the last frame of ``path`` decodes, else why not. For compressed formats (FLAC, OGG) the header's
    frame count survives a truncation, so ``soundfile.info`` alone cannot tell; seeking to the last frame and
    decoding it can (libsndfile fails with "psf_fseek() failed" or "lost sync"), at the cost of a few reads."""
    if frames <= 0:
        return None
    try:
        with sf.SoundFile(path) as f:
            f.seek(frames - 1)
            f.read(1, dtype="float32")
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the header declares {frames} frames but the last one cannot be decoded ({msg}): truncated?"
    return None


AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "opus", "mp3", "aif", "aiff", "au", "w64", "caf")


def other_audio(directory: str, extension: str) -> dict:
    """``{extension: count}`` of the audio files under ``directory`` that ``--extension`` does not list."""
    listed = extension.lstrip(".").lower()
    counts: dict = {}
    for _, _, filenames in os.walk(directory, followlinks=True):
        for name in filenames:
            ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
            if ext in AUDIO_EXTENSIONS and ext != listed:
                counts[ext] = counts.get(ext, 0) + 1
    return counts


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


@dataclass
class Listing:
    """What :func:`scan` found: the manifest lines (root first), the seconds of audio (each file at its own
    rate) and the files that are not ``sample_rate`` Hz mono as ``(relative path, rate, channels)``."""

    lines: List[str]
    seconds: float = 0.0
    unusable: List[Tuple[str, int, int]] = field(default_factory=list)

    def warning(self, sample_rate: int = DEFAULT_SAMPLE_RATE) -> Optional[str]:
        """One line counting the files that are not ``sample_rate`` Hz mono and naming the first few (None if
        there are none)."""
        if not self.unusable:
            return None
        named = ", ".join(f"{rel} ({rate} Hz, {ch} ch)" for rel, rate, ch in self.unusable[:NAMED_FILES])
        more = len(self.unusable) - NAMED_FILES
        return (f"WARNING: {len(self.unusable)} of {len(self.lines) - 1} files are not {sample_rate} Hz mono, which "
                f"training and inference refuse: {named}" + (f" and {more} more" if more > 0 else "")
                + "; resample and down-mix them first (python -m utils.convert_to_wav --input_dir DIR --dest_dir "
                  f"NEW_DIR --target_sr {sample_rate}, then list NEW_DIR with --extension wav)")


def scan(directory: str, extension: str, *, progress: bool = False, interval_s: float = PROGRESS_INTERVAL_S,
         sample_rate: int = DEFAULT_SAMPLE_RATE) -> Listing:
    """List ``directory`` (see the module docstring); with ``progress``, report files done."""
    if not os.path.isdir(directory):
        raise DataToolError(f"audio directory {directory} does not exist")
    root = os.path.abspath(directory)
    listing = Listing(lines=[root])
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
        listing.lines.append(f"{rel}\t{info.frames}")
        if info.samplerate > 0:
            listing.seconds += info.frames / info.samplerate
        if info.samplerate != sample_rate or info.channels != 1:
            listing.unusable.append((rel, int(info.samplerate), int(info.channels)))
        prog.update()
    if files:
        prog.close()
    return listing


def build_manifest(directory: str, extension: str, *, progress: bool = False,
                   interval_s: float = PROGRESS_INTERVAL_S) -> list:
    """Return the manifest lines (root first) for ``directory``; with ``progress``, report files done."""
    return scan(directory, extension, progress=progress, interval_s=interval_s).lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.generate_filelist", description=__doc__.split("\n")[0])
    p.add_argument("dir", metavar="DIR", help="audio directory (searched recursively)")
    p.add_argument("output", metavar="OUT_TSV", help="manifest to write")
    p.add_argument("--extension", default="flac", help="audio file extension (flac or wav; default flac)")
    p.add_argument("--sample-rate", "--sample_rate", dest="sample_rate", type=int, default=DEFAULT_SAMPLE_RATE,
                   help="the rate training reads (--sample_rate); files at another rate, or not mono, are listed "
                        "with a warning (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--progress-interval", "--progress_interval", dest="progress_interval", type=float,
                   default=PROGRESS_INTERVAL_S, metavar="SECONDS",
                   help=f"seconds between progress lines on stderr (default {PROGRESS_INTERVAL_S:g})")
    args = p.parse_args(argv)
    listing = scan(args.dir, args.extension, progress=not args.quiet, interval_s=args.progress_interval,
                   sample_rate=args.sample_rate)
    lines = listing.lines
    if len(lines) == 1:
        print(f"WARNING: no .{args.extension} files found under {args.dir}", file=sys.stderr)
    write_lines(args.output, lines)
    total = sum(int(line.rsplit("\t", 1)[1]) for line in lines[1:])
    print(f"{args.output}: {len(lines) - 1} files, {total} samples, {listing.seconds / 3600:.2f} h", file=sys.stderr)
    others = other_audio(args.dir, args.extension)
    if others:
        found = ", ".join(f"{n} .{ext}" for ext, n in sorted(others.items()))
        print(f"WARNING: not listed: {found} file(s) under {args.dir} (only .{args.extension.lstrip('.')} files are; "
              f"python -m utils.convert_to_wav --input_dir {args.dir} --dest_dir NEW_DIR --target_sr "
              f"{args.sample_rate} makes one .wav tree of them all)", file=sys.stderr)
    warning = listing.warning(args.sample_rate)
    if warning:
        print(warning, file=sys.stderr)  # last: it must not scroll away behind the summary
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
