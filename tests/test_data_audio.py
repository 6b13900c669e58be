"""Audio reading: exact mono float32 read, and every bad file gives an error naming it."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from common.data.audio import AudioOrigin, normalize_waveform, read_audio
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


def test_truncated_wav_caught_by_length_check(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, _pcm(32000), 16000, subtype="PCM_16")
    data = p.read_bytes()
    p.write_bytes(data[: 44 + 2 * 10000])  # header + 10000 samples
    with pytest.raises(DataError, match=r"a\.wav.*10000 samples.*32000"):
        read_audio(p, expected_num_samples=32000)


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
