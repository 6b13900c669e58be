"""Manifest and labels parsing, alignment after min_sample_size skipping, and the dataset item."""
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from common.data.dataset import AudioDataset, open_split
from common.data.dictionary import Dictionary
from common.data.errors import DataError
from common.data.manifest import load_labels, load_manifest


def _write(path, text):
    path.write_text(text)
    return path


def test_parse_and_skip_short_entries_logs_counts(tmp_path, caplog):
    tsv = _write(tmp_path / "train.tsv", f"{tmp_path} \na.flac\t100\nb.flac\t5\nsub/c.flac\t50\nd.flac\t9\n")
    with caplog.at_level(logging.INFO, logger="common.data.manifest"):
        m = load_manifest(tsv, min_sample_size=10)
    assert "loaded 2, skipped 2 samples" in caplog.text
    assert m.root == str(tmp_path)
    assert m.files == ["a.flac", "sub/c.flac"]
    assert m.sizes.tolist() == [100, 50] and m.sizes.dtype == np.int64
    assert m.line_numbers.tolist() == [2, 4]
    assert m.skipped_indices.tolist() == [1, 3]
    assert m.num_entries == 4
    assert m.audio_path(1) == f"{tmp_path}/sub/c.flac"
    assert len(load_manifest(tsv)) == 4  # no min_sample_size: everything kept


@pytest.mark.parametrize("bad", ["a.flac 100", "a.flac\t100\textra", "a.flac\tten", "a.flac\t-3", ""])
def test_malformed_line_names_file_and_line(tmp_path, bad):
    tsv = _write(tmp_path / "x.tsv", f"{tmp_path}\nok.flac\t10\n{bad}\nok2.flac\t10\n")
    with pytest.raises(DataError, match=r"x\.tsv:3"):
        load_manifest(tsv)


def test_missing_or_empty_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.tsv"):
        load_manifest(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match=r"empty\.tsv"):
        load_manifest(_write(tmp_path / "empty.tsv", ""))


def test_labels_aligned_after_skipping(tmp_path):
    tsv = _write(tmp_path / "train.tsv", f"{tmp_path}\na.flac\t100\nb.flac\t5\nc.flac\t50\n")
    ltr = _write(tmp_path / "train.ltr", "A |\n\nC |\n")  # the skipped entry's empty line is harmless
    lab = load_labels(ltr, load_manifest(tsv, min_sample_size=10))
    assert lab.lines == ["A |", "C |"]
    assert lab.line_numbers.tolist() == [1, 3]


def test_label_count_mismatch_names_both_files_and_counts(tmp_path):
    tsv = _write(tmp_path / "train.tsv", f"{tmp_path}\na.flac\t100\nb.flac\t5\nc.flac\t50\n")
    ltr = _write(tmp_path / "train.ltr", "A |\nB |\n")
    with pytest.raises(DataError, match=r"train\.ltr has 2 lines but manifest .*train\.tsv has 3 entries"):
        load_labels(ltr, load_manifest(tsv))


def test_empty_transcript_names_file_and_line(tmp_path):
    tsv = _write(tmp_path / "train.tsv", f"{tmp_path}\na.flac\t100\nb.flac\t50\n")
    ltr = _write(tmp_path / "train.ltr", "A |\n   \n")
    with pytest.raises(DataError, match=r"empty transcript at .*train\.ltr:2"):
        load_labels(ltr, load_manifest(tsv))


def _corpus(tmp_path, transcripts, lengths=(1600, 800)):
    rows = [str(tmp_path)]
    for i, n in enumerate(lengths):
        x = (np.arange(n) % 64 - 32).astype(np.float32) / 64
        sf.write(tmp_path / f"u{i}.flac", x, 16000, subtype="PCM_16")
        rows.append(f"u{i}.flac\t{n}")
    (tmp_path / "dev.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.ltr").write_text("".join(t + "\n" for t in transcripts))
    (tmp_path / "dict.ltr.txt").write_text("| 5\nA 4\nB 3\n")


def test_dataset_item_and_unknown_symbol_at_open(tmp_path):
    _corpus(tmp_path, ["A B |", "B |"])
    ds = open_split(tmp_path, "dev", labels="ltr")
    item = ds[1]
    assert item["id"] == 1
    assert item["source"].dtype == torch.float32 and item["source"].shape == (800,)
    assert item["source"][:3].tolist() == [-32 / 64, -31 / 64, -30 / 64]
    assert item["label"].tolist() == [6, 4]  # | = 4, A = 5, B = 6

    _corpus(tmp_path, ["A B |", "B Q |"])
    with pytest.raises(DataError, match=r"'Q'.*dev\.ltr:2"):
        open_split(tmp_path, "dev", labels="ltr")
    ds = open_split(tmp_path, "dev", labels="ltr", on_unknown="unk")
    assert ds[1]["label"].tolist() == [6, 3, 4]


def test_dataset_normalize_and_missing_audio(tmp_path):
    _corpus(tmp_path, ["A |", "B |"])
    ds = open_split(tmp_path, "dev", normalize=True)
    src = ds[0]["source"]
    assert abs(float(src.mean())) < 1e-5 and abs(float(src.var(unbiased=False)) - 1) < 1e-3
    (tmp_path / "u1.flac").unlink()
    with pytest.raises(FileNotFoundError, match=r"u1\.flac.*dev\.tsv:3"):
        ds[1]


def test_dataset_requires_dictionary_with_labels(tmp_path):
    _corpus(tmp_path, ["A |", "B |"])
    m = load_manifest(tmp_path / "dev.tsv")
    with pytest.raises(ValueError, match="dictionary"):
        AudioDataset(m, labels=load_labels(tmp_path / "dev.ltr", m))
    assert len(AudioDataset(m, labels=load_labels(tmp_path / "dev.ltr", m),
                            dictionary=Dictionary.from_symbols("|AB"))) == 2


def test_missing_labels_file_and_corrupt_audio_through_dataset(tmp_path):
    _corpus(tmp_path, ["A |", "B |"])
    (tmp_path / "dev.ltr").unlink()
    with pytest.raises(FileNotFoundError, match=r"dev\.ltr.*dev\.tsv"):
        open_split(tmp_path, "dev", labels="ltr")
    ds = open_split(tmp_path, "dev")
    (tmp_path / "u0.flac").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"u0\.flac.*dev\.tsv:2"):
        ds[0]
