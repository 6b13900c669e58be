"""Reading one audio file: 16 kHz, mono, float32 in [-1, 1], with errors that name the file.

The reference reads with ``soundfile`` as float32, averages channels of multi-channel files and refuses a sample
rate other than ``--sample_rate`` (no resampling). We read the same way, with two conscious differences:

* a multi-channel file is an error (the reference silently averages the channels; a stereo file in a 16 kHz speech
  corpus is almost always a preparation mistake);
* when the expected number of samples is known (the manifest's second column) a file of a different length is an
  error: a truncated WAV decodes "successfully" to fewer samples, and a stale manifest breaks the token budget;
* a WAV shorter than its own header says is an error even without a manifest size (:func:`check_wav_complete`):
  libsndfile clamps the frame count of a truncated WAV to the bytes present, so a manifest written *after* the
  truncation agrees with the short file. (A truncated FLAC is not silent: libsndfile 1.2 fails to decode it.)
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from common.data.errors import DataError, PathLike, where

DEFAULT_SAMPLE_RATE = 16000
NORMALIZE_EPS = 1e-5

# soundfile's ``format`` names of RIFF/WAVE files (RIFF and RIFX report "WAV"); RF64 and W64 are other containers.
WAV_FORMATS = ("WAV", "WAVEX")
# Format tags whose frame count is simply data bytes / block align (PCM, IEEE float, A-law, mu-law). Compressed
# tags (ADPCM, GSM, ...) pack many frames per block: their length is not checked.
_LINEAR_WAVE_FORMATS = frozenset({0x0001, 0x0003, 0x0006, 0x0007})
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# Data sizes left by writers that could not seek back to patch the header (pipes, crashed recorders): "unknown".
_UNKNOWN_DATA_SIZES = (0, 0xFFFFFFFF)
_MAX_WAV_CHUNKS = 32  # chunks looked at before ``data``; a longer list is left to libsndfile


@dataclass(frozen=True)
class AudioOrigin:
    """Where an audio file was referenced from, for error messages (e.g. the manifest and its 1-based line)."""

    manifest: Optional[PathLike] = None
    line: Optional[int] = None

    def describe(self) -> str:
        if self.manifest is None:
            return ""
        return f" (listed at {where(self.manifest, self.line)})"


def wav_declared_frames(path: PathLike) -> Optional[int]:
    """The number of frames a RIFF/WAVE file's header declares: the ``data`` chunk size over the block align.

    Walks the chunk list (``RIFF``/``RIFX`` header, ``fmt `` for the block align and format tag, then ``data``;
    other chunks such as ``LIST``, ``fact`` or ``PEAK`` are skipped by seeking, odd sizes padded to even), reading
    12 bytes, 8 per chunk header and at most 40 of ``fmt ``. ``WAVE_FORMAT_EXTENSIBLE`` is resolved to its
    sub-format.

    Returns None when the header does not tell: not a RIFF/WAVE file (FLAC, RF64, W64, ...), a compressed format,
    a ``data`` size of 0 or 0xFFFFFFFF (left by streaming writers), no ``fmt `` before ``data``, or a chunk list
    this walk does not understand (left to libsndfile).
    """
    with open(os.fspath(path), "rb", buffering=0) as f:  # unbuffered: only the bytes asked for are read
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        block_align = None  # None: no fmt chunk yet; 0: frames not derivable from bytes
        pos = 12
        for _ in range(_MAX_WAV_CHUNKS):
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                body = f.read(min(size, 40))
                if len(body) < 14:
                    return None
                tag, _channels, _rate, _byte_rate, align = struct.unpack(endian + "HHIIH", body[:14])
                if tag == _WAVE_FORMAT_EXTENSIBLE:
                    # cbSize, valid bits, channel mask, then the sub-format GUID whose first 2 bytes are the tag
                    tag = struct.unpack(endian + "H", body[24:26])[0] if len(body) >= 26 else None
                block_align = align if tag in _LINEAR_WAVE_FORMATS else 0
            elif chunk_id == b"data":
                if not block_align or size in _UNKNOWN_DATA_SIZES:
                    return None
                return size // block_align
            pos += 8 + size + (size & 1)
    return None


def check_wav_complete(path: PathLike, frames: int, origin: Optional[AudioOrigin] = None) -> None:
    """Raise :class:`DataError` when ``path`` is a WAV whose header declares more frames than the ``frames`` found.

    ``frames`` is what was decoded, or ``soundfile.info(path).frames`` (libsndfile clamps it to the bytes present,
    so it cannot tell a truncated WAV from a short one by itself). No-op for files :func:`wav_declared_frames`
    cannot judge.
    """
    declared = wav_declared_frames(path)
    if declared is not None and frames < declared:
        ctx = (origin or AudioOrigin()).describe()
        raise DataError(
            f"truncated WAV {os.fspath(path)}{ctx}: header declares {declared} frames, file holds {frames} "
            "(the file was cut short, e.g. by an interrupted copy: re-create it, then regenerate the manifest)"
        )


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
        DataError: unreadable/corrupt/truncated file (a WAV shorter than its header declares, too), wrong sample
            rate, more than one channel, length mismatch.
    """
    fspath = os.fspath(path)
    listed_in_itself = origin is not None and origin.manifest is not None and \
        os.path.abspath(os.fspath(origin.manifest)) == os.path.abspath(fspath)  # a one-file "manifest"
    ctx = "" if listed_in_itself else (origin or AudioOrigin()).describe()
    if not os.path.isfile(fspath):
        raise FileNotFoundError(f"audio file not found: {fspath}{ctx}")
    try:
        with sf.SoundFile(fspath) as f:
            if f.samplerate != sample_rate:
                raise DataError(
                    f"audio file {fspath}{ctx} has sample rate {f.samplerate} Hz, expected {sample_rate} Hz "
                    "(no resampling is done at load time: convert the folder first, python -m utils.convert_to_wav "
                    f"--input_dir DIR --dest_dir NEW_DIR --target_sr {sample_rate}; WAV and FLAC, any layout)"
                )
            if f.channels != 1:
                raise DataError(
                    f"audio file {fspath}{ctx} has {f.channels} channels, expected mono "
                    "(channels are not averaged at load time: python -m utils.convert_to_wav --input_dir DIR "
                    f"--dest_dir NEW_DIR --target_sr {sample_rate} averages them)"
                )
            wav = f.read(dtype="float32", always_2d=False)
            file_format = f.format
    except sf.SoundFileError as e:  # LibsndfileError and friends: corrupt, truncated, unknown format
        raise DataError(f"cannot decode audio file {fspath}{ctx}: {e}") from e
    wav = np.ascontiguousarray(wav.reshape(-1))
    if file_format in WAV_FORMATS:
        check_wav_complete(fspath, wav.shape[0], origin)
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
