"""inference.py end to end on a tiny CTC model (random weights) and a tiny tonal corpus.

Random weights are enough: the point is that batching, TorchScript and torch.compile do not change the predictions,
that the output files follow docs/INFERENCE.md, and that bad inputs fail with messages naming the file.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest
import torch

import inference
from common.data import Dictionary
from common.logging import read_dllogger_log
from conftest import make_corpus
from wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2Model, preset
from wav2vec2.checkpoint import model_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
               dropout_input=0.0, dropout_features=0.0, final_dropout=0.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inference")
    data = make_corpus(str(tmp / "corpus"), n_train=16, n_valid=9, seed=5)
    dictionary = Dictionary.load(os.path.join(data, "dict.ltr.txt"))
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("tiny", **NO_DROP), len(dictionary))
    with torch.no_grad():  # a blank-heavy but not blank-only random model
        model.w2v_encoder.proj.bias[0] += 0.5
    ckpt = str(tmp / "ctc.pt")
    torch.save(model_checkpoint(model, labels=dictionary.to_text()), ckpt)
    return {"tmp": tmp, "data": data, "ckpt": ckpt, "dictionary": dictionary}


def _args(setup, out, *extra):
    return ["--w2v_path", setup["ckpt"], "--data", setup["data"], "--valid_subset", "valid",
            "--output_dir", str(out), "--num_workers", "0", "--cpu", *extra]


def _read_tsv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter="\t"))


def _wer(out):
    records = [r for r in read_dllogger_log(os.path.join(out, "nvlog_infer.json")) if r.get("step") == []]
    return records[-1]["data"]


def _run_inprocess(setup, name, *extra):
    out = setup["tmp"] / name
    preds = str(out / "p.tsv")
    os.makedirs(out, exist_ok=True)
    rc = inference.main(_args(setup, out, "--save_predictions", preds, *extra))
    assert rc == 0
    return _read_tsv(preds), _wer(str(out))


def test_predictions_do_not_depend_on_batching(setup):
    one, log1 = _run_inprocess(setup, "bs1", "--batch_size", "1")
    four, log4 = _run_inprocess(setup, "bs4", "--batch_size", "4")
    dur, logd = _run_inprocess(setup, "dur", "--max_duration", "3.5")
    assert one == four == dur
    assert len(one) == 1 + 9
    assert any(row[2] for row in one[1:])  # not blank-only
    for key in ("eval_wer", "eval_uer", "eval_w_errs", "eval_w_len", "eval_c_errs", "eval_c_len"):
        assert log1[key] == log4[key] == logd[key]


def test_torchscript_gives_the_eager_predictions(setup):
    eager, log_e = _run_inprocess(setup, "eager", "--batch_size", "3")
    scripted, log_s = _run_inprocess(setup, "ts", "--batch_size", "3", "--torchscript")
    assert scripted == eager and log_s["eval_wer"] == log_e["eval_wer"]


@pytest.mark.slow
def test_torch_compile_gives_the_eager_predictions(setup):
    eager, _ = _run_inprocess(setup, "eager_c", "--batch_size", "3")
    compiled, _ = _run_inprocess(setup, "compiled", "--batch_size", "3", "--torch_compile")
    assert compiled == eager


def test_bf16_on_cpu_runs(setup):
    rows, log = _run_inprocess(setup, "bf16", "--batch_size", "4", "--bf16")
    assert len(rows) == 10 and "eval_wer" in log


def test_end_to_end_subprocess_files_and_printed_wer(setup):
    out = setup["tmp"] / "e2e"
    preds, logits = str(out / "pred.tsv"), str(out / "logits.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "inference.py"),
                           *_args(setup, out, "--batch_size", "2", "--save_predictions", preds,
                                  "--save_logits", logits)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "inference: " in proc.stderr  # progress line
    printed = re.search(r"^WER: (\d+\.\d\d)%", proc.stdout, re.M)
    assert printed and re.search(r"^UER: \d+\.\d\d%", proc.stdout, re.M)
    log = _wer(str(out))
    assert printed.group(1) == f"{log['eval_wer']:.2f}"
    assert os.path.isfile(str(out / "nvlog_infer.json.1"))  # the per-run copy
    # predictions: header + one row per filelist entry, in filelist order, ids = relative paths
    with open(os.path.join(setup["data"], "valid.tsv")) as fh:
        names = [line.split("\t")[0] for line in fh.read().splitlines()[1:]]
    with open(os.path.join(setup["data"], "valid.wrd")) as fh:
        words = fh.read().splitlines()
    rows = _read_tsv(preds)
    assert rows[0] == ["id", "reference", "hypothesis"]
    assert [r[0] for r in rows[1:]] == names
    assert [r[1] for r in rows[1:]] == words
    # the WER recomputed from the file equals the logged one
    errs = sum(_ed(r[2].split(), r[1].split()) for r in rows[1:])
    n = sum(len(r[1].split()) for r in rows[1:])
    assert log["eval_wer"] == pytest.approx(100.0 * errs / n)
    # logits: ids, per-utterance T_i x V log-probabilities of the valid frames, symbols
    saved = torch.load(logits)
    assert saved["ids"] == names and saved["symbols"] == setup["dictionary"].symbols
    assert len(saved["log_probs"]) == len(names)
    with open(os.path.join(setup["data"], "valid.tsv")) as fh:
        sizes = [int(line.split("\t")[1]) for line in fh.read().splitlines()[1:]]
    for lp, size in zip(saved["log_probs"], sizes):
        assert lp.dtype == torch.float32 and lp.shape[1] == len(setup["dictionary"])
        assert abs(lp.shape[0] - size / 320) < 2  # 20 ms frames
        assert torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[0]), atol=1e-4)


def _free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ed(a, b):
    from common.metrics import edit_distance
    return edit_distance(a, b)


def test_performance_mode_logs_latencies(setup):
    out = setup["tmp"] / "perf"
    rc = inference.main(_args(setup, out, "--batch_size", "4", "--steps", "21", "--warmup_steps", "2"))
    assert rc == 0
    log = _wer(str(out))
    assert "eval_wer" not in log
    for stage in ("data", "dnn", "data+dnn"):
        for suffix in ("0_99", "0_95", "0_9", "0_5"):
            assert log[f"{stage}_latency_{suffix}"] > 0
    assert log["dnn_latency_0_99"] >= log["dnn_latency_0_5"] * 0.5
    assert log["dnn_throughput_utts_per_s"] > 0 and log["dnn_rtf"] > 0


# ----------------------------------------------------------------------------------------------- bad input


def _fails(setup, capsys, name, *extra):
    rc = inference.main(_args(setup, setup["tmp"] / name, "--batch_size", "2", *extra))
    assert rc == 2
    return capsys.readouterr().err


def test_missing_checkpoint(setup, capsys):
    err = _fails(setup, capsys, "bad1", "--w2v_path", "/nonexistent/model.pt")
    assert "checkpoint not found: /nonexistent/model.pt" in err


def test_pretraining_checkpoint_is_refused(setup, capsys):
    path = str(setup["tmp"] / "pretrain.pt")
    torch.save(model_checkpoint(Wav2Vec2Model(preset("tiny", **NO_DROP))), path)
    err = _fails(setup, capsys, "bad2", "--w2v_path", path)
    assert path in err and "pretraining checkpoint" in err


def test_dictionary_size_mismatch(setup, capsys):
    path = str(setup["tmp"] / "dict.small.txt")
    with open(path, "w") as fh:
        fh.write("| 5\nA 3\n")
    err = _fails(setup, capsys, "bad3", "--labels_path", path)
    assert "dictionary size mismatch" in err and path in err


def test_missing_filelist(setup, capsys):
    err = _fails(setup, capsys, "bad4", "--valid_subset", "nope")
    assert "filelist not found" in err and "nope.tsv" in err


def test_fp16_on_cpu_is_refused(setup, capsys):
    err = _fails(setup, capsys, "bad5", "--fp16")
    assert "--fp16 needs a CUDA device" in err


def test_ddp_two_gloo_processes_match_one_process(setup):
    """torchrun with 2 CPU processes (gloo, 1 thread each): shards are gathered on rank 0 in filelist order."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun not installed next to the interpreter")
    single, log1 = _run_inprocess(setup, "ddp_ref", "--batch_size", "2")
    out = setup["tmp"] / "ddp"
    preds = str(out / "p.tsv")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()),
                           os.path.join(ROOT, "inference.py"),
                           *_args(setup, out, "--batch_size", "2", "--save_predictions", preds)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Inference with 2 processes" in proc.stdout
    assert _read_tsv(preds) == single
    log = _wer(str(out))
    for key in ("eval_wer", "eval_w_errs", "eval_w_len", "eval_c_errs", "eval_c_len", "eval_utterances"):
        assert log[key] == log1[key]


def test_use_ema(setup, capsys, tmp_path):
    err = _fails(setup, capsys, "ema_missing", "--use_ema")
    assert "has no EMA weights" in err and setup["ckpt"] in err
    ckpt = torch.load(setup["ckpt"], weights_only=False)
    ckpt["ema_model"] = dict(ckpt["model"])
    path = str(tmp_path / "with_ema.pt")
    torch.save(ckpt, path)
    plain, _ = _run_inprocess(setup, "ema_plain", "--batch_size", "4")
    ema, _ = _run_inprocess(setup, "ema", "--batch_size", "4", "--use_ema", "--w2v_path", path)
    assert ema == plain  # same weights stored as EMA


def test_filelist_without_transcripts_transcribes_only(setup, tmp_path, capsys):
    data = tmp_path / "nolabels"
    data.mkdir()
    with open(os.path.join(setup["data"], "valid.tsv")) as src, open(data / "some.tsv", "w") as dst:
        dst.write(src.read())
    out = tmp_path / "out"
    preds = str(tmp_path / "p.tsv")
    rc = inference.main(["--w2v_path", setup["ckpt"], "--data", str(data), "--valid_subset", "some",
                         "--output_dir", str(out), "--num_workers", "0", "--cpu", "--batch_size", "4",
                         "--save_predictions", preds])
    assert rc == 0
    rows = _read_tsv(preds)
    assert len(rows) == 10 and all(r[1] == "" for r in rows[1:])
    assert "eval_wer" not in _wer(str(out))
    last = capsys.readouterr().out.strip().splitlines()[-1]  # said again at the end, where it is seen
    assert last.startswith("No WER:") and "some.ltr not found" in last


def test_transcribe_wav_and_filelist(setup, tmp_path, capsys):
    """A reference bug (REFERENCE-QUIRKS §9.2: the transcription modes crash) fixed: --transcribe_wav prints the
    transcript of one file, --transcribe_filelist those of a filelist kept anywhere; both equal the hypotheses of
    the ordinary filelist run (oracle: its predictions file)."""
    import soundfile as sf

    ref, _ = _run_inprocess(setup, "transcribe_ref", "--batch_size", "4")
    expected = {row[0]: " ".join(row[2].split()) for row in ref[1:]}
    with open(os.path.join(setup["data"], "valid.tsv")) as fh:
        root, first = fh.readline().strip(), fh.readline().split("\t")[0]
    wav = os.path.join(root, first)
    common = ["--w2v_path", setup["ckpt"], "--num_workers", "0", "--cpu"]  # no --output_dir: no log file
    capsys.readouterr()
    assert inference.main([*common, "--transcribe_wav", wav]) == 0
    captured = capsys.readouterr()
    # stdout holds the transcript alone (a pipe or a file gets just that); the progress and summary go to stderr
    assert captured.out.splitlines() == [f"{os.path.basename(wav)}\t{expected[first]}"]
    assert "Evaluating" in captured.err
    filelist = tmp_path / "elsewhere.tsv"
    with open(os.path.join(setup["data"], "valid.tsv")) as src:
        filelist.write_text(src.read())
    out_dir = tmp_path / "out"
    assert inference.main([*common, "--transcribe_filelist", str(filelist), "--output_dir", str(out_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name}\t{hyp}" for name, hyp in expected.items()]
    assert (out_dir / "nvlog_infer.json").is_file()
    assert inference.main([*common, "--transcribe_filelist", str(filelist), "--batch_size", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name}\t{hyp}" for name, hyp in expected.items()]
    assert inference.main([*common]) == 2  # evaluating a corpus needs --output_dir (or --log_file)
    assert "give --output_dir" in capsys.readouterr().err

    assert inference.main([*common, "--transcribe_wav", wav, "--transcribe_filelist", str(filelist)]) == 2
    assert "not both" in capsys.readouterr().err
    assert inference.main([*common, "--transcribe_wav", str(tmp_path / "missing.wav")]) == 2
    assert "audio file not found" in capsys.readouterr().err
    slow = tmp_path / "8k.wav"
    sf.write(str(slow), sf.read(wav)[0][::2], 8000)
    assert inference.main([*common, "--transcribe_wav", str(slow)]) == 2
    err = capsys.readouterr().err
    assert "8k.wav" in err and "8000 Hz" in err and "listed at" not in err and "convert_to_wav" in err


def test_cuda_graphs_need_cuda(setup, capsys):
    err = _fails(setup, capsys, "graphs_cpu", "--cuda_graphs")
    assert "--cuda_graphs needs a CUDA device" in err
    err = _fails(setup, capsys, "graphs_ts", "--cuda_graphs", "--torchscript")
    assert "--cuda_graphs replays the eager model" in err
    err = _fails(setup, capsys, "graphs_pad", "--cuda_graphs", "--cuda_graph_pad", "-1")
    assert "--cuda_graph_pad must be >= 0" in err


def _corpus_copy(setup, tmp_path):
    import shutil

    data = tmp_path / "copy"
    shutil.copytree(setup["data"], data)
    tsv = (data / "valid.tsv").read_text().splitlines()
    tsv[0] = str(data / "valid")
    (data / "valid.tsv").write_text("\n".join(tsv) + "\n")
    return data


@pytest.mark.parametrize("workers", ["0", "1"])
def test_bad_audio_during_the_run_is_one_clear_line(setup, tmp_path, capsys, workers):
    """A missing and an 8 kHz file found while evaluating (also inside a DataLoader worker, whose traceback torch
    wraps into the message): exit status 2 and one line naming the file and its filelist line."""
    import soundfile as sf

    data = _corpus_copy(setup, tmp_path)
    common = ["--w2v_path", setup["ckpt"], "--data", str(data), "--valid_subset", "valid", "--output_dir",
              str(tmp_path / "out"), "--num_workers", workers, "--cpu", "--batch_size", "2"]
    wave, _ = sf.read(str(data / "valid" / "utt002.flac"))
    sf.write(str(data / "valid" / "utt002.flac"), wave[::2], 8000)
    assert inference.main(common) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress lines
    assert last.startswith("error: audio file") and "utt002.flac" in last and "valid.tsv:4" in last
    assert "Traceback" not in err and "8000 Hz" in last
    os.remove(data / "valid" / "utt002.flac")
    assert inference.main(common) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: audio file not found") and "valid.tsv:4" in last and "Traceback" not in err


def test_empty_filelist_and_foreign_dictionary(setup, tmp_path, capsys):
    data = _corpus_copy(setup, tmp_path)
    (data / "empty.tsv").write_text(str(data / "valid") + "\n")
    common = ["--w2v_path", setup["ckpt"], "--data", str(data), "--output_dir", str(tmp_path / "out"),
              "--num_workers", "0", "--cpu", "--batch_size", "2"]
    assert inference.main([*common, "--valid_subset", "empty"]) == 2
    assert "empty.tsv lists no utterances" in capsys.readouterr().err
    # the stored dictionary's symbols in another order: same size, so only the comparison can catch it
    lines = (data / "dict.ltr.txt").read_text().splitlines()
    (data / "reversed.txt").write_text("\n".join(reversed(lines)) + "\n")
    assert inference.main([*common, "--valid_subset", "valid", "--labels_path", str(data / "reversed.txt")]) == 2
    assert "lists other symbols" in capsys.readouterr().err
    # the same dictionary as stored: accepted
    assert inference.main([*common, "--valid_subset", "valid", "--labels_path", str(data / "dict.ltr.txt")]) == 0


def test_unwritable_output_dir(setup, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert inference.main(_args(setup, blocker / "out", "--batch_size", "2")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "a_file" in err and "Traceback" not in err


def test_transcripts_piped_into_a_reader_that_stops_early(setup, tmp_path):
    """``inference.py --transcribe_filelist ... | head``: the reader closing the pipe ends the run quietly (exit 0,
    no error line), as for any Unix filter."""
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "inference.py")
    cmd = (f"'{sys.executable}' '{script}' --w2v_path '{setup['ckpt']}' --num_workers 0 --cpu "
           f"--transcribe_filelist '{os.path.join(setup['data'], 'valid.tsv')}' | head -c 0")
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    error_lines = [line for line in res.stderr.splitlines()
                   if line.lower().startswith(("error", "traceback", "brokenpipe", "exception"))]
    assert res.returncode == 0 and not error_lines and "Broken pipe" not in res.stderr, res.stderr[-2000:]


def test_output_files_in_folders_still_to_make(setup, tmp_path, capsys):
    """--save_predictions / --save_logits / --log_file in folders that do not exist yet: the folders are made (a
    finished evaluation used to fail at its last write); a folder that cannot be made fails before the model runs."""
    new = tmp_path / "new" / "deeper"
    rc = inference.main(_args(setup, tmp_path / "out", "--batch_size", "4", "--save_predictions", str(new / "p.tsv"),
                              "--save_logits", str(new / "l.pt"), "--log_file", str(tmp_path / "logs" / "x.json")))
    assert rc == 0
    assert len(_read_tsv(new / "p.tsv")) == 10 and (new / "l.pt").is_file() and (tmp_path / "logs" / "x.json").is_file()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    capsys.readouterr()
    rc = inference.main(_args(setup, tmp_path / "out2", "--batch_size", "4",
                              "--save_predictions", str(blocker / "p.tsv")))
    err = capsys.readouterr()
    assert rc == 2 and "--save_predictions" in err.err and "Evaluating" not in err.out


def test_audio_too_short_for_a_frame_is_one_line_naming_file_and_line(setup, tmp_path, capsys):
    """An utterance shorter than the extractor's input for one frame (400 samples for this model, computed from its
    convolutions: oracle, torch's conv1d output length) used to stop the model with a traceback naming no file."""
    import numpy as np
    import soundfile as sf
    import torch.nn.functional as F

    model = Wav2Vec2ForCTC(preset("tiny", **NO_DROP), len(setup["dictionary"]))

    def frames(n):  # oracle: torch's conv1d with the model's kernels and strides
        x = torch.zeros(1, 1, n)
        for block in model.w2v_model.feature_extractor.conv_layers:
            k, s = block.conv.kernel_size[0], block.conv.stride[0]
            if x.shape[-1] < k:
                return 0
            x = F.conv1d(x, torch.zeros(1, 1, k), stride=s)
        return x.shape[-1]

    assert frames(399) == 0 and frames(400) == 1
    data = _corpus_copy(setup, tmp_path)
    rng = np.random.default_rng(0)
    sf.write(str(data / "valid" / "utt003.flac"), (0.1 * rng.standard_normal(399)).astype(np.float32), 16000)
    tsv = (data / "valid.tsv").read_text()
    (data / "valid.tsv").write_text(re.sub(r"utt003\.flac\t\d+", "utt003.flac\t399", tsv))
    common = ["--w2v_path", setup["ckpt"], "--num_workers", "0", "--cpu", "--batch_size", "2"]
    assert inference.main([*common, "--data", str(data), "--valid_subset", "valid", "--output_dir",
                           str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 1 utterance(s) shorter than the 400 samples") and "Traceback" not in err
    assert f"{data / 'valid' / 'utt003.flac'} ({data / 'valid.tsv'}:5, 399 samples)" in last
    assert inference.main([*common, "--transcribe_filelist", str(data / "valid.tsv")]) == 2
    assert f"({data / 'valid.tsv'}:5, 399 samples)" in capsys.readouterr().err
    assert inference.main([*common, "--transcribe_wav", str(data / "valid" / "utt003.flac")]) == 2
    err = capsys.readouterr().err
    assert f"audio file {data / 'valid' / 'utt003.flac'} has 399 samples, fewer than the 400" in err
    assert "listed at" not in err and "Traceback" not in err
    sf.write(str(data / "valid" / "utt003.flac"), (0.1 * rng.standard_normal(400)).astype(np.float32), 16000)
    assert inference.main([*common, "--transcribe_wav", str(data / "valid" / "utt003.flac")]) == 0  # one frame


def test_non_utf8_dictionary_filelist_and_transcripts_name_file_and_line(setup, tmp_path, capsys):
    data = _corpus_copy(setup, tmp_path)
    common = ["--w2v_path", setup["ckpt"], "--data", str(data), "--valid_subset", "valid", "--output_dir",
              str(tmp_path / "out"), "--num_workers", "0", "--cpu", "--batch_size", "2"]
    dict_bytes = (data / "dict.ltr.txt").read_bytes().splitlines(keepends=True)
    (data / "latin1.txt").write_bytes(b"".join(dict_bytes[:2]) + b"\xe9" + b"".join(dict_bytes[2:]))
    for path, argv in ((data / "latin1.txt", ["--labels_path", str(data / "latin1.txt")]),
                       (data / "valid.ltr", []), (data / "valid.tsv", [])):
        if path.name.startswith("valid"):
            original = path.read_bytes()
            lines = original.splitlines(keepends=True)
            path.write_bytes(b"".join(lines[:2]) + b"\xe9" + b"".join(lines[2:]))
        assert inference.main([*common, *argv]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == (
            f"error: {path}:3: not UTF-8 text (byte 0xe9 at column 1); filelists, transcripts and dictionaries "
            "must be UTF-8: convert the file (e.g. iconv -f latin1 -t utf-8)")
        assert "Traceback" not in err
        if path.name.startswith("valid"):
            path.write_bytes(original)


def test_transcription_keeps_the_transcripts_made_before_a_bad_file(setup, tmp_path, capsys):
    """--transcribe_filelist over many files, one of which turns out unreadable mid-run: the transcripts already
    made are printed (they were lost with the error), then the one-line error naming the bad file (exit 2)."""
    import shutil

    with open(os.path.join(setup["data"], "valid.tsv")) as fh:
        root = fh.readline().strip()
        rows = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    audio = tmp_path / "audio"
    shutil.copytree(root, audio)
    # damage the shortest file and list it last: the last one read whatever the order (filelist or size)
    last = min(rows, key=lambda r: int(r[1]))
    rows = [r for r in rows if r is not last] + [last]
    (audio / last[0]).write_bytes(b"not audio at all" * 64)
    filelist = tmp_path / "list.tsv"
    filelist.write_text("\n".join([str(audio)] + ["\t".join(r) for r in rows]) + "\n")
    common = ["--w2v_path", setup["ckpt"], "--num_workers", "0", "--cpu"]
    capsys.readouterr()
    assert inference.main([*common, "--transcribe_filelist", str(filelist)]) == 2
    captured = capsys.readouterr()
    printed = [line.split("\t")[0] for line in captured.out.splitlines()]
    assert sorted(printed) == sorted(r[0] for r in rows if r is not last)
    assert f"{len(rows) - 1} files of {len(rows)} transcribed before this error" in captured.err
    assert last[0] in captured.err.splitlines()[-1]


def test_a_reference_letter_missing_from_the_dictionary_is_an_error_or_an_unk_error(setup, tmp_path, capsys):
    """A test transcript with a letter the model's dictionary lacks: by default one error naming the label file and
    line (and the way out); with --on_unknown_label unk the letter becomes <unk>, which no hypothesis contains, and the
    WER counts that word as an error (checked against an independent word-level edit distance of the saved rows)."""
    import shutil

    import editdistance

    data = tmp_path / "corpus"
    shutil.copytree(setup["data"], data)
    lines = (data / "valid.ltr").read_text(encoding="utf-8").splitlines()
    assert "Ü" not in setup["dictionary"].indices
    lines[2] = "Ü " + lines[2]  # the first word of utterance 3 gains an unknown first letter
    (data / "valid.ltr").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["--w2v_path", setup["ckpt"], "--data", str(data), "--valid_subset", "valid", "--num_workers", "0",
            "--cpu", "--batch_size", "4"]
    assert inference.main(args + ["--output_dir", str(tmp_path / "err")]) == 2
    err = capsys.readouterr().err
    assert f"{data / 'valid.ltr'}:3" in err and "'Ü'" in err and "--on_unknown_label unk" in err
    preds = str(tmp_path / "p.tsv")
    assert inference.main(args + ["--output_dir", str(tmp_path / "unk"), "--on_unknown_label", "unk",
                                  "--save_predictions", preds]) == 0
    rows = _read_tsv(preds)[1:]
    assert rows[2][1].split()[0].startswith("<unk>")
    errors = sum(editdistance.eval(ref.split(), hyp.split()) for _, ref, hyp in rows)
    words = sum(len(ref.split()) for _, ref, _ in rows)
    log = _wer(str(tmp_path / "unk"))
    assert (log["eval_w_errs"], log["eval_w_len"]) == (errors, words)
