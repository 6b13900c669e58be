"""Convert a LibriSpeech FLAC tree to 16-bit WAV (optionally resampling), keeping the layout.

Usage::

    python -m utils.convert_to_wav --input_dir /datasets/LibriSpeech --dest_dir /datasets/LibriSpeech-wav
        [--target_sr 16000] [--overwrite] [--jobs 2]

Every ``*.flac`` under the input becomes ``*.wav`` at the same relative path; ``*.trans.txt`` files
are copied, so the filelist tools run unchanged with ``--extension wav`` (``EXT=wav``). Existing
outputs are kept unless ``--overwrite``. Uses soundfile (no sox) and :func:`utils.audio.resample`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from multiprocessing import Pool

import soundfile as sf

from .audio import resample, to_int16
from .common import DataToolError, run_main
from .generate_filelist import find_audio


def convert_one(job: tuple) -> str:
    src, dst, target_sr = job
    try:
        data, sr = sf.read(src, dtype="float64", always_2d=False)
    except Exception as exc:
        return f"cannot read {src}: {exc}"
    if data.ndim > 1:
        data = data.mean(axis=1)
    if target_sr and sr != target_sr:
        data, sr = resample(data, sr, target_sr), target_sr
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".tmp.wav"
    sf.write(tmp, to_int16(data), sr, subtype="PCM_16", format="WAV")
    os.replace(tmp, dst)
    return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.convert_to_wav", description=__doc__.split("\n")[0])
    p.add_argument("--input_dir", "--input-dir", dest="input_dir", required=True)
    p.add_argument("--dest_dir", "--dest-dir", dest="dest_dir", required=True)
    p.add_argument("--target_sr", "--target-sr", dest="target_sr", type=int, default=None,
                   help="resample to this rate (default: keep the file's rate)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    if not os.path.isdir(args.input_dir):
        raise DataToolError(f"input directory {args.input_dir} does not exist")
    jobs = []
    for rel in find_audio(args.input_dir, "flac"):
        dst = os.path.join(args.dest_dir, rel[:-len(".flac")] + ".wav")
        if args.overwrite or not os.path.exists(dst):
            jobs.append((os.path.join(args.input_dir, rel), dst, args.target_sr))
    for dirpath, _, filenames in os.walk(args.input_dir):
        for name in filenames:
            if name.endswith(".trans.txt"):
                rel = os.path.relpath(os.path.join(dirpath, name), args.input_dir)
                os.makedirs(os.path.dirname(os.path.join(args.dest_dir, rel)), exist_ok=True)
                shutil.copyfile(os.path.join(dirpath, name), os.path.join(args.dest_dir, rel))
    errors = []
    if jobs:
        with Pool(max(1, args.jobs)) as pool:
            for i, err in enumerate(pool.imap(convert_one, jobs, chunksize=8), start=1):
                if err:
                    errors.append(err)
                if i % 100 == 0 or i == len(jobs):
                    print(f"\rconverted {i}/{len(jobs)}", end="\n" if i == len(jobs) else "",
                          file=sys.stderr, flush=True)
    if errors:
        raise DataToolError(f"{len(errors)} file(s) failed, first: {errors[0]}")
    print(f"{len(jobs)} file(s) converted into {args.dest_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
