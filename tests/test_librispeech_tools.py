"""LibriSpeech tooling: download (file:// and HTTP with resume), checksum errors, extraction,
filelists -> labels -> dictionary (byte-exact against hand-written expectations), 1h/10h lists,
subset selection, FLAC->WAV conversion and the dataset validator on good and bad inputs."""
from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils import (combine_filelists, convert_to_wav, download_librispeech, generate_1h_10h_datasets,
                   generate_dictionary, generate_filelist, libri_labels, select_subset, validate)
from utils.common import DataToolError

REPO = Path(__file__).resolve().parents[1]
SR = 16000

# subset -> [(relative flac path, n_samples, transcript)]
CORPUS = {
    "train-clean-100": [
        ("103/1240/103-1240-0000.flac", 16000, "AND A VERY"),
        ("103/1240/103-1240-0001.flac", 8000, "YES"),
        ("1034/121119/1034-121119-0000.flac", 12000, "IT'S A DAY"),
    ],
    "train-other-500": [
        ("1040/133433/1040-133433-0000.flac", 4000, "ZOO"),
    ],
    "dev-clean": [
        ("84/121123/84-121123-0000.flac", 20000, "SO"),
        ("84/121123/84-121123-0001.flac", 6000, "NOT IN"),
    ],
}


def _audio(n: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(n)
    return (x * 32767).astype(np.int16)


def _write_subset(base: Path, subset: str) -> None:
    """LibriSpeech/<subset>/<spk>/<chap>/ FLACs + <spk>-<chap>.trans.txt under ``base``."""
    transcripts = {}
    for k, (rel, n, text) in enumerate(CORPUS[subset]):
        path = base / "LibriSpeech" / subset / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), _audio(n, k), SR, format="FLAC", subtype="PCM_16")
        spk, chap = rel.split("/")[:2]
        transcripts.setdefault(path.parent / f"{spk}-{chap}.trans.txt", []).append(
            f"{path.name[:-5]} {text}\n")
    for trans, lines in transcripts.items():
        trans.write_text("".join(lines))


def _make_tarball(tmp: Path, subset: str) -> tuple:
    staging = tmp / "staging" / subset
    _write_subset(staging, subset)
    mirror = tmp / "mirror"
    mirror.mkdir(exist_ok=True)
    tarball = mirror / f"{subset}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(staging / "LibriSpeech", arcname="LibriSpeech")
    return tarball, hashlib.md5(tarball.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("librispeech_mirror")
    sums = {}
    for subset in CORPUS:
        tarball, md5 = _make_tarball(tmp, subset)
        sums[subset] = md5
    return tmp / "mirror", sums


@pytest.fixture(scope="module")
def downloaded(mirror, tmp_path_factory):
    mirror_dir, sums = mirror
    dest = tmp_path_factory.mktemp("datasets")
    argv = [str(dest), "--subsets", *CORPUS, "--base_url", mirror_dir.as_uri(), "--quiet"]
    argv += [a for s, md5 in sums.items() for a in ("--md5", f"{s}={md5}")]
    assert download_librispeech.main(argv) == 0
    return dest


def _env():
    env = dict(os.environ)
    env["PYTHON"] = sys.executable
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture(scope="module")
def filelists(downloaded, tmp_path_factory):
    out = tmp_path_factory.mktemp("filelists")
    env = _env()
    env.update(DATASET_DIR=str(downloaded / "LibriSpeech"), FILELISTS_DIR=str(out), EXT="flac")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "generate_filelists.sh")], env=env,
                          capture_output=True, text=True, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------

def test_download_extracts_librispeech_layout(downloaded):
    for subset, items in CORPUS.items():
        assert (downloaded / f"{subset}.tar.gz").is_file()
        assert not (downloaded / f"{subset}.tar.gz.tmp").exists()
        assert (downloaded / f".{subset}.tar.gz.extracted").is_file()
        for rel, n, _ in items:
            info = sf.info(str(downloaded / "LibriSpeech" / subset / rel))
            assert (info.frames, info.samplerate, info.channels) == (n, SR, 1)


def test_download_rerun_skips_everything(downloaded, mirror, capsys):
    mirror_dir, sums = mirror
    argv = [str(downloaded), "--subsets", "dev-clean", "--base_url", "/nonexistent/mirror",
            "--md5", f"dev-clean={sums['dev-clean']}", "--quiet"]
    assert download_librispeech.main(argv) == 0  # no download attempted: the file exists
    err = capsys.readouterr().err
    assert "exists, skipping download" in err and "MD5 Passed" in err and "already extracted" in err


def test_download_resumes_partial_tmp_file(mirror, tmp_path, capsys):
    mirror_dir, sums = mirror
    src = (mirror_dir / "dev-clean.tar.gz").read_bytes()
    (tmp_path / "dev-clean.tar.gz.tmp").write_bytes(src[: len(src) // 3])
    argv = [str(tmp_path), "--subsets", "dev-clean", "--base_url", str(mirror_dir),
            "--md5", f"dev-clean={sums['dev-clean']}", "--skip_extract", "--quiet"]
    assert download_librispeech.main(argv) == 0
    assert f"resuming dev-clean.tar.gz at byte {len(src) // 3}" in capsys.readouterr().err
    assert (tmp_path / "dev-clean.tar.gz").read_bytes() == src


def test_download_checksum_mismatch_is_an_error(mirror, tmp_path):
    mirror_dir, _ = mirror
    argv = [str(tmp_path), "--subsets", "dev-clean", "--base_url", mirror_dir.as_uri(),
            "--md5", "dev-clean=" + "0" * 32, "--quiet"]
    with pytest.raises(DataToolError, match="MD5 mismatch for .*dev-clean.tar.gz"):
        download_librispeech.main(argv)
    assert (tmp_path / "dev-clean.tar.gz.bad").exists()
    assert not (tmp_path / "dev-clean.tar.gz").exists()  # a rerun downloads it again
    assert not (tmp_path / "LibriSpeech").exists()  # nothing extracted
    assert download_librispeech.run_main(download_librispeech.main, argv) == 1


def test_download_unknown_subset_needs_checksum(mirror, tmp_path):
    mirror_dir, _ = mirror
    (mirror_dir / "mine.tar.gz").write_bytes((mirror_dir / "dev-clean.tar.gz").read_bytes())
    with pytest.raises(DataToolError, match="no known MD5 sum for subset 'mine'"):
        download_librispeech.main([str(tmp_path), "--subsets", "mine", "--base_url", str(mirror_dir), "--quiet"])
    assert download_librispeech.main([str(tmp_path), "--subsets", "mine", "--base_url", str(mirror_dir),
                                      "--skip_checksum", "--quiet"]) == 0


def test_reference_checksums_are_the_published_ones():
    assert download_librispeech.LIBRISPEECH_MD5["train-clean-100"] == "2a93770f6d5c6c964bc36631d331a522"
    assert download_librispeech.LIBRISPEECH_MD5["test-other"] == "fb5a50374b501bb3bac4815ee91d3135"
    assert download_librispeech.DEFAULT_SUBSETS == ["train-clean-100", "train-clean-360", "train-other-500",
                                                    "dev-clean", "dev-other", "test-clean", "test-other"]


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    honour_range = True
    requests = []

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).requests.append(self.headers.get("Range"))
        data, status, extra = self.payload, 200, {}
        rng = self.headers.get("Range")
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            data, status = self.payload[start:], 206
            extra["Content-Range"] = f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}"
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("honour_range", [True, False])
def test_http_download_resume_with_range(mirror, tmp_path, honour_range):
    mirror_dir, sums = mirror
    payload = (mirror_dir / "dev-clean.tar.gz").read_bytes()
    handler = type("H", (_RangeHandler,), {"payload": payload, "honour_range": honour_range, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cut = len(payload) // 2
        (tmp_path / "dev-clean.tar.gz.tmp").write_bytes(payload[:cut])
        url = f"http://127.0.0.1:{server.server_address[1]}/resources/12"
        argv = [str(tmp_path), "--subsets", "dev-clean", "--base_url", url,
                "--md5", f"dev-clean={sums['dev-clean']}", "--skip_extract", "--quiet"]
        assert download_librispeech.main(argv) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert handler.requests == [f"bytes={cut}-"]
    assert (tmp_path / "dev-clean.tar.gz").read_bytes() == payload


def test_download_skips_an_extracted_subset_whose_tarball_was_deleted(mirror, tmp_path, capsys):
    """Tarballs deleted after extraction (60 GB freed) are not fetched again by a rerun; --skip_extract still does."""
    mirror_dir, sums = mirror
    argv = [str(tmp_path), "--subsets", "dev-clean", "--base_url", str(mirror_dir),
            "--md5", f"dev-clean={sums['dev-clean']}", "--quiet"]
    assert download_librispeech.main(argv) == 0
    (tmp_path / "dev-clean.tar.gz").unlink()
    capsys.readouterr()
    argv[argv.index(str(mirror_dir))] = "/nonexistent/mirror"  # a download attempt would fail
    assert download_librispeech.main(argv) == 0
    assert "dev-clean already extracted" in capsys.readouterr().err
    assert not (tmp_path / "dev-clean.tar.gz").exists()
    with pytest.raises(DataToolError, match="does not exist"):
        download_librispeech.main(argv + ["--skip_extract"])  # asks for the tarball: downloaded (here: fails)


def test_download_failures_are_one_line_errors(mirror, tmp_path):
    mirror_dir, sums = mirror
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    base = ["--subsets", "dev-clean", "--base_url", str(mirror_dir), "--quiet"]
    with pytest.raises(DataToolError, match="cannot create the download directory .*a_file/x"):
        download_librispeech.main([str(blocker / "x"), *base])
    with pytest.raises(DataToolError, match="cannot create the extraction directory .*a_file/y"):
        download_librispeech.main([str(tmp_path / "d"), "-e", str(blocker / "y"), "--skip_checksum", *base])


class _BrokenHandler(http.server.BaseHTTPRequestHandler):
    """``mode`` "404": a refusal; "chunked": a chunked transfer cut in the middle of its chunk."""
    protocol_version = "HTTP/1.1"
    mode = "404"

    def do_GET(self):  # noqa: N802 - http.server API
        if self.mode == "404":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n" % 4096 + b"x" * 1000)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode,needle", [("404", "HTTP Error 404"), ("chunked", "IncompleteRead")])
def test_http_download_failure_is_an_error_naming_the_url(tmp_path, mode, needle):
    handler = type("H", (_BrokenHandler,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/r"
        argv = [str(tmp_path), "--subsets", "dev-clean", "--base_url", url, "--skip_checksum", "--quiet"]
        with pytest.raises(DataToolError, match=f"download of {url}/dev-clean.tar.gz failed: .*{needle}") as err:
            download_librispeech.main(argv)
    finally:
        server.shutdown()
        server.server_close()
    if mode == "404":  # nothing was received: no promise of a resume
        assert "rerun to resume" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# filelists, labels, dictionary (byte for byte)
# ---------------------------------------------------------------------------------------------

def test_generate_filelists_outputs_byte_for_byte(filelists, downloaded):
    out, stdout = filelists
    root = downloaded / "LibriSpeech"
    for missing in ("train-clean-360", "dev-other", "test-clean", "test-other"):
        assert f"ERROR: {root}/{missing} does not exist; skipping." in stdout
    assert "WARNING: train-full-960 is built without: train-clean-360" in stdout

    expected = {
        "train-clean-100.tsv": f"{root}/train-clean-100\n"
                               "103/1240/103-1240-0000.flac\t16000\n"
                               "103/1240/103-1240-0001.flac\t8000\n"
                               "1034/121119/1034-121119-0000.flac\t12000\n",
        "train-clean-100.wrd": "AND A VERY\nYES\nIT'S A DAY\n",
        "train-clean-100.ltr": "A N D | A | V E R Y |\nY E S |\nI T ' S | A | D A Y |\n",
        "train-other-500.tsv": f"{root}/train-other-500\n1040/133433/1040-133433-0000.flac\t4000\n",
        "train-other-500.wrd": "ZOO\n",
        "train-other-500.ltr": "Z O O |\n",
        "dev-clean.tsv": f"{root}/dev-clean\n"
                         "84/121123/84-121123-0000.flac\t20000\n"
                         "84/121123/84-121123-0001.flac\t6000\n",
        "dev-clean.wrd": "SO\nNOT IN\n",
        "dev-clean.ltr": "S O |\nN O T | I N |\n",
        "train-full-960.tsv": f"{root}\n"
                              "train-clean-100/103/1240/103-1240-0000.flac\t16000\n"
                              "train-clean-100/103/1240/103-1240-0001.flac\t8000\n"
                              "train-clean-100/1034/121119/1034-121119-0000.flac\t12000\n"
                              "train-other-500/1040/133433/1040-133433-0000.flac\t4000\n",
        "train-full-960.wrd": "AND A VERY\nYES\nIT'S A DAY\nZOO\n",
        "train-full-960.ltr": "A N D | A | V E R Y |\nY E S |\nI T ' S | A | D A Y |\nZ O O |\n",
        # descending count, ties by code point
        "dict.ltr.txt": "| 8\nA 4\nY 3\nD 2\nE 2\nO 2\nS 2\n' 1\nI 1\nN 1\nR 1\nT 1\nV 1\nZ 1\n",
    }
    for name, text in expected.items():
        assert (out / name).read_bytes() == text.encode(), name
    produced = {p.name for p in out.iterdir()}
    assert produced == set(expected)


def _script(name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = _env()
    full.update(env)
    return subprocess.run(["bash", str(REPO / "scripts" / name)], env=full, capture_output=True, text=True,
                          cwd=str(cwd), timeout=120)


def test_download_data_script_end_to_end_and_dry_run(mirror, tmp_path):
    """scripts/download_data.sh: the reference's DATASET_DIR/SUBSETS, extra arguments to the tool, the command
    printed; DRY_RUN=1 prints it and downloads nothing (README: every script prints, DRY_RUN runs nothing)."""
    mirror_dir, sums = mirror
    dest = tmp_path / "datasets"
    full = _env()
    full.update(DATASET_DIR=str(dest), SUBSETS="dev-clean", DRY_RUN="1")
    args = ["--base_url", mirror_dir.as_uri(), "--md5", f"dev-clean={sums['dev-clean']}", "--quiet"]
    proc = subprocess.run(["bash", str(REPO / "scripts" / "download_data.sh"), *args], env=full,
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert len(printed) == 1 and printed[0].split()[3:8] == ["utils.download_librispeech", str(dest), "--subsets",
                                                              "dev-clean", "--base_url"]
    assert not dest.exists()
    full["DRY_RUN"] = "0"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "download_data.sh"), *args], env=full,
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "LibriSpeech" / "dev-clean" / "84" / "121123" / "84-121123.trans.txt").is_file()
    proc = _script("download_data.sh", tmp_path, DRY_RUN="maybe")
    assert proc.returncode == 2 and "DRY_RUN" in proc.stderr and "+ " not in proc.stdout


def test_generate_filelists_wrong_dataset_dir_is_one_error_line(downloaded, tmp_path):
    proc = _script("generate_filelists.sh", tmp_path, DATASET_DIR=str(tmp_path / "typo" / "LibriSpeech"))
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stdout + proc.stderr
    assert "DATASET_DIR=" in proc.stderr and "is not a directory" in proc.stderr
    assert not (tmp_path / "typo").exists()  # nothing created for a mistyped path
    # the download directory (download_data.sh's DATASET_DIR) instead of the LibriSpeech folder in it
    proc = _script("generate_filelists.sh", tmp_path, DATASET_DIR=str(downloaded), FILELISTS_DIR=str(tmp_path / "f"))
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stdout + proc.stderr
    assert f"use DATASET_DIR='{downloaded}/LibriSpeech'" in proc.stderr
    assert not (tmp_path / "f").exists()


def test_generate_filelist_sorted_and_wav(tmp_path, downloaded):
    # convert to WAV (keeps layout and transcripts) then list with --extension wav
    src = downloaded / "LibriSpeech" / "train-clean-100"
    wav_dir = tmp_path / "wav"
    assert convert_to_wav.main(["--input_dir", str(src), "--dest_dir", str(wav_dir), "--jobs", "1"]) == 0
    assert generate_filelist.main([str(wav_dir), str(tmp_path / "w.tsv"), "--extension", "wav"]) == 0
    assert (tmp_path / "w.tsv").read_text() == (f"{wav_dir}\n103/1240/103-1240-0000.wav\t16000\n"
                                               "103/1240/103-1240-0001.wav\t8000\n"
                                               "1034/121119/1034-121119-0000.wav\t12000\n")
    a, _ = sf.read(str(src / "103/1240/103-1240-0001.flac"), dtype="int16")
    b, _ = sf.read(str(wav_dir / "103/1240/103-1240-0001.wav"), dtype="int16")
    assert np.array_equal(a, b)
    assert libri_labels.main([str(tmp_path / "w.tsv"), "--output-dir", str(tmp_path), "--output-name", "w"]) == 0
    assert (tmp_path / "w.ltr").read_text() == "A N D | A | V E R Y |\nY E S |\nI T ' S | A | D A Y |\n"


def test_combine_filelists_stdout(filelists, capsys, downloaded):
    out, _ = filelists
    assert combine_filelists.main([str(out / "dev-clean.tsv"), str(out / "train-other-500.tsv")]) == 0
    root = downloaded / "LibriSpeech"
    assert capsys.readouterr().out == (f"{root}\ndev-clean/84/121123/84-121123-0000.flac\t20000\n"
                                       "dev-clean/84/121123/84-121123-0001.flac\t6000\n"
                                       "train-other-500/1040/133433/1040-133433-0000.flac\t4000\n")


def test_dictionary_keeps_last_character_without_newline(tmp_path):
    (tmp_path / "x.ltr").write_text("A B |\nB B |")  # no final newline: the reference lost the last "|"
    assert generate_dictionary.main([str(tmp_path / "x.ltr"), str(tmp_path / "d.txt")]) == 0
    assert (tmp_path / "d.txt").read_text() == "B 3\n| 2\nA 1\n"


def test_labels_missing_transcript_file_and_utterance(tmp_path):
    audio = tmp_path / "sub" / "7" / "70"
    audio.mkdir(parents=True)
    sf.write(str(audio / "7-70-0000.flac"), _audio(1600, 0), SR)
    assert generate_filelist.main([str(tmp_path / "sub"), str(tmp_path / "s.tsv")]) == 0
    args = [str(tmp_path / "s.tsv"), "--output-dir", str(tmp_path), "--output-name", "s"]
    with pytest.raises(DataToolError, match=r"s\.tsv:2: transcript file .*7-70\.trans\.txt does not exist"):
        libri_labels.main(args)
    (audio / "7-70.trans.txt").write_text("7-70-0001 OTHER UTTERANCE\n")
    with pytest.raises(DataToolError, match=r"utterance id 7-70-0000 not found in .*7-70\.trans\.txt"):
        libri_labels.main(args)


def test_1h_10h_lists_from_librilight_layout(filelists, downloaded, tmp_path):
    out, _ = filelists
    ft = tmp_path / "librispeech_finetuning"
    for rel in ("1h/0/clean/103/1240/103-1240-0001.flac", "9h/clean/1034/121119/1034-121119-0000.flac"):
        (ft / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(ft / rel), _audio(100, 0), SR)
    dest = tmp_path / "lists"
    assert generate_1h_10h_datasets.main([str(ft), str(out), str(dest)]) == 0
    root = downloaded / "LibriSpeech"
    assert (dest / "train-1h.tsv").read_text() == f"{root}\ntrain-clean-100/103/1240/103-1240-0001.flac\t8000\n"
    assert (dest / "train-1h.ltr").read_text() == "Y E S |\n"
    assert (dest / "train-10h.tsv").read_text() == (f"{root}\ntrain-clean-100/103/1240/103-1240-0001.flac\t8000\n"
                                                   "train-clean-100/1034/121119/1034-121119-0000.flac\t12000\n")
    assert (dest / "train-10h.wrd").read_text() == "YES\nIT'S A DAY\n"
    # a folder without flac files (a wrong LS_FT_DIR, a converted copy) is an error, not an empty train-10h list
    for flac in (ft / "9h").rglob("*.flac"):
        flac.unlink()
    with pytest.raises(DataToolError, match=r"no \.flac files under .*9h"):
        generate_1h_10h_datasets.main([str(ft), str(out), str(tmp_path / "lists2")])
    assert not (tmp_path / "lists2").exists()


def test_select_subset_nested_and_deterministic(filelists, tmp_path):
    out, _ = filelists
    prefix = str(out / "train-full-960")
    args = [prefix, "--minutes", str(20000 / SR / 60), str(1.0), "--out-dir", str(tmp_path), "--prefix", "ft"]
    assert select_subset.main(args) == 0
    small = (tmp_path / f"ft-{select_subset.size_name(20000 / SR / 60)}.tsv").read_text().splitlines()
    big = (tmp_path / "ft-1min.tsv").read_text().splitlines()
    assert set(small[1:]) <= set(big[1:]) and len(big) == 5  # 1 min > whole list: everything, list order
    assert big[1:] == (out / "train-full-960.tsv").read_text().splitlines()[1:]
    assert sum(int(x.split("\t")[1]) for x in small[1:]) >= 20000
    first = (tmp_path / "ft-1min.ltr").read_bytes()
    assert select_subset.main(args) == 0
    assert (tmp_path / "ft-1min.ltr").read_bytes() == first
    assert select_subset.size_name(60) == "1h" and select_subset.size_name(10) == "10min"


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------

@pytest.fixture()
def vdata(tmp_path, downloaded, filelists):
    """A private copy of the dev-clean lists + dict that tests may break."""
    out, _ = filelists
    d = tmp_path / "v"
    d.mkdir()
    audio_root = tmp_path / "audio"
    _write_subset(audio_root, "dev-clean")
    root = audio_root / "LibriSpeech" / "dev-clean"
    tsv = (out / "dev-clean.tsv").read_text().splitlines()
    (d / "dev-clean.tsv").write_text("\n".join([str(root)] + tsv[1:]) + "\n")
    for name in ("dev-clean.ltr", "dev-clean.wrd", "dict.ltr.txt"):
        (d / name).write_bytes((out / name).read_bytes())
    return d, root


def test_validate_good_data(vdata, capsys):
    d, _ = vdata
    assert validate.main(["--data", str(d), "--subset", "dev-clean", "--labels", "ltr", "--decode"]) == 0
    report = capsys.readouterr().out
    assert "kept:       2 files" in report and "RESULT: OK" in report


def test_validate_a_missing_label_file_is_reported_once_and_plainly(vdata, capsys):
    d, _ = vdata
    assert validate.main(["--data", str(d), "--subset", "dev-clean", "--labels", "phn"]) != 0
    report = capsys.readouterr().out
    assert "dev-clean.phn: not found" in report and "None lines" not in report and "(OK)" not in report
    assert "RESULT: FAILED" in report


def test_validate_counts_cropped_and_skipped(vdata):
    d, _ = vdata
    rep = validate.validate(str(d), "dev-clean", labels="ltr", min_sample_size=7000, max_sample_size=15000,
                            max_tokens=100000, pad=False)
    assert (rep.kept, rep.cropped, rep.skipped_min, rep.skipped_max_tokens) == (1, 1, 1, 0)
    assert rep.kept_samples == 20000 and rep.kept_samples_cropped == 15000
    # with padding the token count is the full size: above max_tokens -> skipped
    rep = validate.validate(str(d), "dev-clean", labels="ltr", max_sample_size=15000, max_tokens=18000, pad=True)
    assert (rep.kept, rep.skipped_max_tokens) == (1, 1)
    assert not rep.failures


def test_validate_empty_dataset_fails(vdata, capsys):
    d, _ = vdata
    assert validate.main(["--data", str(d), "--subset", "dev-clean", "--labels", "none",
                          "--preset", "pretrain-base"]) == 1  # min_sample_size 32000 > every file
    out = capsys.readouterr().out
    assert "skipped:    2 files (2 shorter than min_sample_size=32000" in out
    assert "EMPTY" in out and "RESULT: FAILED" in out


@pytest.mark.parametrize("damage, category, needle", [
    ("missing", "missing", "file does not exist"),
    ("corrupt", "corrupt", ""),
    ("wrong_rate", "wrong_rate", "8000 Hz, expected 16000 Hz"),
    ("multi_channel", "multi_channel", "2 channels"),
])
def test_validate_unreadable_audio(vdata, capsys, damage, category, needle):
    d, root = vdata
    victim = root / "84/121123/84-121123-0001.flac"
    if damage == "missing":
        victim.unlink()
    elif damage == "corrupt":
        victim.write_bytes(b"this is not a flac file" * 10)
    elif damage == "wrong_rate":
        sf.write(str(victim), _audio(6000, 1), 8000, format="FLAC")
    else:
        sf.write(str(victim), np.stack([_audio(6000, 1)] * 2, axis=1), SR, format="FLAC")
    rep = validate.validate(str(d), "dev-clean", labels="ltr")
    assert rep.unreadable[category] == 1 and rep.n_unreadable == 1 and rep.kept == 1
    assert any("84-121123-0001.flac" in e and needle in e for e in rep.examples[category])
    assert validate.main(["--data", str(d), "--subset", "dev-clean"]) == 1
    assert "1 unreadable audio file(s)" in capsys.readouterr().out


def test_validate_size_mismatch(vdata):
    d, _ = vdata
    tsv = d / "dev-clean.tsv"
    tsv.write_text(tsv.read_text().replace("\t6000", "\t6001"))
    rep = validate.validate(str(d), "dev-clean", labels="ltr")
    assert rep.size_mismatch == 1 and "manifest says 6001 samples, file has 6000" in rep.examples["size_mismatch"][0]
    assert rep.failures


def test_validate_label_count_mismatch(vdata, capsys):
    d, _ = vdata
    (d / "dev-clean.ltr").write_text("S O |\n")
    assert validate.main(["--data", str(d), "--subset", "dev-clean"]) == 1
    out = capsys.readouterr().out
    assert "dev-clean.ltr has 1 lines but" in out and "(MISMATCH)" in out


def test_validate_symbol_missing_from_dictionary(vdata, capsys):
    d, _ = vdata
    (d / "dev-clean.ltr").write_text("S O |\nN O T | Q I N |\n")
    assert validate.main(["--data", str(d), "--subset", "dev-clean"]) == 1
    out = capsys.readouterr().out
    assert f"missing symbol 'Q': 1 occurrence(s), first at {d / 'dev-clean.ltr'}:2" in out


def test_validate_bad_dictionary_and_manifest_name_the_line(vdata):
    d, _ = vdata
    (d / "dict.ltr.txt").write_text("| 8\nA\n")
    with pytest.raises(DataToolError, match=r"incorrect dictionary format at .*dict\.ltr\.txt:2"):
        validate.validate(str(d), "dev-clean", labels="ltr")
    (d / "dev-clean.tsv").write_text("/x\na.flac 12\n")
    with pytest.raises(DataToolError, match=r"dev-clean\.tsv:2: expected 2 tab-separated fields"):
        validate.validate(str(d), "dev-clean", labels=None)


# ---------------------------------------------------------------------------------------------
# truncated WAV files (libsndfile reports the frames present, so the manifest would agree)
# ---------------------------------------------------------------------------------------------

def _truncated_wav_dir(tmp_path: Path) -> Path:
    """``wavs/good.wav`` (6000 samples) and ``wavs/cut.wav``: 18842 samples declared, 9410 present."""
    d = tmp_path / "wavs"
    d.mkdir()
    sf.write(str(d / "good.wav"), _audio(6000, 0), SR, subtype="PCM_16")
    sf.write(str(d / "cut.wav"), _audio(18842, 1), SR, subtype="PCM_16")
    (d / "cut.wav").write_bytes((d / "cut.wav").read_bytes()[: 44 + 18820])
    assert sf.info(str(d / "cut.wav")).frames == 9410
    return d


def test_generate_filelist_reports_truncated_wav_and_writes_nothing(tmp_path, capsys):
    d = _truncated_wav_dir(tmp_path)
    out = tmp_path / "w.tsv"
    with pytest.raises(DataToolError, match=r"truncated WAV .*cut\.wav: header declares 18842 frames, file holds 9410"):
        generate_filelist.build_manifest(str(d), "wav")
    assert generate_filelist.run_main(generate_filelist.main, [str(d), str(out), "--extension", "wav"]) == 1
    assert "ERROR: truncated WAV" in capsys.readouterr().err
    assert not out.exists()  # no manifest with a wrong size
    (d / "cut.wav").unlink()
    assert generate_filelist.main([str(d), str(out), "--extension", "wav", "--quiet"]) == 0
    assert out.read_text() == f"{d}\ngood.wav\t6000\n"
    from common.data.audio import WAV_FORMATS
    assert generate_filelist.WAV_FORMATS == WAV_FORMATS  # the tools' copy (kept free of the torch import)


@pytest.mark.parametrize("decode", [False, True])
def test_validate_reports_truncated_wav(tmp_path, capsys, decode):
    d = _truncated_wav_dir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    # the manifest a listing made after the truncation would hold: it agrees with the short file
    (data / "train.tsv").write_text(f"{d}\ncut.wav\t9410\ngood.wav\t6000\n")
    rep = validate.validate(str(data), "train", labels=None, decode=decode)
    assert rep.unreadable["truncated"] == 1 and rep.n_unreadable == 1 and rep.kept == 1 and rep.size_mismatch == 0
    assert rep.examples["truncated"] == [f"{data / 'train.tsv'}:2 cut.wav: truncated WAV: header declares 18842 "
                                         "frames, file holds 9410"]
    argv = ["--data", str(data), "--subset", "train", "--labels", "none", "--quiet"] + (["--decode"] if decode else [])
    assert validate.main(argv) == 1
    out = capsys.readouterr().out
    assert "truncated 1" in out and "first files truncated audio:" in out and "1 unreadable audio file(s)" in out


# ---------------------------------------------------------------------------------------------
# progress lines of the long-running tools (whole lines on stderr, also when it is no terminal)
# ---------------------------------------------------------------------------------------------

def _progress_lines(err: str, desc: str) -> list:
    return [line for line in err.splitlines() if line.startswith(desc)]


def test_generate_filelist_progress(tmp_path, downloaded, capsys):
    src = str(downloaded / "LibriSpeech" / "train-clean-100")
    assert generate_filelist.main([src, str(tmp_path / "a.tsv"), "--progress-interval", "0"]) == 0
    lines = _progress_lines(capsys.readouterr().err, f"generate_filelist {src}: ")
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(" files/s elapsed " in line and " ETA " in line for line in lines)
    assert generate_filelist.main([src, str(tmp_path / "b.tsv")]) == 0  # default interval: first and last only
    assert len(_progress_lines(capsys.readouterr().err, "generate_filelist")) == 2
    assert generate_filelist.main([src, str(tmp_path / "c.tsv"), "--quiet"]) == 0
    assert not _progress_lines(capsys.readouterr().err, "generate_filelist")


def test_validate_progress_goes_to_stderr(vdata, capsys):
    d, _ = vdata
    assert validate.main(["--data", str(d), "--subset", "dev-clean", "--progress-interval", "0"]) == 0
    captured = capsys.readouterr()
    lines = _progress_lines(captured.err, f"validate {d / 'dev-clean.tsv'}: ")
    assert [line.split()[2] for line in lines] == ["1/2", "2/2"]
    assert all(" files/s elapsed " in line and " ETA " in line for line in lines)
    assert " files/s " not in captured.out and "RESULT: OK" in captured.out  # the report stays clean


def test_download_checksum_and_extraction_progress(mirror, tmp_path, capsys):
    mirror_dir, sums = mirror
    argv = [str(tmp_path), "--subsets", "dev-clean", "--base_url", str(mirror_dir),
            "--md5", f"dev-clean={sums['dev-clean']}", "--progress_interval", "0"]
    assert download_librispeech.main(argv) == 0
    err = capsys.readouterr().err
    for desc in ("verifying dev-clean.tar.gz: ", "listing dev-clean.tar.gz: "):
        lines = _progress_lines(err, desc)
        assert lines and " MiB (100.0%) " in lines[-1] and all(" MiB/s elapsed " in line for line in lines)
    with tarfile.open(mirror_dir / "dev-clean.tar.gz") as tar:
        n = len(tar.getmembers())
    extracting = _progress_lines(err, "extracting dev-clean.tar.gz: ")
    assert [line.split()[2] for line in extracting] == [f"{i}/{n}" for i in range(1, n + 1)]
    assert all(" members/s elapsed " in line and " ETA " in line for line in extracting)
    assert (tmp_path / "LibriSpeech" / "dev-clean" / CORPUS["dev-clean"][0][0]).is_file()


def test_md5sum_and_extract_progress_on_multi_mib_inputs(tmp_path, capsys):
    from utils.download_utils import extract, md5sum
    blob = np.random.default_rng(0).integers(0, 256, size=(3 << 20) + 5, dtype=np.uint8).tobytes()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "blob.bin").write_bytes(blob)
    (tmp_path / "src" / "small.txt").write_text("x")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:  # random bytes: ~3 MiB compressed
        tar.add(tmp_path / "src", arcname="src")
    assert md5sum(str(archive), progress=True, interval_s=0) == hashlib.md5(archive.read_bytes()).hexdigest()
    err = capsys.readouterr().err
    verifying = _progress_lines(err, "verifying a.tar.gz: ")  # 1 MiB chunks of a 3.0x MiB file, shown in MiB
    assert [line.split()[2] for line in verifying] == ["1.0/3.0", "2.0/3.0", "3.0/3.0", "3.0/3.0"]
    assert verifying[-1].split()[4] == "(100.0%)"
    assert md5sum(str(archive)) == hashlib.md5(archive.read_bytes()).hexdigest()  # progress off by default
    assert capsys.readouterr().err == ""
    extract(str(archive), str(tmp_path / "out"), progress=True, interval_s=0)
    err = capsys.readouterr().err
    listing = [line.split()[4] for line in _progress_lines(err, "listing a.tar.gz: ")]
    assert listing[-1] == "(100.0%)" and len(listing) >= 2  # MiB of the compressed archive read while listing
    assert [line.split()[2] for line in _progress_lines(err, "extracting a.tar.gz: ")] == ["1/3", "2/3", "3/3"]
    assert (tmp_path / "out" / "src" / "blob.bin").read_bytes() == blob


def test_text_tools_do_not_import_torch(tmp_path):
    """The tools that only read and write text load the trainer's UTF-8 reader, not the data loader's torch (about
    2 s per call on a cold start)."""
    (tmp_path / "a.ltr").write_text("A B | C |\n")
    code = ("import sys; import utils.libri_labels, utils.combine_filelists, utils.select_subset, "
            "utils.generate_1h_10h_datasets, utils.text_labels; from utils.generate_dictionary import main; "
            f"main([{str(tmp_path / 'a.ltr')!r}, {str(tmp_path / 'dict.txt')!r}]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "dict.txt").read_text().splitlines()[0] == "| 2"
