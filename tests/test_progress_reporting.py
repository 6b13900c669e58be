"""Long-running commands show progress (count, rate, ETA) on stderr, never on stdout, without flooding, and end with
a summary: the n-gram LM builder (reading, counting, estimating, writing the ARPA file), the benchmarks, and the
progress line's own formatting of large counts."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import soundfile as sf

import common.ngram_lm as ngram_lm
from common.ngram_lm import NGramLM
from common.progress import Progress

LINE = re.compile(r"^(?P<desc>.+?): (?P<count>\d+(?:/\d+ \(\d+\.\d%\))?) [\d.]+ (?P<unit>\S+)/s elapsed \d+:\d\d:\d\d"
                  r"(?: ETA (?P<eta>\d+:\d\d:\d\d))?$")


def _lines(err: str, prefix: str) -> list:
    return [m for m in (LINE.match(line) for line in err.splitlines()) if m and m["desc"].startswith(prefix)]


def _corpus(tmp_path, n: int = 300):
    words = "THE CAT SAT ON A MAT AND DOG RAN TO SEE IT".split()
    text = tmp_path / "text.txt"
    text.write_text("".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 9)) + "\n"
                            for i in range(n)))
    return text


def test_large_whole_counts_are_written_in_full():
    """3 million n-grams read as "2975676/2975676", not "2.97568e+06/2.97568e+06"; fractions and scaled units as
    before."""
    t = [0.0]
    buf = io.StringIO()
    p = Progress(total=2_975_676, desc="reading lm.arpa", unit="n-grams", stream=buf, clock=lambda: t[0])
    t[0] = 2.0
    assert p.update(1_000_000) == ("reading lm.arpa: 1000000/2975676 (33.6%) 500000.00 n-grams/s elapsed 0:00:02 "
                                   "ETA 0:00:04")
    assert Progress(total=60.0, desc="x", stream=buf, clock=lambda: 0.0).update(12.5).startswith("x: 12.5/60 ")


def test_lm_builder_reports_each_stage_on_stderr(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ngram_lm, "_PROGRESS_STEP", 64)  # several lines per stage on a small text
    text = _corpus(tmp_path)
    out = tmp_path / "lm"
    assert ngram_lm.main(["--text", str(text), "--out_dir", str(out), "--order", "3", "--progress_interval", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{out / 'lm.arpa'}: order 3") and len(captured.out.splitlines()) == 1
    assert "/s elapsed" not in captured.out  # stdout: the summary alone
    err = captured.err
    reading = _lines(err, "reading text")
    assert reading and reading[-1]["count"] == "300" and reading[-1]["unit"] == "lines"
    counting = _lines(err, "counting n-grams")
    assert counting[-1]["count"] == "300/300 (100.0%)" and all(m["eta"] for m in counting)  # a list: ETA known
    estimating = _lines(err, "estimating")
    assert len(estimating) > 3 and all(m["eta"] and m["unit"] == "n-grams" for m in estimating)
    assert "(100.0%)" in estimating[-1]["count"] and estimating[-1]["desc"] == "estimating: done"
    assert {"estimating: remapping 3-grams", "estimating: probabilities of 3-grams"} <= {m["desc"] for m in estimating}
    lm = NGramLM.load_arpa(str(out / "lm.arpa"))
    writing = _lines(err, f"writing {out / 'lm.arpa'}")
    assert len(writing) > 2 and writing[-1]["count"] == f"{sum(lm.counts())}/{sum(lm.counts())} (100.0%)"
    assert re.search(r"^done in \d+:\d\d:\d\d$", err, re.M)  # the summary: total time

    assert ngram_lm.main(["--text", str(text), "--out_dir", str(out), "--order", "3", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith(f"{out / 'lm.arpa'}: order 3")


def test_lm_progress_does_not_flood_and_does_not_change_the_model(tmp_path, capsys, monkeypatch):
    """With an interval longer than the run, each stage prints its first and its final line only; the estimate
    and the ARPA file are the same with and without progress."""
    monkeypatch.setattr(ngram_lm, "_PROGRESS_STEP", 16)
    sentences = _corpus(tmp_path).read_text().splitlines()
    quiet = NGramLM.estimate(sentences, order=3)
    quiet.write_arpa(str(tmp_path / "quiet.arpa"))
    assert capsys.readouterr().err == ""  # the library is silent by default
    loud = NGramLM.estimate(iter(sentences), order=3, progress=True, progress_interval=1e9)
    loud.write_arpa(str(tmp_path / "loud.arpa"), progress=True, progress_interval=1e9)
    err = capsys.readouterr().err
    assert (tmp_path / "quiet.arpa").read_bytes() == (tmp_path / "loud.arpa").read_bytes()
    counting = _lines(err, "counting n-grams")
    assert [m["count"] for m in counting] == ["300"] and counting[0]["eta"] is None  # an iterator: no total
    assert len(_lines(err, "estimating")) == 2 and len(_lines(err, "writing")) == 2


def test_train_step_benchmark_progress_goes_to_stderr(capsys):
    pytest.importorskip("torch")
    from benchmarks import train_step

    assert train_step.main(["--preset", "tiny", "--batch", "1", "--seconds", "1", "--steps", "2", "--skip-hf",
                            "--threads", "1", "--progress_interval", "0"]) == 0
    captured = capsys.readouterr()
    lines = _lines(captured.err, "train_step")
    assert [m["count"] for m in lines] == [f"{i}/4 ({25.0 * i:.1f}%)" for i in range(1, 5)]
    assert lines[0]["desc"] == "train_step: warm-up" and lines[-1]["desc"] == "train_step: timed"
    assert "train_step" not in captured.out and "ours: median" in captured.out


def test_inference_latency_counts_forwards_outside_the_timing():
    torch = pytest.importorskip("torch")
    from benchmarks.inference_latency import time_alternating

    class Echo(torch.nn.Module):
        def forward(self, x, lengths=None):
            return (x,)

    t = [0.0]
    buf = io.StringIO()
    prog = Progress(total=6, desc="[tiny] batch 1", unit="forwards", interval_s=10.0, stream=buf,
                    clock=lambda: t[0])
    times = time_alternating({"ours": Echo(), "ours_masked": Echo()}, torch.zeros(1, 8), repeats=2, warmup=1,
                             progress=prog)
    assert [len(v) for v in times.values()] == [2, 2]
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("[tiny] batch 1: 1/6 (16.7%)") and lines[-1].startswith("[tiny] batch 1: 6/6 (100.0%)")
    assert len(lines) == 2  # a fake clock standing still: first and last line only

    class SlowProgress(Progress):  # a progress line that takes 50 ms to write (a slow terminal, a network disk)
        def update(self, n=1, desc=None):
            import time
            time.sleep(0.05)
            return super().update(n, desc)

    slow = SlowProgress(total=4, interval_s=0.0, stream=io.StringIO())
    times = time_alternating({"ours": Echo(), "ours_masked": Echo()}, torch.zeros(1, 8), repeats=1, warmup=1,
                             progress=slow)
    assert slow.done == 4 and max(max(v) for v in times.values()) < 0.04  # its time is not in the timings

def test_convert_to_wav_progress_lines_on_stderr(tmp_path, capsys):
    from utils import convert_to_wav

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        sf.write(str(src / f"a{i}.wav"), np.zeros(2205), 22050)
    assert convert_to_wav.main(["--input_dir", str(src), "--dest_dir", str(tmp_path / "out"), "--target_sr", "16000",
                                "--jobs", "1", "--progress-interval", "0"]) == 0
    captured = capsys.readouterr()
    lines = [l for l in captured.err.splitlines() if l.startswith(f"convert_to_wav {src}: ")]
    assert [l.split()[2] for l in lines] == ["1/3", "2/3", "3/3"] and all(" ETA " in l for l in lines)
    assert "\r" not in captured.err and captured.out == ""
    assert "3 file(s) converted into" in captured.err and " in 0:00:0" in captured.err


def test_text_labels_progress_lines_on_stderr(tmp_path, capsys):
    from utils import text_labels

    (tmp_path / "m.tsv").write_text(f"{tmp_path}\n" + "".join(f"u{i}.wav\t16000\n" for i in range(3)))
    (tmp_path / "t.txt").write_text("".join(f"u{i}.wav|hello world\n" for i in range(3)))
    assert text_labels.main([str(tmp_path / "m.tsv"), "--transcripts", str(tmp_path / "t.txt"), "--output-dir",
                             str(tmp_path), "--output-name", "x", "--progress-interval", "0"]) == 0
    captured = capsys.readouterr()
    lines = [l for l in captured.err.splitlines() if l.startswith(f"text_labels {tmp_path / 'm.tsv'}: ")]
    assert [l.split()[2] for l in lines] == ["1/3", "2/3", "3/3"] and captured.out == ""
    assert text_labels.main([str(tmp_path / "m.tsv"), "--transcripts", str(tmp_path / "t.txt"), "--output-dir",
                             str(tmp_path), "--output-name", "x", "--quiet"]) == 0
    assert "transcripts/s" not in capsys.readouterr().err
