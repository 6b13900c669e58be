"""Audio reading: exact mono float32 read, and every bad file gives an error naming it."""
import math
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from common.data.audio import AudioOrigin, check_wav_complete, normalize_waveform, read_audio, wav_declared_frames
from common.data.errors import DataError


def _pcm(n, seed=0):
    """int16-representable samples (exact after a 16-bit round trip)."""
    return np.random.default_rng(seed).integers(-8000, 8000, size=n).astype(np.float32) / 32768


@pytest.mark.parametrize("ext", ["flac", "wav"])
def test_reads_mono_float32_exactly(tmp_path, ext):
    x = _pcm(1234)
    p = tmp_path / f"a.{ext}"
    sf.write(p, x, 16000, subtype="PCM_16")
    y = read_audio(p, expected_num_samples=1234)
    assert y.dtype == np.float32 and y.shape == (1234,)
    np.testing.assert_array_equal(y, x)


def test_missing_file_names_path_and_manifest_line(tmp_path):
    p = tmp_path / "nope.flac"
    with pytest.raises(FileNotFoundError, match=r"nope\.flac.*train\.tsv:7"):
        read_audio(p, origin=AudioOrigin(manifest="/d/train.tsv", line=7))


def test_truncated_flac_names_file(tmp_path):
    p = tmp_path / "a.flac"
    sf.write(p, _pcm(32000), 16000, subtype="PCM_16")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"a\.flac"):
        read_audio(p, expected_num_samples=32000)


def test_truncated_wav_with_manifest_size_names_both_counts(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, _pcm(32000), 16000, subtype="PCM_16")
    data = p.read_bytes()
    p.write_bytes(data[: 44 + 2 * 10000])  # header + 10000 samples
    with pytest.raises(DataError, match=r"truncated WAV .*a\.wav: header declares 32000 frames, file holds 10000"):
        read_audio(p, expected_num_samples=32000)


def test_complete_wav_shorter_than_manifest_is_a_length_mismatch(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, _pcm(10000), 16000, subtype="PCM_16")  # a complete file, a stale manifest
    with pytest.raises(DataError, match=r"a\.wav.*10000 samples but the manifest says 32000"):
        read_audio(p, expected_num_samples=32000)


# --- WAV header walk: hand-built RIFF files ---------------------------------------------------------------------

def _chunk(cid: bytes, payload: bytes) -> bytes:
    """A RIFF chunk: id, little-endian size, payload, and a pad byte when the size is odd."""
    return cid + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def _wav(samples, extra_chunks=(), data_size=None, extensible=False, sr=16000) -> bytes:
    """A 16-bit mono RIFF/WAVE file; ``extra_chunks`` go between ``fmt `` and ``data``; ``data_size`` overrides
    the data chunk's declared size (the samples are written regardless)."""
    pcm = np.asarray(samples, dtype="<i2").tobytes()
    if extensible:  # WAVE_FORMAT_EXTENSIBLE: cbSize 22, 16 valid bits, mono mask, KSDATAFORMAT_SUBTYPE_PCM
        guid = struct.pack("<H", 1) + bytes.fromhex("000000001000800000aa00389b71")
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, sr, 2 * sr, 2, 16, 22, 16, 0x4) + guid
    else:
        fmt = struct.pack("<HHIIHH", 1, 1, sr, 2 * sr, 2, 16)
    body = b"WAVE" + _chunk(b"fmt ", fmt) + b"".join(_chunk(c, d) for c, d in extra_chunks)
    body += b"data" + struct.pack("<I", len(pcm) if data_size is None else data_size) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _int16(n, seed=0):
    return np.random.default_rng(seed).integers(-8000, 8000, size=n).astype(np.int16)


# a LIST/INFO chunk of odd size (17 bytes, padded) and an odd-sized unknown chunk before ``data``
ODD_CHUNKS = [(b"LIST", b"INFOISFT" + struct.pack("<I", 5) + b"test\0"), (b"junk", b"abc")]


def test_valid_hand_built_wav_declares_its_frames_and_reads(tmp_path):
    x = _int16(18842)
    p = tmp_path / "ok.wav"
    p.write_bytes(_wav(x))
    assert wav_declared_frames(p) == 18842
    np.testing.assert_array_equal(read_audio(p, expected_num_samples=18842), x.astype(np.float32) / 32768)


def test_wav_truncated_in_data_chunk_is_an_error_naming_file_and_counts(tmp_path):
    # the audited case: data chunk declares 37684 bytes, 18820 are present; soundfile reports 9410 frames
    p = tmp_path / "cut.wav"
    p.write_bytes(_wav(_int16(18842))[: 44 + 18820])
    assert sf.info(str(p)).frames == 9410  # libsndfile clamps: a manifest made now would say 9410
    assert wav_declared_frames(p) == 18842
    msg = r"truncated WAV .*cut\.wav \(listed at /d/train\.tsv:3\): header declares 18842 frames, file holds 9410"
    with pytest.raises(DataError, match=msg):
        read_audio(p, expected_num_samples=9410, origin=AudioOrigin(manifest="/d/train.tsv", line=3))
    with pytest.raises(DataError, match=r"cut\.wav: header declares 18842 frames, file holds 9410"):
        check_wav_complete(p, 9410)
    check_wav_complete(p, 18842)  # the full count passes


def test_wav_with_list_and_odd_sized_chunks_before_data(tmp_path):
    x = _int16(1001)
    p = tmp_path / "meta.wav"
    data = _wav(x, extra_chunks=ODD_CHUNKS)
    p.write_bytes(data)
    assert wav_declared_frames(p) == 1001 == sf.info(str(p)).frames
    np.testing.assert_array_equal(read_audio(p), x.astype(np.float32) / 32768)
    p.write_bytes(data[:-2 * 400])  # drop the last 400 frames
    with pytest.raises(DataError, match=r"meta\.wav: header declares 1001 frames, file holds 601"):
        read_audio(p)


def test_wave_format_extensible(tmp_path):
    x = _int16(1001)
    p = tmp_path / "ext.wav"
    data = _wav(x, extensible=True)
    p.write_bytes(data)
    assert sf.info(str(p)).format == "WAVEX"
    assert wav_declared_frames(p) == 1001
    np.testing.assert_array_equal(read_audio(p), x.astype(np.float32) / 32768)
    p.write_bytes(data[:-2 * 1000])
    with pytest.raises(DataError, match=r"ext\.wav: header declares 1001 frames, file holds 1"):
        read_audio(p)


@pytest.mark.parametrize("data_size", [0xFFFFFFFF, 0])
def test_streaming_wav_unknown_data_size_is_not_an_error(tmp_path, data_size):
    x = _int16(1001)
    p = tmp_path / "stream.wav"
    p.write_bytes(_wav(x, data_size=data_size))
    assert wav_declared_frames(p) is None
    y = read_audio(p)  # no truncation error; libsndfile reads to the end (0xFFFFFFFF) or nothing (0)
    assert y.shape[0] == (1001 if data_size else 0)


@pytest.mark.parametrize("fmt, subtype, kwargs", [
    ("WAV", "PCM_16", {}), ("WAV", "PCM_24", {}), ("WAV", "FLOAT", {}),  # FLOAT adds fact + PEAK chunks
    ("WAV", "ULAW", {}), ("WAVEX", "PCM_16", {}), ("WAV", "PCM_16", {"endian": "BIG"}),  # RIFX
])
def test_declared_frames_match_soundfile_for_its_wavs(tmp_path, fmt, subtype, kwargs):
    p = tmp_path / "a.wav"
    sf.write(str(p), _pcm(1001), 16000, format=fmt, subtype=subtype, **kwargs)
    assert wav_declared_frames(p) == 1001 == sf.info(str(p)).frames
    p.write_bytes(p.read_bytes()[:-64])
    with pytest.raises(DataError, match=r"a\.wav: header declares 1001 frames, file holds"):
        read_audio(p)


def test_files_the_header_walk_cannot_judge(tmp_path):
    flac = tmp_path / "a.flac"
    sf.write(str(flac), _pcm(100), 16000, subtype="PCM_16")
    adpcm = tmp_path / "adpcm.wav"  # compressed: many frames per block, bytes do not give the count
    sf.write(str(adpcm), _pcm(1001), 16000, subtype="IMA_ADPCM")
    rf64 = tmp_path / "a.rf64"
    sf.write(str(rf64), _pcm(100), 16000, format="RF64", subtype="PCM_16")
    short = tmp_path / "short.wav"
    short.write_bytes(b"RIFF\x04\x00")
    no_fmt = tmp_path / "nofmt.wav"
    no_fmt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEdata\x04\x00\x00\x00\x00\x00\x00\x00")
    for p in (flac, adpcm, rf64, short, no_fmt):
        assert wav_declared_frames(p) is None, p.name
    read_audio(adpcm)


def test_header_walk_reads_only_header_bytes(tmp_path, monkeypatch):
    # a 200 KB LIST chunk before data is skipped by seeking, not read
    p = tmp_path / "big_list.wav"
    p.write_bytes(_wav(_int16(10), extra_chunks=[(b"LIST", b"INFO" + b"x" * 200_000)]))
    read_sizes = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            read_sizes.append(n)
            return self.f.read(n)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda *a, **k: Spy(real_open(*a, **k)))
    assert wav_declared_frames(p) == 10
    assert 0 < sum(read_sizes) <= 200 and all(n >= 0 for n in read_sizes)


@pytest.mark.parametrize("where", ["frame_boundary", "mid_frame", "last_bytes"])
def test_truncated_flac_is_a_decode_error_not_a_short_read(tmp_path, where):
    # libsndfile 1.2 fails on a cut FLAC ("lost sync" / seek failure) instead of returning fewer samples, so the
    # STREAMINFO total needs no separate check; this pins that behaviour.
    p = tmp_path / "cut.flac"
    sf.write(str(p), _pcm(48000), 16000, subtype="PCM_16")
    data = p.read_bytes()
    syncs = [i for i in range(64, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xF8, 0xF9)]
    cut = {"frame_boundary": syncs[len(syncs) // 2], "mid_frame": len(data) // 2, "last_bytes": len(data) - 3}[where]
    p.write_bytes(data[:cut])
    with pytest.raises(DataError, match=r"cannot decode audio file .*cut\.flac"):
        read_audio(p)


def test_corrupt_file_names_file(tmp_path):
    p = tmp_path / "junk.flac"
    p.write_bytes(b"not audio at all" * 50)
    with pytest.raises(DataError, match=r"cannot decode audio file .*junk\.flac"):
        read_audio(p)


def test_wrong_sample_rate_names_file_and_rates(tmp_path):
    p = tmp_path / "a8k.flac"
    sf.write(p, _pcm(800), 8000, subtype="PCM_16")
    with pytest.raises(DataError, match=r"a8k\.flac.*8000 Hz.*expected 16000 Hz"):
        read_audio(p)


def test_stereo_is_an_error_naming_file(tmp_path):
    p = tmp_path / "st.wav"
    sf.write(p, np.stack([_pcm(100), _pcm(100, 1)], axis=1), 16000, subtype="PCM_16")
    with pytest.raises(DataError, match=r"st\.wav.*2 channels"):
        read_audio(p)


def test_normalize_zero_mean_unit_variance():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, biased variance 1.25
    expected = [(v - 2.5) / math.sqrt(1.25 + 1e-5) for v in (1.0, 2.0, 3.0, 4.0)]
    torch.testing.assert_close(normalize_waveform(x), torch.tensor(expected))
