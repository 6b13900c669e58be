"""Convert an audio tree (FLAC, WAV, any rate, mono or multi-channel) to 16-bit mono WAV, keeping the layout.

Usage::

    python -m utils.convert_to_wav --input_dir /datasets/LibriSpeech --dest_dir /datasets/LibriSpeech-wav
        [--target_sr 16000] [--extension flac --extension wav] [--overwrite] [--jobs 2]

Every audio file under the input whose name ends in one of the ``--extension`` values (default ``flac`` and
``wav``, case-insensitive: ``x.WAV`` is found too) becomes ``<same relative path, extension replaced>.wav``:
channels are averaged to mono, the rate is changed to ``--target_sr`` with :func:`utils.audio.resample`
(band-limited, no aliasing) or kept when it is not given. So a flat folder of 22.05 kHz / 44.1 kHz stereo
recordings becomes what training reads with ``--target_sr 16000``. ``*.trans.txt`` files are copied, so the
LibriSpeech filelist tools run unchanged with ``--extension wav`` (``EXT=wav``).

Refused (an error, nothing written): ``--dest_dir`` equal to ``--input_dir`` (a WAV would be its own output),
and two inputs that map to the same output (``a.flac`` and ``a.wav``). A ``--dest_dir`` inside ``--input_dir``
is not searched for inputs (a rerun would convert its own outputs again). An existing output is kept unless
``--overwrite``, except that one which is not mono at ``--target_sr`` (an earlier run without it) is converted
again. Samples that resampling pushes beyond full scale are clipped to 16 bit; the files concerned are counted in
a warning. Uses soundfile (no sox).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from multiprocessing import Pool

import numpy as np
import soundfile as sf

from common.progress import Progress, format_duration

from .audio import resample, to_int16
from .common import DataToolError, run_main
from .generate_filelist import find_audio

DEFAULT_EXTENSIONS = ("flac", "wav")


def convert_one(job: tuple) -> str:
    """Convert ``src`` to ``dst``; returns ``""``, ``"error: ..."`` or ``"clipped: ..."``."""
    src, dst, target_sr = job
    try:
        data, sr = sf.read(src, dtype="float64", always_2d=False)
    except Exception as exc:
        return f"error: cannot read {src}: {exc}"
    if data.ndim > 1:
        data = data.mean(axis=1)
    if target_sr and sr != target_sr:
        data, sr = resample(data, sr, target_sr), target_sr
    clipped = int(np.count_nonzero(np.abs(data) > 32767.5 / 32767.0))
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = dst + ".tmp.wav"
    sf.write(tmp, to_int16(data), sr, subtype="PCM_16", format="WAV")
    os.replace(tmp, dst)
    return f"clipped: {src} ({clipped} samples)" if clipped else ""


def output_is_current(dst: str, target_sr) -> bool:
    """True when ``dst`` exists and, with a target rate, is already mono at it."""
    if not os.path.exists(dst):
        return False
    if not target_sr:
        return True
    try:
        info = sf.info(dst)
    except Exception:
        return False
    return info.samplerate == target_sr and info.channels == 1


def _dest_inside(input_dir: str, dest_dir: str):
    """``dest_dir`` relative to ``input_dir`` (POSIX) when it lies inside it, else None."""
    try:
        rel = os.path.relpath(os.path.realpath(dest_dir), os.path.realpath(input_dir)).replace(os.sep, "/")
    except ValueError:  # (Windows: another drive)
        return None
    return None if rel == ".." or rel.startswith("../") or os.path.isabs(rel) else rel


def plan_jobs(input_dir: str, dest_dir: str, extensions, target_sr, overwrite: bool) -> tuple:
    """``(jobs, skipped)``: ``(src, dst, target_sr)`` for every file to convert, and the number kept as is. A
    ``dest_dir`` inside ``input_dir`` is not searched: its WAV files are outputs, not inputs."""
    if os.path.realpath(input_dir) == os.path.realpath(dest_dir):
        raise DataToolError(f"--dest_dir {dest_dir} is the input directory: choose another one (the converted WAV "
                            "files would replace, or be mistaken for, the originals)")
    inside = _dest_inside(input_dir, dest_dir)
    sources = {}
    for ext in extensions:
        for rel in find_audio(input_dir, ext):
            if inside is None or not rel.startswith(inside + "/"):
                sources[rel] = ext
    outputs = {}
    for rel in sorted(sources):
        out_rel = os.path.splitext(rel)[0] + ".wav"
        if out_rel in outputs:
            raise DataToolError(f"{os.path.join(input_dir, outputs[out_rel])} and {os.path.join(input_dir, rel)} "
                                f"would both become {os.path.join(dest_dir, out_rel)}: rename one of them")
        outputs[out_rel] = rel
    jobs, skipped = [], 0
    for out_rel, rel in sorted(outputs.items(), key=lambda kv: kv[1]):
        dst = os.path.join(dest_dir, out_rel)
        if overwrite or not output_is_current(dst, target_sr):
            jobs.append((os.path.join(input_dir, rel), dst, target_sr))
        else:
            skipped += 1
    return jobs, skipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.convert_to_wav", description=__doc__.split("\n")[0])
    p.add_argument("--input_dir", "--input-dir", dest="input_dir", required=True)
    p.add_argument("--dest_dir", "--dest-dir", dest="dest_dir", required=True)
    p.add_argument("--target_sr", "--target-sr", dest="target_sr", type=int, default=None,
                   help="resample to this rate, e.g. 16000 for training (default: keep the file's rate)")
    p.add_argument("--extension", "--extensions", dest="extensions", action="append", default=None,
                   help="input file extension, case-insensitive; repeat for several (default: flac and wav)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--progress-interval", "--progress_interval", dest="progress_interval", type=float, default=10.0,
                   metavar="SECONDS", help="seconds between progress lines (files converted, rate, ETA) on stderr")
    args = p.parse_args(argv)
    if not os.path.isdir(args.input_dir):
        raise DataToolError(f"input directory {args.input_dir} does not exist")
    extensions = [e.lstrip(".").lower() for e in (args.extensions or DEFAULT_EXTENSIONS)]
    jobs, skipped = plan_jobs(args.input_dir, args.dest_dir, extensions, args.target_sr, args.overwrite)
    inside = _dest_inside(args.input_dir, args.dest_dir)
    for dirpath, _, filenames in os.walk(args.input_dir):
        rel_dir = os.path.relpath(dirpath, args.input_dir).replace(os.sep, "/")
        if inside is not None and (rel_dir == inside or rel_dir.startswith(inside + "/")):
            continue  # (the outputs' own copies)
        for name in filenames:
            if name.endswith(".trans.txt"):
                rel = os.path.relpath(os.path.join(dirpath, name), args.input_dir)
                os.makedirs(os.path.dirname(os.path.join(args.dest_dir, rel)), exist_ok=True)
                shutil.copyfile(os.path.join(dirpath, name), os.path.join(args.dest_dir, rel))
    errors, clipped = [], []
    prog = Progress(total=len(jobs), desc=f"convert_to_wav {args.input_dir}", unit="files",
                    interval_s=args.progress_interval, enabled=not args.quiet)
    if jobs:
        with Pool(max(1, args.jobs)) as pool:
            for msg in pool.imap(convert_one, jobs, chunksize=8):
                if msg.startswith("error: "):
                    errors.append(msg[len("error: "):])
                elif msg:
                    clipped.append(msg[len("clipped: "):])
                prog.update(1)
    if errors:
        raise DataToolError(f"{len(errors)} file(s) failed, first: {errors[0]}")
    if not jobs and not skipped:
        print(f"WARNING: no .{' / .'.join(extensions)} files found under {args.input_dir}", file=sys.stderr)
    print(f"{len(jobs)} file(s) converted into {args.dest_dir} in {format_duration(prog.elapsed)}"
          + (f", {skipped} already there (kept; --overwrite redoes them)" if skipped else ""), file=sys.stderr)
    if clipped:
        print(f"WARNING: {len(clipped)} file(s) exceeded full scale after conversion and were clipped, first: "
              f"{clipped[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
