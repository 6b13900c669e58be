"""Bad input in the data layer and the data tools: audio too short for a frame, transcripts CTC cannot align,
non-UTF-8 text files, a missing audio root, over-long validation utterances, files that are not 16 kHz mono, and
``utils.validate`` agreeing with the trainer. Every bad file is made by hand here; the oracles are torch's own
convolution and CTC loss, the positions the tests wrote, and the trainer's own loading path."""

from __future__ import annotations

import logging
import os
import types

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from common.data import AudioDataset, Dictionary, Labels, LoaderConfig, Manifest, build_loader, load_labels
from common.data import load_manifest, open_split
from common.data.batching import batch_by_size, conv_frames, min_input_samples
from common.data.bench import write_corpus
from common.data.errors import DataError
from utils import generate_dictionary, generate_filelist, libri_labels, validate
from utils.common import DataToolError, load_labelled, read_manifest, run_main

STANDARD = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2  # the wav2vec 2.0 extractor (dim, kernel, stride)
ODD = [(8, 7, 3), (8, 5, 2), (8, 3, 3)]
STANDARD_SPEC = "[(512,10,5)]+[(512,3,2)]*4+[(512,2,2)]*2"


def torch_frames(n: int, layers) -> int:
    """Oracle: the output length of the real convolutions (torch's conv1d, no padding) on ``n`` samples."""
    x = torch.zeros(1, 1, n)
    for _, kernel, stride in layers:
        if x.shape[-1] < kernel:
            return 0
        x = F.conv1d(x, torch.zeros(1, 1, kernel), stride=stride)
    return int(x.shape[-1])


def ctc_is_infinite(target, frames: int) -> bool:
    """Oracle: torch's CTC loss without zero_infinity is +inf exactly when no alignment exists."""
    vocab = 1 + max(target) if target else 2
    log_probs = torch.randn(frames, 1, vocab, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    loss = F.ctc_loss(log_probs.log_softmax(-1), torch.tensor([target]), torch.tensor([frames]),
                      torch.tensor([len(target)]), blank=0, reduction="sum", zero_infinity=False)
    return bool(torch.isinf(loss))


# ---------------------------------------------------------------- frames of the extractor


@pytest.mark.parametrize("layers", [STANDARD, ODD])
def test_frames_and_minimum_input_match_the_convolutions(layers):
    lengths = list(range(0, 1300)) + [16000, 46561, 100003]
    assert conv_frames(lengths, layers).tolist() == [torch_frames(n, layers) for n in lengths]
    for frames in (1, 2, 3, 7):
        smallest = next(n for n in range(0, 5000) if torch_frames(n, layers) >= frames)
        assert min_input_samples(layers, frames) == smallest
    # (kernel, stride) pairs work as well as the config's (dim, kernel, stride) triples
    assert min_input_samples([(k, s) for _, k, s in layers]) == min_input_samples(layers)


def test_frames_of_the_standard_extractor_are_the_reference_facts():
    # REFERENCE.md: frames for L = 16000 / 32000 / 46560 / 250000 / 320000 samples are 49 / 99 / 145 / 781 / 999
    assert conv_frames([16000, 32000, 46560, 250000, 320000], STANDARD).tolist() == [49, 99, 145, 781, 999]
    assert min_input_samples(STANDARD) == 400


# ---------------------------------------------------------------- too short for a frame

LENGTHS = [200, 399, 400, 1200, 3000, 5000, 5200, 2500]


@pytest.fixture()
def short_corpus(tmp_path):
    write_corpus(str(tmp_path), LENGTHS, split="train",
                 transcripts=["A |"] * len(LENGTHS))
    (tmp_path / "dict.ltr.txt").write_text("| 9\nA 8\nB 7\n")
    return tmp_path


def _cfg(**kw):
    base = dict(max_tokens=12000, max_sample_size=None, pad=False, seed=3, num_workers=0, conv_layers=STANDARD,
                required_batch_size_multiple=1)
    base.update(kw)
    return LoaderConfig(**base)


@pytest.mark.parametrize("pad", [False, True])
def test_training_skips_audio_too_short_for_a_frame_and_names_the_lines(short_corpus, caplog, pad):
    tsv = short_corpus / "train.tsv"
    ds = AudioDataset(load_manifest(tsv))
    with caplog.at_level(logging.WARNING):
        loader = build_loader(ds, _cfg(pad=pad))
    assert loader.summary.skipped_no_frames == 2 and loader.summary.kept == len(LENGTHS) - 2
    assert loader.summary.min_input_samples == 400 and "2 skipped (< 400 samples: too short for the model)" in \
        loader.summary.describe()
    warning = [r.getMessage() for r in caplog.records if "feature extractor" in r.getMessage()]
    assert len(warning) == 1  # once, at batch-plan time
    assert f"'{tsv}:2'" in warning[0] and f"'{tsv}:3'" in warning[0] and f"{tsv}:4" not in warning[0]
    seen = []
    for batch in loader:
        seen += batch["id"].tolist()
        for n in batch["lengths"].tolist():  # every row the model sees gives it at least one frame
            assert torch_frames(n, STANDARD) >= 1
    assert sorted(seen) == list(range(2, len(LENGTHS)))


def test_a_crop_cap_below_one_frame_leaves_nothing(short_corpus):
    """The model sees min(size, max_sample_size) samples: a cap under 400 gives every utterance 0 frames."""
    ds = AudioDataset(load_manifest(short_corpus / "train.tsv"))
    with pytest.raises(DataError, match=r"no utterance of .* left .* 8 shorter than the model.s minimum \(400 samples\)"):
        build_loader(ds, _cfg(max_sample_size=350))
    assert build_loader(ds, _cfg(max_sample_size=450)).summary.skipped_no_frames == 2


def test_without_the_extractor_layers_nothing_is_skipped(short_corpus):
    ds = AudioDataset(load_manifest(short_corpus / "train.tsv"))
    loader = build_loader(ds, _cfg(conv_layers=None))
    assert loader.summary.kept == len(LENGTHS) and loader.summary.min_input_samples is None
    widths = [b["source"].shape[1] for b in loader]
    assert min(torch_frames(w, STANDARD) for w in widths) == 0  # what the check is for: a 0-frame batch


def test_validation_refuses_audio_too_short_naming_file_line_and_flag(short_corpus, caplog):
    tsv = short_corpus / "train.tsv"
    ds = AudioDataset(load_manifest(tsv))
    with pytest.raises(DataError) as err:
        build_loader(ds, _cfg(pad=True, shuffle=False, filter_long=False))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("2 validation utterance(s) shorter than the 400 samples")
    assert f"{short_corpus / 'utt00000.flac'} ({tsv}:2, 200 samples)" in msg
    assert f"{short_corpus / 'utt00001.flac'} ({tsv}:3, 399 samples)" in msg
    assert "utt00002" not in msg and "--skip_invalid_size_inputs_valid_test" in msg
    # with --skip_invalid_size_inputs_valid_test (filter_long) they are skipped with a count, like over-long ones
    with caplog.at_level(logging.WARNING):
        loader = build_loader(ds, _cfg(pad=True, shuffle=False, filter_long=True))
    assert loader.summary.skipped_no_frames == 2 and "2 samples are shorter" in caplog.text


def test_validation_utterance_over_the_budget_names_file_line_and_flag(short_corpus):
    tsv = short_corpus / "train.tsv"
    ds = AudioDataset(load_manifest(tsv))
    with pytest.raises(DataError) as err:
        build_loader(ds, _cfg(pad=True, shuffle=False, filter_long=False, max_tokens=5100, conv_layers=None))
    msg = str(err.value)
    assert "\n" not in msg and "max_positions" not in msg
    assert f"{short_corpus / 'utt00006.flac'} ({tsv}:8, 5200 samples)" in msg and "utt00005" not in msg
    assert "--max_tokens_valid" in msg and "at least 5200" in msg and "--skip_invalid_size_inputs_valid_test" in msg
    # the batching function itself: names the entries when told how, never the non-existent max_positions
    with pytest.raises(DataError) as err:
        batch_by_size(np.arange(3), np.array([50, 150, 120]), 100, where=lambda i: f"x.tsv:{i + 2}")
    assert "x.tsv:3" in str(err.value) and "x.tsv:4" in str(err.value) and "max_positions" not in str(err.value)


# ---------------------------------------------------------------- CTC cannot align


def _labelled(lines, sizes):
    n = len(lines)
    manifest = Manifest(path="x.tsv", root="/nowhere", files=[f"f{i}.flac" for i in range(n)],
                        sizes=np.asarray(sizes, dtype=np.int64), line_numbers=np.arange(2, n + 2), num_entries=n)
    labels = Labels(path="x.ltr", lines=lines, line_numbers=np.arange(1, n + 1))
    return AudioDataset(manifest, labels=labels, dictionary=Dictionary.from_symbols("|ABC"))


def test_frames_ctc_needs_match_torch_ctc_loss():
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(list("AB|"), size=rng.integers(1, 12))) for _ in range(60)]
    lines += ["A A A", "A B A", "| |", "A"]
    ds = _labelled(lines, [0] * len(lines))
    for i, line in enumerate(lines):
        ids = ds.encode_label(i).tolist()
        needed = ds.ctc_frames_needed(i)
        assert validate.ctc_frames_needed(line.split()) == needed  # the tool's count is the trainer's
        for frames in range(max(1, needed - 2), needed + 3):
            assert (needed > frames) == ctc_is_infinite(ids, frames), (line, frames)
        # the dataset's check (with its shortcut for transcripts shorter, in characters, than the frames)
        assert dict(ds.ctc_infeasible([i], np.full(len(lines), needed - 1))) == {i: needed}
        assert ds.ctc_infeasible([i], np.full(len(lines), needed)) == []


@pytest.mark.parametrize("max_sample_size", [None, 9000])
def test_finetuning_counts_and_logs_untrainable_transcripts_once(tmp_path, caplog, max_sample_size):
    # 3200 samples give 9 frames; 16000 give 49 (9000 give 27)
    sizes = [16000, 3200, 3200, 16000]
    transcripts = ["A B |", "A A A A A |", "A B A B A |", " ".join(["A B"] * 14) + " |"]
    tsv = write_corpus(str(tmp_path), sizes, split="train", transcripts=transcripts)
    (tmp_path / "dict.ltr.txt").write_text("| 9\nA 8\nB 7\n")
    ds = open_split(tmp_path, "train", labels="ltr")
    seen = [n if max_sample_size is None else min(n, max_sample_size) for n in sizes]
    oracle = [i for i in range(4) if ctc_is_infinite(ds.encode_label(i).tolist(), torch_frames(seen[i], STANDARD))]
    assert oracle == ([1] if max_sample_size is None else [1, 3])
    with caplog.at_level(logging.WARNING):
        loader = build_loader(ds, _cfg(pad=True, max_tokens=40000, max_sample_size=max_sample_size))
    assert loader.summary.ctc_infeasible == len(oracle) and loader.summary.kept == 4  # kept: the maths unchanged
    records = [r.getMessage() for r in caplog.records if "longer than CTC can align" in r.getMessage()]
    assert len(records) == 1 and records[0].startswith(f"{len(oracle)} utterance(s) with a transcript")
    for i in oracle:
        assert f"{tsv}:{i + 2} ({tmp_path / 'train.ltr'}:{i + 1}:" in records[0]
    assert f"{tsv}:3 ({tmp_path / 'train.ltr'}:2: 10 frames needed, 9 available)" in records[0]
    assert f"{len(oracle)} with a transcript longer than CTC can align" in loader.summary.describe()


# ---------------------------------------------------------------- text files that are not UTF-8


def _latin1(path, lines, bad_line, bad_col):
    """Write ``lines`` as UTF-8 except one 'é' in Latin-1 (byte 0xe9) inserted at 1-based (bad_line, bad_col)."""
    data = b""
    for no, line in enumerate(lines, start=1):
        raw = line.encode("utf-8")
        if no == bad_line:
            raw = raw[:bad_col - 1] + b"\xe9" + raw[bad_col - 1:]
        data += raw + b"\n"
    path.write_bytes(data)
    return path


def test_non_utf8_text_files_name_file_line_and_column(tmp_path):
    root = str(tmp_path)
    (tmp_path / "a.flac").write_bytes(b"")
    tsv = _latin1(tmp_path / "x.tsv", [root, "a.flac\t10", "caf.flac\t10"], 3, 4)
    with pytest.raises(DataError, match=rf"^{tsv}:3: not UTF-8 text \(byte 0xe9 at column 4\)"):
        load_manifest(tsv)
    tsv.write_text(f"{root}\na.flac\t10\nb.flac\t10\n")
    ltr = _latin1(tmp_path / "x.ltr", ["A |", "B A |"], 2, 3)
    with pytest.raises(DataError, match=rf"^{ltr}:2: not UTF-8 text \(byte 0xe9 at column 3\)"):
        load_labels(ltr, load_manifest(tsv))
    dic = _latin1(tmp_path / "dict.ltr.txt", ["| 5", "A 3", "B 2"], 3, 1)
    with pytest.raises(DataError, match=rf"^{dic}:3: not UTF-8 text \(byte 0xe9 at column 1\)"):
        Dictionary.load(dic)
    # the data tools: same message, as their user-facing error
    with pytest.raises(DataToolError, match=rf"^{dic}:3: not UTF-8"):
        validate.load_dictionary(str(dic))
    _latin1(tmp_path / "y.tsv", [root, "a.flac\t10"], 2, 2)
    with pytest.raises(DataToolError, match=rf"y\.tsv:2: not UTF-8 text \(byte 0xe9 at column 2\)"):
        read_manifest(str(tmp_path / "y.tsv"))
    (tmp_path / "z.tsv").write_text(f"{root}\na.flac\t10\nb.flac\t10\n")
    (tmp_path / "z.ltr").write_text("A |\nB |\n")
    _latin1(tmp_path / "z.wrd", ["A", "CAFE"], 2, 4)
    with pytest.raises(DataToolError, match=r"z\.wrd:2: not UTF-8 text \(byte 0xe9 at column 4\)"):
        load_labelled(str(tmp_path / "z"))
    with pytest.raises(DataToolError, match=rf"{ltr}:2: not UTF-8"):
        generate_dictionary.count_symbols(str(ltr))
    trans = _latin1(tmp_path / "1-2.trans.txt", ["1-2-0000 A", "1-2-0001 CAFE"], 2, 13)
    with pytest.raises(DataToolError, match=r"1-2\.trans\.txt:2: not UTF-8 text \(byte 0xe9 at column 13\)"):
        libri_labels.read_transcripts(str(trans))


def test_validate_names_a_non_utf8_label_file(tmp_path, capsys):
    write_corpus(str(tmp_path), [4000, 4000], split="dev", transcripts=["A |", "B |"])
    (tmp_path / "dict.ltr.txt").write_text("| 9\nA 8\nB 7\n")
    _latin1(tmp_path / "dev.ltr", ["A |", "B A |"], 2, 1)
    assert run_main(validate.main, ["--data", str(tmp_path), "--subset", "dev", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR: {tmp_path / 'dev.ltr'}:2: not UTF-8") and "Traceback" not in err


# ---------------------------------------------------------------- the audio root line


def test_missing_audio_root_is_named_at_load_time(tmp_path):
    tsv = tmp_path / "x.tsv"
    tsv.write_text(f"{tmp_path / 'moved'}\na.flac\t10\n")
    with pytest.raises(DataError, match=rf"^{tsv}:1: the audio root directory {tmp_path / 'moved'} does not exist"):
        load_manifest(tsv)
    tsv.write_text(f"{tmp_path}\na.flac\t10\n")
    assert load_manifest(tsv).root == str(tmp_path)
    tsv.write_text(f"{tmp_path / 'moved'}\n{tmp_path / 'a.flac'}\t10\n")  # absolute entries do not need it
    assert len(load_manifest(tsv)) == 1


# ---------------------------------------------------------------- validate agrees with the trainer


def _trainer_verdict(data, conv_layers=STANDARD):
    """What training does with ``<data>/train.*``: 'error' (open_split, the batch plan or reading an item raises),
    'skip' (something skipped with a warning) or 'ok'."""
    try:
        ds = open_split(data, "train", labels="ltr")
        loader = build_loader(ds, _cfg(pad=True, max_tokens=10 ** 7, conv_layers=conv_layers))
        for i in range(len(ds)):
            ds[i]
    except (DataError, FileNotFoundError):
        return "error"
    return "skip" if loader.summary.skipped_no_frames else "ok"


def _damage(data, kind):
    if kind == "empty transcript":
        (data / "train.ltr").write_text("A |\n   \nB |\n")
    elif kind == "blank dictionary line":
        (data / "dict.ltr.txt").write_text("| 9\n\nA 8\nB 7\n")
    elif kind == "dictionary trailing spaces":
        (data / "dict.ltr.txt").write_text("| 9  \nA 8 \nB 7\t\n")
    elif kind == "truncated flac":
        path = data / "utt00001.flac"
        rng = np.random.default_rng(1)
        sf.write(str(path), (0.1 * rng.standard_normal(6000)).astype(np.float32), 16000, format="FLAC")
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
        assert sf.info(str(path)).frames == 6000  # the header, hence a manifest, still says 6000
    elif kind == "zero frames":
        sf.write(str(data / "utt00001.flac"), np.zeros(300, np.int16), 16000, subtype="PCM_16")
        (data / "train.tsv").write_text((data / "train.tsv").read_text().replace("\t6000", "\t300"))


@pytest.mark.parametrize("kind, trainer, result", [
    ("empty transcript", "error", "RESULT: FAILED"),
    ("blank dictionary line", "error", "ERROR"),
    ("dictionary trailing spaces", "ok", "RESULT: OK"),
    ("truncated flac", "error", "RESULT: FAILED"),
    ("zero frames", "skip", "RESULT: OK, with 1 warning(s)"),
])
def test_validate_agrees_with_the_trainer(tmp_path, capsys, kind, trainer, result):
    write_corpus(str(tmp_path), [8000, 6000, 7000], split="train", transcripts=["A |", "B |", "A B |"])
    (tmp_path / "dict.ltr.txt").write_text("| 9\nA 8\nB 7\n")
    _damage(tmp_path, kind)
    assert _trainer_verdict(tmp_path) == trainer
    rc = run_main(validate.main, ["--data", str(tmp_path), "--subset", "train", "--quiet",
                                  "--conv-feature-layers", STANDARD_SPEC])
    captured = capsys.readouterr()
    assert rc == (1 if trainer == "error" else 0), captured.out + captured.err
    report = captured.out + captured.err
    assert result in report
    if kind == "empty transcript":
        assert f"empty transcript(s) (the trainer refuses them), first at {tmp_path / 'train.ltr'}:2" in report
    elif kind == "blank dictionary line":
        assert f"{tmp_path / 'dict.ltr.txt'}:2" in report
    elif kind == "truncated flac":
        assert "truncated 1" in report and "utt00001.flac" in report and "cannot be decoded" in report
    elif kind == "zero frames":
        assert "1 too short for the model (400 samples)" in report and f"{tmp_path / 'train.tsv'}:3" in report


def test_validate_without_labels_needs_the_two_frames_of_pretraining(tmp_path):
    """train.py pretraining skips audio giving fewer than 2 frames (720 samples for the standard extractor):
    utils.validate --labels none counts the same files (a 600-sample file gives 1 frame)."""
    write_corpus(str(tmp_path), [8000, 600, 7000], split="train", transcripts=["A |", "B |", "A B |"])
    unlabelled = validate.validate(str(tmp_path), "train", labels=None, conv_feature_layers=STANDARD_SPEC)
    assert unlabelled.min_input_samples == 720 and unlabelled.skipped_no_frames == 1
    assert "two frames, as pretraining needs" in unlabelled.warnings[0]


def test_validate_ignores_an_empty_transcript_the_trainer_never_reads(tmp_path):
    write_corpus(str(tmp_path), [8000, 600, 7000], split="train", transcripts=["A |", "", "A B |"])
    (tmp_path / "dict.ltr.txt").write_text("| 9\nA 8\nB 7\n")
    open_split(tmp_path, "train", labels="ltr", min_sample_size=1000)  # the trainer: no error
    with pytest.raises(DataError, match="empty transcript"):
        open_split(tmp_path, "train", labels="ltr")
    assert not validate.validate(str(tmp_path), "train", min_sample_size=1000).failures
    assert validate.validate(str(tmp_path), "train").failures


def test_validate_warns_about_transcripts_ctc_cannot_align(tmp_path, capsys):
    write_corpus(str(tmp_path), [16000, 3200], split="train", transcripts=["A B |", "A A A A A |"])
    (tmp_path / "dict.ltr.txt").write_text("| 9\nA 8\nB 7\n")
    rep = validate.validate(str(tmp_path), "train", conv_feature_layers=STANDARD_SPEC)
    assert rep.labels_too_long == 1 and not rep.failures and len(rep.warnings) == 1
    assert rep.examples["labels_too_long"] == [
        f"{tmp_path / 'train.ltr'}:2: CTC needs 10 frames (6 labels + 4 repeated), the audio gives 9"]
    assert validate.main(["--data", str(tmp_path), "--subset", "train", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "RESULT: OK, with 1 warning(s)" in out and "RESULT: OK\n" not in out + "\n"
    assert "1 transcript(s) longer than CTC can align" in out
    # a model whose extractor gives more frames: nothing to warn about
    rep = validate.validate(str(tmp_path), "train", conv_feature_layers="[(8,10,5)]+[(8,3,2)]*2")
    assert rep.labels_too_long == 0 and not rep.warnings


# ---------------------------------------------------------------- generate_filelist


def test_generate_filelist_warns_about_files_that_are_not_16k_mono(tmp_path, capsys):
    src = tmp_path / "audio"
    src.mkdir()
    seconds = 36.0
    files = {"a_ok.flac": (16000, 1), "b_8k.flac": (8000, 1), "c_44k.flac": (44100, 1), "d_stereo.flac": (16000, 2)}
    for name, (rate, channels) in files.items():
        shape = (int(seconds * rate), channels) if channels > 1 else (int(seconds * rate),)
        sf.write(str(src / name), np.zeros(shape, np.int16), rate, subtype="PCM_16")
    out = tmp_path / "x.tsv"
    assert run_main(generate_filelist.main, [str(src), str(out), "--quiet"]) == 0  # listed, as the reference does
    err = capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 5
    warning = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and "3 of 4 files are not 16000 Hz mono" in warning[0]
    for name in ("b_8k.flac (8000 Hz, 1 ch)", "c_44k.flac (44100 Hz, 1 ch)", "d_stereo.flac (16000 Hz, 2 ch)"):
        assert name in warning[0]
    assert "a_ok" not in warning[0] and "convert_to_wav" in warning[0]
    assert f"{4 * seconds / 3600:.2f} h" in err  # each file at its own rate: 0.04 h, not the 0.05 "at 16 kHz"
    listing = generate_filelist.scan(str(src), "flac")
    assert listing.seconds == pytest.approx(4 * seconds)
    for name in ("b_8k.flac", "c_44k.flac", "d_stereo.flac"):
        os.remove(src / name)
    assert generate_filelist.main([str(src), str(out), "--quiet"]) == 0
    assert "WARNING" not in capsys.readouterr().err


# ---------------------------------------------------------------- train.py wiring


def test_train_py_gives_the_loaders_the_extractor_layers(tmp_path):
    """train.py hands both loaders the model's conv layers, so audio too short for one frame is skipped (training;
    validation with --skip_invalid_size_inputs_valid_test) instead of failing inside the model."""
    import train
    from wav2vec2.args import config_from_args

    write_corpus(str(tmp_path), [200, 400, 4000, 5000], split="train")
    write_corpus(str(tmp_path / "v"), [200, 4000], split="valid")
    os.replace(tmp_path / "v" / "valid.tsv", tmp_path / "valid.tsv")
    args = train.parse_args(["pretrain", "--preset", "tiny", "--data", str(tmp_path), "--valid_subset", "valid",
                             "--output_dir", str(tmp_path / "out"), "--cpu", "--num_workers", "0",
                             "--skip_invalid_size_inputs_valid_test"])
    env = types.SimpleNamespace(world_size=1, rank=0)
    train_loader, valid_loader = train.build_loaders(args, config_from_args(args), None, env)
    # pretraining needs 2 frames (720 samples): its negatives come from an utterance's other masked frames, so the
    # 400-sample file (one frame) goes too
    assert train_loader.summary.min_input_samples == 720
    assert train_loader.summary.skipped_no_frames == 2 and valid_loader.summary.skipped_no_frames == 1
