"""Model-agnostic speech data loading: manifests, labels, dictionary, batching, DDP sharding, resumable loader.

Data flows one way: ``manifest.py`` (+ ``audio.py``, ``dictionary.py``) -> ``dataset.py`` -> ``batching.py``
(once per run) -> ``sampler.py`` (per epoch, per rank) -> ``collate.py`` (per batch, in workers) -> ``loader.py``.
See ``docs/DATA.md``.
"""
import importlib
from typing import Any

# exported name -> submodule; imported on first use (PEP 562), so that torch-free users of one submodule (the data
# tools read text through common.data.errors) do not pay for torch, which the loader modules import
_EXPORTS = {
    "audio": ("read_audio", "normalize_waveform"),
    "batching": ("batch_by_size", "concat_batches", "conv_frames", "filter_by_size", "filter_too_short",
                 "get_bucketed_sizes", "get_buckets", "min_input_samples", "ordered_indices"),
    "collate": ("Collater",),
    "dataset": ("AudioDataset", "open_split"),
    "dictionary": ("Dictionary",),
    "errors": ("DataError",),
    "loader": ("AudioLoader", "DataSummary", "LoaderConfig", "build_loader"),
    "manifest": ("Labels", "Manifest", "load_labels", "load_manifest", "single_file_manifest"),
    "sampler": ("BatchPlan", "ShardedBatchSampler", "balance_for_ranks", "epoch_order"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'common.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"common.data.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AudioDataset", "AudioLoader", "BatchPlan", "Collater", "DataError", "DataSummary", "Dictionary", "Labels",
    "LoaderConfig", "Manifest", "ShardedBatchSampler", "balance_for_ranks", "batch_by_size", "build_loader",
    "concat_batches", "conv_frames", "epoch_order", "filter_by_size", "filter_too_short", "get_bucketed_sizes",
    "get_buckets", "load_labels", "load_manifest", "min_input_samples", "normalize_waveform", "open_split",
    "ordered_indices", "read_audio", "single_file_manifest",
]
