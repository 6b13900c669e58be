"""A map-style dataset of (optionally labelled) utterances: ``dataset[i] -> {"id", "source", "label"}``.

Combines a :class:`~common.data.manifest.Manifest`, optional :class:`~common.data.manifest.Labels` plus the
:class:`~common.data.dictionary.Dictionary` that encodes them, and the audio reader. It knows nothing about batches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from common.data.audio import DEFAULT_SAMPLE_RATE, AudioOrigin, normalize_waveform, read_audio
from common.data.dictionary import Dictionary, OnUnknown
from common.data.errors import DataError, PathLike
from common.data.manifest import Labels, Manifest, load_labels, load_manifest


@dataclass
class AudioDataset:
    """Utterances of one manifest.

    Attributes:
        manifest: kept manifest entries (``sizes`` drive batching).
        labels: transcripts aligned with ``manifest`` (None for pre-training).
        dictionary: encodes ``labels`` (required with labels).
        sample_rate: required audio sample rate (``--sample_rate`` 16000).
        normalize: per-utterance zero-mean unit-variance waveform (``--normalize``; fine-tuning/inference take it
            from the pre-trained checkpoint).
        on_unknown: label symbols missing from the dictionary: ``"error"`` (default) or ``"unk"`` (reference).
        check_length: the decoded length must equal the manifest's size column.
    """

    manifest: Manifest
    labels: Optional[Labels] = None
    dictionary: Optional[Dictionary] = None
    sample_rate: int = DEFAULT_SAMPLE_RATE
    normalize: bool = False
    on_unknown: OnUnknown = "error"
    check_length: bool = True

    def __post_init__(self) -> None:
        if self.labels is not None:
            if self.dictionary is None:
                raise ValueError("a dictionary is required to encode labels")
            if len(self.labels) != len(self.manifest):
                raise DataError(
                    f"labels file {self.labels.path} has {len(self.labels)} kept transcripts but manifest "
                    f"{self.manifest.path} has {len(self.manifest)} kept entries"
                )

    @property
    def sizes(self) -> np.ndarray:
        """Number of samples of each utterance (int64)."""
        return self.manifest.sizes

    def __len__(self) -> int:
        return len(self.manifest)

    def check_labels(self) -> None:
        """Encode every transcript once, so that an unknown symbol fails at start-up (names file and line)."""
        if self.labels is None:
            return
        assert self.dictionary is not None
        known = set(self.dictionary.indices)
        for i, line in enumerate(self.labels.lines):
            if self.on_unknown == "error" and not known.issuperset(line.split()):
                self.encode_label(i)  # raises with the location

    def encode_label(self, i: int) -> torch.Tensor:
        assert self.labels is not None and self.dictionary is not None
        return self.dictionary.encode_line(
            self.labels.lines[i],
            on_unknown=self.on_unknown,
            source=self.labels.path,
            line_no=int(self.labels.line_numbers[i]),
        )

    def ctc_frames_needed(self, i: int) -> int:
        """Fewest frames a CTC alignment of transcript ``i`` needs: its length plus one blank between each pair of
        equal adjacent symbols (``L L`` must be emitted as ``L <blank> L``)."""
        ids = self.encode_label(i).tolist()
        return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)

    def ctc_infeasible(self, indices: Sequence[int], frames: np.ndarray) -> List[Tuple[int, int]]:
        """``(index, frames needed)`` of the utterances among ``indices`` whose transcript needs more CTC frames than
        their ``frames[index]`` (the model's output frames). Their CTC loss is infinite, which ``zero_infinity``
        turns into 0: they train nothing. Only transcripts longer (in characters) than their frames are encoded, a
        bound that the number needed cannot exceed."""
        if self.labels is None:
            return []
        lines = self.labels.lines
        idx = np.asarray(indices, dtype=np.int64)
        chars = np.fromiter((len(lines[i]) for i in idx.tolist()), dtype=np.int64, count=len(idx))
        out = []
        for i in idx[chars > np.asarray(frames)[idx]].tolist():
            needed = self.ctc_frames_needed(i)
            if needed > frames[i]:
                out.append((i, needed))
        return out

    def load_source(self, i: int) -> torch.Tensor:
        """Waveform of utterance ``i`` as a 1-D float32 tensor (normalised when ``normalize``)."""
        m = self.manifest
        wav = read_audio(
            m.audio_path(i),
            sample_rate=self.sample_rate,
            expected_num_samples=int(m.sizes[i]) if self.check_length else None,
            origin=AudioOrigin(m.path, int(m.line_numbers[i])),
        )
        source = torch.from_numpy(wav)
        return normalize_waveform(source) if self.normalize else source

    def __getitem__(self, i: int) -> Dict[str, object]:
        item: Dict[str, object] = {"id": int(i), "source": self.load_source(i)}
        if self.labels is not None:
            item["label"] = self.encode_label(i)
        return item


def open_split(
    data_dir: PathLike,
    split: str,
    labels: Optional[str] = None,
    dictionary: Optional[Dictionary] = None,
    min_sample_size: Optional[int] = None,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    normalize: bool = False,
    on_unknown: OnUnknown = "error",
) -> AudioDataset:
    """Open ``<data_dir>/<split>.tsv`` (+ ``<split>.<labels>`` and ``dict.<labels>.txt`` when ``labels``).

    The dictionary is read from ``<data_dir>/dict.<labels>.txt`` unless given. Transcripts are checked against it
    immediately (:meth:`AudioDataset.check_labels`).
    """
    manifest = load_manifest(os.path.join(data_dir, f"{split}.tsv"), min_sample_size=min_sample_size)
    label_set = None
    if labels:
        if dictionary is None:
            dictionary = Dictionary.load(os.path.join(data_dir, f"dict.{labels}.txt"))
        label_set = load_labels(os.path.join(data_dir, f"{split}.{labels}"), manifest)
    ds = AudioDataset(
        manifest=manifest,
        labels=label_set,
        dictionary=dictionary,
        sample_rate=sample_rate,
        normalize=normalize,
        on_unknown=on_unknown,
    )
    ds.check_labels()
    return ds
