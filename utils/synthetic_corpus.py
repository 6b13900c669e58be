"""Synthesise a small LibriSpeech-layout English speech corpus with espeak-ng.

Usage::

    python -m utils.synthetic_corpus --out-dir data/synthetic [--train-minutes 60] [--eval-minutes 4]
        [--seed 1] [--jobs 2] [--splits train dev-clean dev-other test-clean test-other] [--force]

Layout (what the LibriSpeech filelist tools expect)::

    <out-dir>/LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac   (16 kHz, 16 bit)
    <out-dir>/LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt       (<utt-id> TEXT)
    <out-dir>/LibriSpeech/<split>/.synthetic_complete.json                                (settings + summary)
    <out-dir>/LibriSpeech/SPEAKERS.TXT                                                    (voice of every speaker)
    <out-dir>/LibriSpeech/CHAPTERS.TXT                                                    (speaker, minutes of every chapter)

Splits (like LibriSpeech; a "speaker" is an espeak-ng voice + variant + pitch + speed):

* ``train``: accents ``en`` (British) and ``en-us`` x variants m1-m4, f1-f4 (16 speakers, 2 chapters
  each), speed 145-185 words/min (+-8 per utterance), pitch 30-70;
* ``dev-clean``, ``test-clean``: the training voices/variants, as new speakers (new pitch and speed
  within the training range), 4 speakers each;
* ``dev-other``, ``test-other``: accents and variants never used in training (``en-gb-scotland``,
  ``en-029``, ``en-gb-x-gbclan``, ``en-gb-x-gbcwmd`` x m5-m8, f5; dev and test disjoint), speeds
  outside the training range (115-132 or 200-225 words/min), plus light background noise (20-30 dB SNR).

Sentences come from :mod:`utils.sentences`. All random choices are made up front from ``--seed``
(Python's string-seeded ``random.Random`` and numpy's PCG64), workers only execute the plan, so the
same seed gives byte-identical files whatever ``--jobs``. espeak-ng's 22050 Hz output is resampled to
16 kHz with :func:`utils.audio.resample`.

Each split stops at the first utterance that brings its audio to the requested minutes (train:
``--train-minutes``, others: ``--eval-minutes``). A finished split is skipped on later runs with the
same settings; an interrupted one continues (finished files are reused). Different settings on an
existing split are an error unless ``--force``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing import Pool

import numpy as np
import soundfile as sf

from common.progress import Progress

from .audio import resample, to_int16
from .common import DataToolError, atomic_write_text, run_main
from .sentences import SentenceGenerator

GENERATOR_VERSION = 2
SAMPLE_RATE = 16000
DEFAULT_SPLITS = ["train", "dev-clean", "dev-other", "test-clean", "test-other"]
INSTALL_HINT = ("install it with `bash scripts/install_system_deps.sh` "
                "(Debian/Ubuntu: `apt-get install espeak-ng`; macOS: `brew install espeak-ng`)")

TRAIN_ACCENTS = ["en", "en-us"]
TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4"]
OTHER_ACCENTS = ["en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
OTHER_VARIANTS = ["m5", "m6", "m7", "m8", "f5"]
SPLIT_BASE_ID = {"train": 1000, "dev-clean": 2000, "dev-other": 3000, "test-clean": 4000, "test-other": 5000}


@dataclass
class Speaker:
    id: int
    sex: str
    voice: str  # espeak-ng voice, e.g. "en-us+f3"
    pitch: int  # 0-99
    speed: int  # words per minute
    amplitude: int  # 0-200
    chapters: list


@dataclass
class Utterance:
    path: str  # relative to the split directory
    utt_id: str
    text: str
    voice: str
    speed: int
    pitch: int
    amplitude: int
    snr_db: float | None
    noise_seed: int


def _seed_int(*parts) -> int:
    """A stable 63-bit integer from the parts (independent of PYTHONHASHSEED and platform)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _is_other(split: str) -> bool:
    return split.endswith("-other")


def make_speakers(split: str, seed: int) -> list:
    """The speakers of ``split`` (deterministic from the seed)."""
    rng = random.Random(f"synthetic-speakers:{seed}:{split}")
    base = SPLIT_BASE_ID.get(split, 6000 + _seed_int(split) % 3000)
    if split == "train" or not (split.endswith("-clean") or _is_other(split)):
        combos = [(a, v) for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS]
        n_chapters = 2
    elif split.endswith("-clean"):
        combos = [(a, v) for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS]
        rng.shuffle(combos)
        combos = combos[:4]
        n_chapters = 1
    else:
        # dev-other and test-other draw disjoint combinations from one seeded shuffle.
        pool = [(a, v) for a in OTHER_ACCENTS for v in OTHER_VARIANTS]
        random.Random(f"synthetic-other-pool:{seed}").shuffle(pool)
        combos = pool[:4] if split.startswith("dev") else pool[4:8]
        n_chapters = 1
    speakers = []
    for k, (accent, variant) in enumerate(combos):
        sid = base + 1 + k
        if _is_other(split):
            speed = rng.randint(115, 132) if rng.random() < 0.5 else rng.randint(200, 225)
            pitch, amplitude = rng.randint(20, 80), rng.randint(60, 140)
        elif split == "train":
            speed, pitch, amplitude = rng.randint(145, 185), rng.randint(30, 70), rng.randint(80, 120)
        else:
            speed, pitch, amplitude = rng.randint(150, 180), rng.randint(32, 68), rng.randint(80, 120)
        chapters = [sid * 10 + c for c in range(n_chapters)]
        speakers.append(Speaker(id=sid, sex="F" if variant.startswith("f") else "M",
                                voice=f"{accent}+{variant}", pitch=pitch, speed=speed, amplitude=amplitude,
                                chapters=chapters))
    return speakers


def plan_utterances(split: str, seed: int, speakers: list):
    """Infinite, deterministic sequence of :class:`Utterance` for ``split`` (speakers round-robin)."""
    text_gen = SentenceGenerator(random.Random(f"synthetic-text:{seed}:{split}"))
    rng = random.Random(f"synthetic-prosody:{seed}:{split}")
    counters = {}
    i = 0
    while True:
        spk = speakers[i % len(speakers)]
        chapter = spk.chapters[(i // len(speakers)) % len(spk.chapters)]
        n = counters.get(chapter, 0)
        counters[chapter] = n + 1
        utt_id = f"{spk.id}-{chapter}-{n:04d}"
        jitter = 5 if split.endswith("-clean") else 8
        speed = spk.speed + rng.randint(-jitter, jitter)
        pitch = min(99, max(0, spk.pitch + rng.randint(-4, 4)))
        snr = round(rng.uniform(20.0, 30.0), 2) if _is_other(split) else None
        yield Utterance(path=f"{spk.id}/{chapter}/{utt_id}.flac", utt_id=utt_id, text=text_gen.utterance(),
                        voice=spk.voice, speed=speed, pitch=pitch, amplitude=spk.amplitude, snr_db=snr,
                        noise_seed=_seed_int("noise", seed, split, utt_id))
        i += 1


def find_espeak(binary: str = "espeak-ng") -> str:
    path = shutil.which(binary)
    if path is None:
        raise DataToolError(f"`{binary}` was not found on PATH; the synthetic corpus needs espeak-ng: "
                            + INSTALL_HINT)
    return path


def espeak_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def synthesize(utt: Utterance, binary: str) -> np.ndarray:
    """Speak ``utt`` with espeak-ng; return int16 samples at 16 kHz."""
    with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
        wav = os.path.join(tmp, "out.wav")
        cmd = [binary, "-v", utt.voice, "-s", str(utt.speed), "-p", str(utt.pitch), "-a", str(utt.amplitude),
               "-w", wav, utt.text.lower()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0 or not os.path.exists(wav):
            raise RuntimeError(f"espeak-ng failed ({' '.join(cmd[:-1])} ...): {proc.stderr.strip()}")
        data, sr = sf.read(wav, dtype="float64", always_2d=True)
    x = data.mean(axis=1)
    if len(x) == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {utt.utt_id}: {utt.text!r}")
    x = resample(x, sr, SAMPLE_RATE)
    if utt.snr_db is not None:
        rng = np.random.Generator(np.random.PCG64(utt.noise_seed))
        power = float(np.mean(x ** 2)) or 1e-8
        x = x + rng.standard_normal(len(x)) * np.sqrt(power / 10 ** (utt.snr_db / 10))
    peak = float(np.max(np.abs(x)))
    if peak > 0.99:
        x = x * (0.99 / peak)
    return to_int16(x)


def _worker(job: tuple):
    """Pool task: synthesise one utterance into ``dest`` (atomically); return (index, frames, error)."""
    index, utt, dest, binary = job
    try:
        if os.path.exists(dest):
            return index, sf.info(dest).frames, ""
        pcm = synthesize(utt, binary)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = dest + ".tmp.flac"
        sf.write(tmp, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        os.replace(tmp, dest)
        return index, len(pcm), ""
    except Exception as exc:  # reported by the parent with the utterance id
        return index, 0, f"{utt.utt_id}: {exc}"


def _settings(split: str, seed: int, minutes: float) -> dict:
    return {"generator_version": GENERATOR_VERSION, "split": split, "seed": seed, "minutes": minutes,
            "sample_rate": SAMPLE_RATE}


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def make_split(root: str, split: str, seed: int, minutes: float, jobs: int, binary: str,
               force: bool = False, progress: bool = True) -> dict:
    """Synthesise one split into ``root/<split>``; return its summary (also stored in the marker)."""
    split_dir = os.path.join(root, split)
    marker = os.path.join(split_dir, ".synthetic_complete.json")
    inprogress = os.path.join(split_dir, ".synthetic_inprogress.json")
    settings = _settings(split, seed, minutes)
    key = {k: v for k, v in settings.items() if k != "minutes"}  # minutes only move the end point
    done = _read_json(marker)
    if done is not None and not force:
        if done.get("settings") == settings:
            print(f"[{split}] already complete ({done['utterances']} utterances, "
                  f"{done['seconds'] / 60:.1f} min), skipping", file=sys.stderr)
            return done
        old = {k: v for k, v in (done.get("settings") or {}).items() if k != "minutes"}
        if old != key:
            raise DataToolError(f"{split_dir} already holds a synthetic split made with other settings "
                                f"({done.get('settings')}, now {settings}); use --force (FORCE=1 for "
                                "scripts/make_synthetic_corpus.sh) to regenerate it or choose another --out-dir")
        started = key  # same corpus, other size: reuse the files (the plan is a prefix-stable sequence)
    else:
        started = _read_json(inprogress)
        started = {k: v for k, v in started.items() if k != "minutes"} if isinstance(started, dict) else None
    ours = os.path.exists(marker) or os.path.exists(inprogress)
    if os.path.isdir(split_dir) and os.listdir(split_dir) and not ours:
        raise DataToolError(f"{split_dir} exists and was not made by this tool (no .synthetic_*.json marker); "
                            "refusing to touch it, choose another --out-dir")
    if force or (os.path.isdir(split_dir) and started != key):
        shutil.rmtree(split_dir, ignore_errors=True)
    os.makedirs(split_dir, exist_ok=True)
    if os.path.exists(marker):
        os.remove(marker)
    atomic_write_text(inprogress, json.dumps(settings, sort_keys=True) + "\n")

    speakers = make_speakers(split, seed)
    plan = plan_utterances(split, seed, speakers)
    target = minutes * 60.0 * SAMPLE_RATE
    chosen, total = [], 0
    prog = Progress(total=minutes * 60.0, desc=f"[{split}] 0 utterances", unit="s of audio", enabled=progress)
    chunk = max(4, 8 * jobs)
    pool = Pool(jobs) if jobs > 1 else None
    try:
        while total < target:
            batch = [next(plan) for _ in range(chunk)]
            tasks = [(len(chosen) + k, u, os.path.join(split_dir, u.path), binary) for k, u in enumerate(batch)]
            results = pool.imap(_worker, tasks) if pool else map(_worker, tasks)
            for (index, frames, err), utt in zip(results, batch):
                if err:
                    raise DataToolError(f"[{split}] synthesis failed for {err}")
                if total < target:
                    chosen.append((utt, frames))
                    total += frames
                    # whole seconds, at most the target (the last utterance overshoots it)
                    prog.update_to(round(min(total, target) / SAMPLE_RATE), desc=f"[{split}] {len(chosen)} utterances")
                else:  # beyond the requested size: drop
                    extra = os.path.join(split_dir, utt.path)
                    if os.path.exists(extra):
                        os.remove(extra)
    finally:
        if pool:
            pool.close()
            pool.join()
    prog.close()

    # Stray files of an interrupted run whose plan was longer are removed; transcripts written last.
    by_chapter = {}
    for utt, _ in chosen:
        by_chapter.setdefault(os.path.dirname(utt.path), []).append(utt)
    keep = {os.path.normpath(os.path.join(split_dir, u.path)) for u, _ in chosen}
    keep |= {os.path.normpath(os.path.join(split_dir, d, "-".join(d.split("/")) + ".trans.txt"))
             for d in by_chapter}
    for dirpath, _, filenames in os.walk(split_dir, topdown=False):
        for name in filenames:
            full = os.path.normpath(os.path.join(dirpath, name))
            if name.endswith((".flac", ".trans.txt")) and full not in keep:
                os.remove(full)
        if dirpath != split_dir and not os.listdir(dirpath):
            os.rmdir(dirpath)
    for chapter_dir, utts in by_chapter.items():
        spk, chap = chapter_dir.split("/")
        atomic_write_text(os.path.join(split_dir, chapter_dir, f"{spk}-{chap}.trans.txt"),
                          "".join(f"{u.utt_id} {u.text}\n" for u in utts))
    seconds = {}
    for utt, frames in chosen:
        sid = int(utt.utt_id.split("-")[0])
        seconds[sid] = seconds.get(sid, 0.0) + frames / SAMPLE_RATE
    summary = {"settings": settings, "utterances": len(chosen), "seconds": total / SAMPLE_RATE,
               "espeak_ng": espeak_version(binary),
               "speakers": [dict(asdict(s), seconds=round(seconds[s.id], 3)) for s in speakers if s.id in seconds]}
    atomic_write_text(marker, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    os.remove(inprogress)
    return summary


def write_speakers_file(root: str, summaries: dict) -> None:
    """``root/SPEAKERS.TXT`` in LibriSpeech's format (its column header ``;ID  |SEX| SUBSET           |MINUTES| NAME``
    and row layout; NAME holds the espeak-ng voice, pitch and speed)."""
    lines = ["; Synthetic speakers (espeak-ng); NAME is the voice (pitch, words per minute)",
             ";ID  |SEX| SUBSET           |MINUTES| NAME"]
    for split in sorted(summaries):
        for spk in summaries[split]["speakers"]:
            lines.append(f"{spk['id']:<5}| {spk['sex']} | {split:<17}| {spk['seconds'] / 60:5.2f} | {spk['voice']} "
                         f"(pitch {spk['pitch']}, {spk['speed']} wpm)")
    atomic_write_text(os.path.join(root, "SPEAKERS.TXT"), "\n".join(lines) + "\n")


def write_chapters_file(root: str, summaries: dict) -> None:
    """``root/CHAPTERS.TXT`` in LibriSpeech's format (``;ID      |READER|MINUTES| SUBSET           | PROJ.|BOOK ID|
    CH. TITLE | PROJECT TITLE``): one row per chapter directory, its minutes summed from the FLAC headers. There is no
    LibriVox project or book: PROJ. and BOOK ID are 0."""
    lines = ["; Synthetic chapters (espeak-ng); READER is the speaker id, PROJ. and BOOK ID are 0",
             ";ID      |READER|MINUTES| SUBSET           | PROJ.|BOOK ID| CH. TITLE | PROJECT TITLE"]
    for split in sorted(summaries):
        split_dir = os.path.join(root, split)
        for spk in summaries[split]["speakers"]:
            for chapter in spk["chapters"]:
                chapter_dir = os.path.join(split_dir, str(spk["id"]), str(chapter))
                if not os.path.isdir(chapter_dir):
                    continue
                frames = sum(sf.info(os.path.join(chapter_dir, f)).frames
                             for f in sorted(os.listdir(chapter_dir)) if f.endswith(".flac"))
                minutes = frames / SAMPLE_RATE / 60
                lines.append(f"{chapter:<9}| {spk['id']:<5}| {minutes:5.2f} | {split:<17}| 0    | 0     | Chapter {chapter} "
                             f"| Synthetic speech ({spk['voice']})")
    atomic_write_text(os.path.join(root, "CHAPTERS.TXT"), "\n".join(lines) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m utils.synthetic_corpus", description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True, help="corpus root; audio goes to <out-dir>/LibriSpeech/<split>")
    p.add_argument("--train-minutes", type=float, default=60.0, help="minutes of audio in train (default 60)")
    p.add_argument("--eval-minutes", type=float, default=4.0,
                   help="minutes of audio in each dev/test split (default 4)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel workers (default 2)")
    p.add_argument("--splits", nargs="+", default=DEFAULT_SPLITS, metavar="SPLIT",
                   help="splits to make (default: %(default)s); names ending in -clean/-other get the eval "
                        "voices, any other name the training voices")
    p.add_argument("--espeak", default="espeak-ng", help="espeak-ng binary")
    p.add_argument("--force", action="store_true", help="regenerate splits made with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    args = p.parse_args(argv)
    if args.train_minutes <= 0 or args.eval_minutes <= 0:
        p.error("--train-minutes and --eval-minutes must be positive")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    binary = find_espeak(args.espeak)
    root = os.path.join(args.out_dir, "LibriSpeech")
    os.makedirs(root, exist_ok=True)
    t0 = time.monotonic()
    summaries = {}
    for split in args.splits:
        minutes = args.eval_minutes if (split.endswith("-clean") or _is_other(split)) else args.train_minutes
        summaries[split] = make_split(root, split, args.seed, minutes, args.jobs, binary, force=args.force,
                                      progress=not args.quiet)
    for name in os.listdir(root):  # include splits made by earlier runs
        m = _read_json(os.path.join(root, name, ".synthetic_complete.json"))
        if m is not None and name not in summaries:
            summaries[name] = m
    write_speakers_file(root, summaries)
    write_chapters_file(root, summaries)
    total = sum(s["seconds"] for s in summaries.values())
    print(f"synthetic corpus in {root}: " + ", ".join(
        f"{k} {v['utterances']} utts / {v['seconds'] / 60:.1f} min" for k, v in summaries.items())
        + f"; total {total / 60:.1f} min; {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
