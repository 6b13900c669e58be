"""Synthetic speech corpus: sentence generator, resampler, synthesis plan, espeak-ng synthesis
(skipped without espeak-ng), determinism, resume/skip, and the one-command script."""
from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils import synthetic_corpus as sc
from utils.audio import resample, to_int16
from utils.common import DataToolError
from utils.sentences import SentenceGenerator, vocabulary

REPO = Path(__file__).resolve().parents[1]
HAVE_ESPEAK = shutil.which("espeak-ng") is not None
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is not installed "
                                  "(run scripts/install_system_deps.sh to enable these tests)")
TINY = ["--train-minutes", "0.15", "--eval-minutes", "0.05", "--quiet"]


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------

def test_sentences_are_deterministic_valid_and_varied():
    gen1, gen2 = SentenceGenerator(random.Random("seed")), SentenceGenerator(random.Random("seed"))
    s1 = [gen1.utterance() for _ in range(1500)]
    s2 = [gen2.utterance() for _ in range(1500)]
    assert s1 == s2
    other = [SentenceGenerator(random.Random("other")).utterance() for _ in range(20)]
    assert other != s1[:20]
    chars = set("".join(s1))
    assert chars <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
    assert chars == set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")  # 26 letters + apostrophe + space: 28 ltr symbols
    for s in s1:
        assert s == " ".join(s.split()) and len(s.split()) >= 5
    assert len(set(s1)) > 1450  # hardly any repeats
    words = set(itertools.chain.from_iterable(s.split() for s in s1))
    assert words <= vocabulary() and 250 <= len(words)
    first = {s.split()[0] for s in s1}
    assert {"THERE", "WHEN", "DID", "IT'S", "I'M"} <= first and len(first) > 40  # varied shapes


# ---------------------------------------------------------------------------------------------
# resampler
# ---------------------------------------------------------------------------------------------

def test_resampler_passband_and_stopband():
    sr = 22050
    t = np.arange(sr * 2) / sr
    for f in (440.0, 3000.0, 6500.0):
        y = resample(np.sin(2 * np.pi * f * t), sr, 16000)
        assert len(y) == 32000
        ref = np.sin(2 * np.pi * f * np.arange(len(y)) / 16000)
        assert np.max(np.abs(y[500:-500] - ref[500:-500])) < 2e-3, f
    alias = resample(np.sin(2 * np.pi * 9500.0 * t), sr, 16000)  # above the new Nyquist
    assert np.sqrt(np.mean(alias[500:-500] ** 2)) < 1e-3
    assert resample(np.ones(10, dtype=np.float32), 16000, 16000).dtype == np.float32
    up = resample(np.sin(2 * np.pi * 440 * np.arange(8000) / 8000), 8000, 16000)
    assert np.max(np.abs(up[200:-200] - np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)[200:-200])) < 2e-3
    assert to_int16(np.array([1.5, -1.5, 0.5])).tolist() == [32767, -32768, 16384]


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------

def test_plan_is_deterministic_and_other_splits_use_unseen_voices_and_speeds():
    def first(split, seed, n=40):
        return list(itertools.islice(sc.plan_utterances(split, seed, sc.make_speakers(split, seed)), n))

    assert first("train", 3) == first("train", 3)
    assert first("train", 3) != first("train", 4)
    train = first("train", 1, 200)
    train_voices = {u.voice for u in train}
    train_speeds = [u.speed for u in train]
    assert len(train_voices) == 16
    for split in ("dev-other", "test-other"):
        other = first(split, 1, 40)
        assert not ({u.voice for u in other} & train_voices)
        assert all(s < min(train_speeds) or s > max(train_speeds) for s in (u.speed for u in other))
        assert all(u.snr_db is not None for u in other)
    dev, test = first("dev-other", 1), first("test-other", 1)
    assert not ({u.voice for u in dev} & {u.voice for u in test})
    clean = first("dev-clean", 1)
    assert {u.voice for u in clean} <= train_voices
    ids = [u.utt_id for u in train]
    assert len(set(ids)) == len(ids)
    assert all(u.path == f"{u.utt_id.split('-')[0]}/{u.utt_id.split('-')[1]}/{u.utt_id}.flac" for u in train)


def test_missing_espeak_names_the_install_script(tmp_path):
    with pytest.raises(DataToolError, match="scripts/install_system_deps.sh"):
        sc.main(["--out-dir", str(tmp_path), "--espeak", "espeak-ng-does-not-exist", *TINY])


# ---------------------------------------------------------------------------------------------
# synthesis (espeak-ng)
# ---------------------------------------------------------------------------------------------

def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".flac", ".txt", ".TXT")}


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    if not HAVE_ESPEAK:
        pytest.skip("espeak-ng is not installed (run scripts/install_system_deps.sh)")
    out = tmp_path_factory.mktemp("syn_a")
    assert sc.main(["--out-dir", str(out), "--splits", "train", "test-other", "--seed", "7", "--jobs", "2",
                    *TINY]) == 0
    return out


@needs_espeak
def test_tiny_corpus_audio_and_transcripts(tiny_corpus):
    root = tiny_corpus / "LibriSpeech"
    for split, minutes in (("train", 0.15), ("test-other", 0.05)):
        flacs = sorted((root / split).rglob("*.flac"))
        assert flacs, split
        total = 0
        for f in flacs:
            info = sf.info(str(f))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            x, _ = sf.read(str(f), dtype="float32")
            assert 0.01 < float(np.sqrt(np.mean(x ** 2))) and np.max(np.abs(x)) <= 1.0
            total += info.frames
        # stops at the first utterance that reaches the size
        assert total >= minutes * 60 * 16000
        # transcripts == the generator's sentences, in plan order
        plan = sc.plan_utterances(split, 7, sc.make_speakers(split, 7))
        expected = {u.utt_id: u.text for u in itertools.islice(plan, len(flacs))}
        got = {}
        for trans in (root / split).rglob("*.trans.txt"):
            spk, chap = trans.parent.parent.name, trans.parent.name
            assert trans.name == f"{spk}-{chap}.trans.txt"
            for line in trans.read_text().splitlines():
                utt, text = line.split(" ", 1)
                got[utt] = text
        assert got == expected
        assert {f.name[:-5] for f in flacs} == set(expected)
        assert (root / split / ".synthetic_complete.json").is_file()
    assert "1001" in (root / "SPEAKERS.TXT").read_text()


def _libri_table(path: Path) -> list:
    """Rows of a LibriSpeech SPEAKERS.TXT / CHAPTERS.TXT as a header-driven reader parses them: the first ';' line
    with '|' names the columns, other ';' lines are comments, rows split on '|' into that many fields."""
    cols, rows = None, []
    for line in path.read_text().splitlines():
        if line.startswith(";"):
            if cols is None and line.count("|") >= 2:
                cols = [c.strip() for c in line[1:].split("|")]
            continue
        parts = [c.strip() for c in line.split("|", len(cols) - 1)]
        assert len(parts) == len(cols), line
        rows.append(dict(zip(cols, parts)))
    return rows


@needs_espeak
def test_speakers_and_chapters_files_in_librispeech_format(tiny_corpus):
    """SPEAKERS.TXT and CHAPTERS.TXT carry LibriSpeech's column headers; their rows agree with the audio on disk
    (speaker/chapter directories, minutes from the FLAC headers)."""
    root = tiny_corpus / "LibriSpeech"
    speakers_txt = (root / "SPEAKERS.TXT").read_text().splitlines()
    assert ";ID  |SEX| SUBSET           |MINUTES| NAME" in speakers_txt
    chapters_txt = (root / "CHAPTERS.TXT").read_text().splitlines()
    assert ";ID      |READER|MINUTES| SUBSET           | PROJ.|BOOK ID| CH. TITLE | PROJECT TITLE" in chapters_txt
    minutes, speaker_split = {}, {}
    for f in root.glob("*/*/*/*.flac"):
        split, spk, chap = f.parts[-4:-1]
        speaker_split[spk] = split
        key = (chap, spk, split)
        minutes[key] = minutes.get(key, 0) + sf.info(str(f)).frames / 16000 / 60
    chapters = _libri_table(root / "CHAPTERS.TXT")
    assert {(r["ID"], r["READER"], r["SUBSET"]) for r in chapters} == set(minutes)
    for r in chapters:
        assert float(r["MINUTES"]) == pytest.approx(minutes[(r["ID"], r["READER"], r["SUBSET"])], abs=0.006)
    speakers = _libri_table(root / "SPEAKERS.TXT")
    assert {r["ID"]: r["SUBSET"] for r in speakers} == speaker_split
    assert all(r["SEX"] in ("M", "F") for r in speakers)
    by_speaker = {}
    for (_, spk, _), m in minutes.items():
        by_speaker[spk] = by_speaker.get(spk, 0) + m
    for r in speakers:
        assert float(r["MINUTES"]) == pytest.approx(by_speaker[r["ID"]], abs=0.006)


@needs_espeak
def test_same_seed_identical_bytes_and_rerun_skips(tiny_corpus, tmp_path, capsys):
    other = tmp_path / "b"
    assert sc.main(["--out-dir", str(other), "--splits", "train", "test-other", "--seed", "7", "--jobs", "1",
                    *TINY]) == 0
    a, b = _tree_digest(tiny_corpus / "LibriSpeech"), _tree_digest(other / "LibriSpeech")
    assert a and a == b  # same seed, different --jobs: byte-identical
    capsys.readouterr()
    assert sc.main(["--out-dir", str(other), "--splits", "train", "--seed", "7", *TINY]) == 0
    assert "[train] already complete" in capsys.readouterr().err
    with pytest.raises(DataToolError, match="other settings"):
        sc.main(["--out-dir", str(other), "--splits", "train", "--seed", "8", *TINY])


@needs_espeak
def test_growing_a_split_reuses_files_and_matches_a_fresh_build(tiny_corpus, tmp_path):
    grown = tmp_path / "grown"
    shutil.copytree(tiny_corpus, grown)
    before = _tree_digest(grown / "LibriSpeech" / "train")
    bigger = ["--train-minutes", "0.25", "--eval-minutes", "0.05", "--quiet", "--splits", "train", "--seed", "7"]
    assert sc.main(["--out-dir", str(grown), *bigger]) == 0
    after = _tree_digest(grown / "LibriSpeech" / "train")
    assert all(after.get(k) == v for k, v in before.items() if k.endswith(".flac"))
    assert len(after) > len(before)
    fresh = tmp_path / "fresh"
    assert sc.main(["--out-dir", str(fresh), *bigger]) == 0
    assert _tree_digest(fresh / "LibriSpeech" / "train") == after


@needs_espeak
def test_make_synthetic_corpus_script_end_to_end(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO), OUT_DIR=str(tmp_path / "c"),
               TRAIN_MINUTES="0.2", EVAL_MINUTES="0.05", FT_MINUTES="0.1", SEED="3", JOBS="2")
    script = str(REPO / "scripts" / "make_synthetic_corpus.sh")
    proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = tmp_path / "c" / "LibriSpeech"
    for split in sc.DEFAULT_SPLITS:
        lines = (data / f"{split}.tsv").read_text().splitlines()
        assert lines[0] == str(data / split) and len(lines) > 1
        n = len(lines) - 1
        assert len((data / f"{split}.ltr").read_text().splitlines()) == n
        assert len((data / f"{split}.wrd").read_text().splitlines()) == n
    symbols = [line.split(" ")[0] for line in (data / "dict.ltr.txt").read_text().splitlines()]
    assert symbols[0] == "|" and set(symbols) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ'|")
    sub = (data / "train-0.1min.tsv").read_text().splitlines()
    assert 1 < len(sub) <= len((data / "train.tsv").read_text().splitlines())
    assert "RESULT: OK" in proc.stdout
    again = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "up to date, skipping" in again.stdout
    assert "already complete" in again.stderr
