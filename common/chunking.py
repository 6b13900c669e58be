"""Chunked CTC inference for long audio: where the windows go and which frames each one contributes (PITFALLS #7).

A whole-utterance forward needs attention memory quadratic in the utterance length, so a 10-minute file can run out
of memory. With chunking, an utterance longer than the window is cut into overlapping windows, the model runs on
each window, and the per-frame logits of the windows are stitched back into one sequence with exactly the frames of
the whole-utterance forward. This module plans the windows (pure integer arithmetic); ``common.evaluation`` runs them.

Frame geometry. The convolutional feature extractor maps samples to frames: frame ``t`` sees samples
``[t * P, t * P + R)`` (stride ``P`` = 320 samples and receptive field ``R`` = 400 samples for every preset), and an
input of ``L`` samples gives ``max(0, (L - R) // P + 1)`` frames (the model's ``output_lengths``). A window that
starts at sample ``s * P`` therefore produces frames ``s, s + 1, ...`` of the whole utterance, exactly aligned.
Hourglass encoders pool groups of ``factor`` frames: window starts are also multiples of ``factor`` frames, so that
a window pools the same groups of frames as the whole utterance.

Stitching rule. ``W`` = window length in samples, ``F = frames(W)`` frames per full window, ``V`` = requested overlap
in frames. Windows start every ``h`` frames, ``h = F - V`` rounded down to a multiple of the alignment (1, or the
Hourglass factor); consecutive full windows then share ``V' = F - h >= V`` frames. Window ``k`` covers samples
``[k h P, min(k h P + W, L))``; the first window that reaches the end of the utterance is the last one (it may be
shorter than ``W``). The boundary between windows ``k`` and ``k + 1`` lies ``floor(V' / 2)`` frames into window
``k + 1``: each window drops the first ``floor(V' / 2)`` frames it computes (except the first window) and the last
``ceil(V' / 2)`` frames (except the last window), so every kept frame has at least ``floor(V' / 2)`` frames of
context on either side within its window, or the true utterance edge. Every frame of the whole forward comes from
exactly one window; a final window that would contribute no frame (possible only with overlap 0) is not run.
Utterances of at most ``W`` samples are not chunked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

__all__ = [
    "DEFAULT_OVERLAP_FRACTION",
    "FrameGeometry",
    "Window",
    "ChunkingConfig",
    "check_chunk_flags",
]

#: ``--chunk_overlap_seconds`` when not given: this fraction of ``--chunk_seconds``
DEFAULT_OVERLAP_FRACTION = 0.25


@dataclass(frozen=True)
class FrameGeometry:
    """How samples map to frames: the ``(kernel, stride)`` of each extractor convolution, and the multiple of frames
    at which windows must start (the Hourglass pooling factor; 1 without Hourglass)."""

    conv_layers: Tuple[Tuple[int, int], ...]
    frame_multiple: int = 1

    def __post_init__(self) -> None:
        if not self.conv_layers or any(k < 1 or s < 1 for k, s in self.conv_layers):
            raise ValueError(f"conv_layers must be non-empty (kernel, stride) pairs >= 1, got {self.conv_layers}")
        if self.frame_multiple < 1:
            raise ValueError(f"frame_multiple must be >= 1, got {self.frame_multiple}")

    @property
    def stride(self) -> int:
        """Samples between consecutive frames (320)."""
        return math.prod(s for _, s in self.conv_layers)

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees (400)."""
        field, jump = 1, 1
        for kernel, stride in self.conv_layers:
            field += (kernel - 1) * jump
            jump *= stride
        return field

    def num_frames(self, num_samples: int) -> int:
        """Frames of an input of ``num_samples`` samples. Equals the layer-by-layer ``floor((L - k) / s) + 1`` of the
        model's ``output_lengths`` (nested floor divisions compose), clipped at 0."""
        return max(0, (int(num_samples) - self.receptive_field) // self.stride + 1)

    @classmethod
    def from_model(cls, model: Any) -> "FrameGeometry":
        """The geometry of a wav2vec 2.0 model (``Wav2Vec2ForCTC`` or ``Wav2Vec2Model``): the extractor's
        convolutions and the encoder's Hourglass factor."""
        inner = getattr(model, "w2v_model", model)
        extractor = getattr(inner, "feature_extractor", None)
        if extractor is None or not hasattr(extractor, "conv_layers"):
            raise ValueError(f"{type(model).__name__} has no convolutional feature extractor: cannot chunk its input")
        layers = tuple((int(b.conv.kernel_size[0]), int(b.conv.stride[0])) for b in extractor.conv_layers)
        hourglass = getattr(getattr(inner, "encoder", None), "hourglass", None)
        return cls(layers, int(hourglass.factor) if hourglass is not None else 1)


@dataclass(frozen=True)
class Window:
    """One forward of a chunked utterance: samples ``[start, stop)``; its output frame 0 is frame ``first_frame`` of
    the whole utterance; it contributes the whole utterance's frames ``[keep_start, keep_stop)``."""

    start: int
    stop: int
    first_frame: int
    keep_start: int
    keep_stop: int

    @property
    def num_samples(self) -> int:
        return self.stop - self.start

    @property
    def kept(self) -> slice:
        """The contributed frames, indexed in the window's own output."""
        return slice(self.keep_start - self.first_frame, self.keep_stop - self.first_frame)


def check_chunk_flags(chunk_seconds: Optional[float], overlap_seconds: Optional[float]) -> None:
    """The model-independent checks of ``--chunk_seconds`` / ``--chunk_overlap_seconds`` (ValueError)."""
    if chunk_seconds is None:
        if overlap_seconds is not None:
            raise ValueError("--chunk_overlap_seconds needs --chunk_seconds (chunked inference is off without it)")
        return
    if not chunk_seconds > 0 or not math.isfinite(chunk_seconds):
        raise ValueError(f"--chunk_seconds must be a positive number of seconds, got {chunk_seconds}")
    if overlap_seconds is not None:
        if not overlap_seconds >= 0 or not math.isfinite(overlap_seconds):
            raise ValueError(f"--chunk_overlap_seconds must be >= 0, got {overlap_seconds}")
        if overlap_seconds >= chunk_seconds:
            raise ValueError(f"--chunk_overlap_seconds ({overlap_seconds}) must be smaller than --chunk_seconds "
                             f"({chunk_seconds}): consecutive windows would not advance")


@dataclass(frozen=True)
class ChunkingConfig:
    """Chunked inference: windows of ``window_samples`` samples overlapping by (at least) ``overlap_frames`` frames,
    run ``batch_size`` windows and/or ``max_duration`` seconds of padded audio per forward (the limits of
    ``common.evaluation.plan_batches``; at least one is needed). Build it with :meth:`from_seconds`."""

    window_samples: int
    overlap_frames: int
    geometry: FrameGeometry
    batch_size: Optional[int] = None
    max_duration: Optional[float] = None
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        g = self.geometry
        if self.batch_size is None and self.max_duration is None:
            raise ValueError("chunked inference needs a batch_size or a max_duration for its forwards")
        if self.overlap_frames < 0:
            raise ValueError(f"overlap_frames must be >= 0, got {self.overlap_frames}")
        if self.window_samples < g.receptive_field:
            raise ValueError(
                f"--chunk_seconds {self.window_samples / self.sample_rate:g} ({self.window_samples} samples) is "
                f"shorter than the model's receptive field ({g.receptive_field} samples, "
                f"{g.receptive_field / self.sample_rate:g} s)")
        if self.hop_frames < 1:
            frames, unit = self.window_frames, g.frame_multiple
            raise ValueError(
                f"a window of {frames} frames ({self.window_samples / self.sample_rate:g} s) overlapping by "
                f"{self.overlap_frames} frames leaves fewer than {unit} new frame(s) per window"
                + (f" (window starts must be multiples of the Hourglass factor, {unit} frames)" if unit > 1 else "")
                + ": use a longer --chunk_seconds or a shorter --chunk_overlap_seconds")

    @classmethod
    def from_seconds(cls, chunk_seconds: float, overlap_seconds: Optional[float], geometry: FrameGeometry,
                     sample_rate: int = 16000, batch_size: Optional[int] = None,
                     max_duration: Optional[float] = None) -> "ChunkingConfig":
        """From the flags: the window is ``round(chunk_seconds * sample_rate)`` samples, the overlap
        ``round(overlap_seconds * sample_rate / stride)`` frames (default: ``DEFAULT_OVERLAP_FRACTION`` of the
        window). ValueError names the flag at fault."""
        check_chunk_flags(chunk_seconds, overlap_seconds)
        if overlap_seconds is None:
            overlap_seconds = DEFAULT_OVERLAP_FRACTION * chunk_seconds
        return cls(window_samples=int(round(chunk_seconds * sample_rate)),
                   overlap_frames=int(round(overlap_seconds * sample_rate / geometry.stride)),
                   geometry=geometry, batch_size=batch_size, max_duration=max_duration, sample_rate=sample_rate)

    # derived sizes ---------------------------------------------------------------------------------------------------
    @property
    def window_frames(self) -> int:
        """Frames of a full window (F)."""
        return self.geometry.num_frames(self.window_samples)

    @property
    def hop_frames(self) -> int:
        """Frames between consecutive window starts (h): ``F - V`` rounded down to the frame multiple."""
        unit = self.geometry.frame_multiple
        return (self.window_frames - self.overlap_frames) // unit * unit

    @property
    def shared_frames(self) -> int:
        """Frames that consecutive full windows share (V' = F - h >= V)."""
        return self.window_frames - self.hop_frames

    @property
    def lead_frames(self) -> int:
        """Frames a window drops at its start (all but the first window): floor(V' / 2)."""
        return self.shared_frames // 2

    # planning --------------------------------------------------------------------------------------------------------
    def is_long(self, num_samples: int) -> bool:
        """Whether an utterance of ``num_samples`` samples is chunked (longer than one window)."""
        return int(num_samples) > self.window_samples

    def plan(self, num_samples: int) -> List[Window]:
        """The windows of one utterance, in order; their kept frames partition ``[0, num_frames(num_samples))``.
        An utterance of at most one window is a single window over all of it (the unchunked forward)."""
        n_samples = int(num_samples)
        n_frames = self.geometry.num_frames(n_samples)
        if not self.is_long(n_samples):
            return [Window(0, n_samples, 0, 0, n_frames)]
        hop, lead, stride = self.hop_frames, self.lead_frames, self.geometry.stride
        count = 2 + (n_samples - self.window_samples - 1) // (hop * stride)  # the first to reach the end is last
        windows = []
        for k in range(count):
            first = k * hop
            keep_start = 0 if k == 0 else min(first + lead, n_frames)
            keep_stop = n_frames if k == count - 1 else min(first + hop + lead, n_frames)
            if keep_stop > keep_start:
                start = first * stride
                windows.append(Window(start, min(start + self.window_samples, n_samples), first, keep_start,
                                      keep_stop))
        return windows

    def describe(self) -> str:
        """The window and the frames consecutive windows share, for the summary line."""
        sr, stride = self.sample_rate, self.geometry.stride
        return (f"windows of {self.window_samples / sr:g} s ({self.window_frames} frames), consecutive windows "
                f"sharing {self.shared_frames} frames ({self.shared_frames * stride / sr:g} s)")

