"""Reading one audio file: 16 kHz, mono, float32 in [-1, 1], with errors that name the file.

The reference reads with ``soundfile`` as float32, averages channels of multi-channel files and refuses a sample
rate other than ``--sample_rate`` (no resampling). We read the same way, with two conscious differences:

* a multi-channel file is an error (the reference silently averages the channels; a stereo file in a 16 kHz speech
  corpus is almost always a preparation mistake);
* when the expected number of samples is known (the manifest's second column) a file of a different length is an
  error: a truncated WAV decodes "successfully" to fewer samples, and a stale manifest breaks the token budget.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from common.data.errors import DataError, PathLike, where

DEFAULT_SAMPLE_RATE = 16000
NORMALIZE_EPS = 1e-5


@dataclass(frozen=True)
class AudioOrigin:
    """Where an audio file was referenced from, for error messages (e.g. the manifest and its 1-based line)."""

    manifest: Optional[PathLike] = None
    line: Optional[int] = None

    def describe(self) -> str:
        if self.manifest is None:
            return ""
        return f" (listed at {where(self.manifest, self.line)})"


def read_audio(
    path: PathLike,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    expected_num_samples: Optional[int] = None,
    origin: Optional[AudioOrigin] = None,
) -> np.ndarray:
    """Read a mono audio file as a 1-D float32 array.

    Args:
        path: WAV/FLAC/OGG file readable by libsndfile.
        sample_rate: required sample rate (``--sample_rate``, 16000); no resampling is done.
        expected_num_samples: when given (the manifest's size column), the decoded length must equal it.
        origin: where the path came from, appended to error messages.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: unreadable/corrupt/truncated file, wrong sample rate, more than one channel, length mismatch.
    """
    ctx = (origin or AudioOrigin()).describe()
    fspath = os.fspath(path)
    if not os.path.isfile(fspath):
        raise FileNotFoundError(f"audio file not found: {fspath}{ctx}")
    try:
        with sf.SoundFile(fspath) as f:
            if f.samplerate != sample_rate:
                raise DataError(
                    f"audio file {fspath}{ctx} has sample rate {f.samplerate} Hz, expected {sample_rate} Hz "
                    "(resample the corpus; no resampling is done at load time)"
                )
            if f.channels != 1:
                raise DataError(
                    f"audio file {fspath}{ctx} has {f.channels} channels, expected mono "
                    "(convert it to one channel; channels are not averaged)"
                )
            wav = f.read(dtype="float32", always_2d=False)
    except sf.SoundFileError as e:  # LibsndfileError and friends: corrupt, truncated, unknown format
        raise DataError(f"cannot decode audio file {fspath}{ctx}: {e}") from e
    wav = np.ascontiguousarray(wav.reshape(-1))
    if expected_num_samples is not None and wav.shape[0] != expected_num_samples:
        raise DataError(
            f"audio file {fspath}{ctx} has {wav.shape[0]} samples but the manifest says {expected_num_samples} "
            "(truncated file or stale manifest: regenerate the manifest)"
        )
    return wav


def normalize_waveform(wav: torch.Tensor, eps: float = NORMALIZE_EPS) -> torch.Tensor:
    """Per-utterance zero-mean, unit-variance normalisation over all samples (reference ``--normalize``).

    Same as a layer norm over the whole 1-D waveform without affine parameters: ``(x - mean) / sqrt(var + eps)``
    with the biased variance, computed without gradient.
    """
    with torch.no_grad():
        return F.layer_norm(wav, wav.shape, eps=eps)
