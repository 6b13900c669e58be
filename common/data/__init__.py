"""Model-agnostic speech data loading: manifests, labels, dictionary, batching, DDP sharding, resumable loader.

Data flows one way: ``manifest.py`` (+ ``audio.py``, ``dictionary.py``) -> ``dataset.py`` -> ``batching.py``
(once per run) -> ``sampler.py`` (per epoch, per rank) -> ``collate.py`` (per batch, in workers) -> ``loader.py``.
See ``docs/DATA.md``.
"""
from common.data.audio import read_audio, normalize_waveform
from common.data.batching import (batch_by_size, concat_batches, conv_frames, filter_by_size, filter_too_short,
                                  get_bucketed_sizes, get_buckets, min_input_samples, ordered_indices)
from common.data.collate import Collater
from common.data.dataset import AudioDataset, open_split
from common.data.dictionary import Dictionary
from common.data.errors import DataError
from common.data.loader import AudioLoader, DataSummary, LoaderConfig, build_loader
from common.data.manifest import Labels, Manifest, load_labels, load_manifest, single_file_manifest
from common.data.sampler import BatchPlan, ShardedBatchSampler, balance_for_ranks, epoch_order

__all__ = [
    "AudioDataset", "AudioLoader", "BatchPlan", "Collater", "DataError", "DataSummary", "Dictionary", "Labels",
    "LoaderConfig", "Manifest", "ShardedBatchSampler", "balance_for_ranks", "batch_by_size", "build_loader",
    "concat_batches", "conv_frames", "epoch_order", "filter_by_size", "filter_too_short", "get_bucketed_sizes",
    "get_buckets", "load_labels", "load_manifest", "min_input_samples", "normalize_waveform", "open_split",
    "ordered_indices", "read_audio", "single_file_manifest",
]
