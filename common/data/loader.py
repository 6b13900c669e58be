"""The training/validation loader: batch plan + worker processes + collation + a resumable position.

``build_loader(dataset, config, world_size, rank)`` does the once-per-run batch formation (order, filter, batch by
size, concatenate, balance over ranks), logs a :class:`DataSummary` (how many utterances are kept, cropped and
skipped; an empty result is an error naming the manifest), and returns an :class:`AudioLoader`.

Workers receive whole :class:`~common.data.sampler.BatchPlan` s (a torch ``DataLoader`` with ``batch_size=None``),
read the audio and collate in the worker, so the main process only receives finished batches.

Position: ``state_dict()`` is ``{"epoch", "batch_in_epoch", ...}`` where ``batch_in_epoch`` counts the batches
already handed to the caller in that epoch. After ``load_state_dict`` the next iteration over that epoch yields
exactly the batches (and crops) the original run had not yet consumed; ``batch_in_epoch == len(loader)`` means the
epoch is complete.
"""
from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.data.batching import (
    batch_by_size,
    capped_sizes,
    concat_batches,
    conv_frames,
    filter_by_size,
    filter_too_short,
    get_bucketed_sizes,
    get_buckets,
    min_input_samples,
    num_tokens,
    ordered_indices,
)
from common.data.collate import Collater
from common.data.dataset import AudioDataset
from common.data.errors import DataError, first_few
from common.data.sampler import BatchPlan, ShardedBatchSampler, balance_for_ranks

logger = logging.getLogger(__name__)


def _worker_leaves_stop_signals_to_the_trainer(worker_id: int) -> None:  # noqa: ARG001
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM, SIGINT and SIGUSR1. A job scheduler stops a job with
    SIGTERM to its whole process group (Slurm, Kubernetes, ``kill -- -PGID``); torch's workers would die of it and
    the main process would fail on its next batch before the trainer had saved. Ignoring it, they keep serving
    batches until the trainer finishes the update, saves and shuts the loader down (workers also exit when the main
    process is gone)."""
    for name in ("SIGTERM", "SIGINT", "SIGUSR1"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


#: loaders that may hold worker processes, shut down at interpreter exit by :func:`_close_loaders_at_exit`
_LIVE_LOADERS: "weakref.WeakSet[AudioLoader]" = weakref.WeakSet()
_EXIT_HOOK_REGISTERED = False


def _close_loaders_at_exit() -> None:
    """``atexit`` hook: shut the workers of every live loader down before ``multiprocessing``'s own exit handler runs.

    That handler (registered earlier, so it runs later) stops daemonic children with SIGTERM and then joins them.
    Our workers ignore SIGTERM (:func:`_worker_leaves_stop_signals_to_the_trainer`), and torch's loader does not shut
    its workers down itself once the interpreter is exiting, so a process that exits while a loader with persistent
    workers is still referenced (a module-level loader, or the frames of an uncaught exception's traceback: a
    training run that dies of an error) would wait for them forever instead of exiting."""
    for loader in list(_LIVE_LOADERS):
        loader.close()


def _cgroup_cpu_limit(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> Optional[int]:
    """CPUs a cgroup CPU quota allows this process (``docker --cpus``, Kubernetes limits), rounded up; None where
    there is no quota or it cannot be read. Reads cgroup v2's ``cpu.max`` and v1's ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``, in the process's own cgroup and at the root of the hierarchy."""
    own = {"v2": "", "v1": ""}
    try:
        with open(proc_cgroup) as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) != 3:
                    continue
                if parts[0] == "0" and parts[1] == "":
                    own["v2"] = parts[2].lstrip("/")
                elif "cpu" in parts[1].split(","):
                    own["v1"] = parts[2].lstrip("/")
    except OSError:
        pass
    candidates = []
    for rel in dict.fromkeys([own["v2"], ""]):
        candidates.append(("v2", os.path.join(cgroup_root, rel, "cpu.max")))
    for folder in ("cpu", "cpu,cpuacct"):
        for rel in dict.fromkeys([own["v1"], ""]):
            candidates.append(("v1", os.path.join(cgroup_root, folder, rel)))
    for kind, path in candidates:
        try:
            if kind == "v2":
                with open(path) as f:
                    quota, period = (f.read().split() + ["100000"])[:2]
                if quota == "max":
                    continue
            else:
                with open(os.path.join(path, "cpu.cfs_quota_us")) as f:
                    quota = f.read().strip()
                with open(os.path.join(path, "cpu.cfs_period_us")) as f:
                    period = f.read().strip()
            quota_us, period_us = int(quota), int(period)
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            return max(1, -(-quota_us // period_us))
    return None


def usable_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota where one is set."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(cpus, limit) if limit else cpus


def usable_workers(requested: int, batches: Optional[int] = None) -> int:
    """DataLoader worker processes worth starting: ``requested`` (``--num_workers``; the reference's default is 6 per
    GPU) capped at the CPUs this process may use (affinity and cgroup quota) and at the number of batches to load.
    More workers than CPUs only compete for them (torch warns about it), and more than batches would idle. Results do
    not depend on the count: every batch draws its randomness from its own position in the epoch."""
    count = min(int(requested), usable_cpus())
    if batches is not None:
        count = min(count, int(batches))
    return max(0, count)


@dataclass
class LoaderConfig:
    """Batching and loading options (reference flag names in brackets).

    Attributes:
        max_tokens: padded samples per (sub-)batch [--max_tokens 1400000 / --max_tokens_valid].
        max_sentences: utterances per batch, None = unlimited [--batch_size / --batch_size_valid].
        required_batch_size_multiple: [--required_batch_size_multiple 8].
        max_sample_size: crop cap, None = unlimited [--max_sample_size 250000 base / 320000 large; None for valid].
        pad: zero-pad (fine-tuning, inference, --enable_padding) instead of cropping (pre-training).
        num_batch_buckets: padding buckets, pad only [--num_batch_buckets 0].
        num_concat_batches: sub-batches per loader batch [--num_concat_batches 1].
        seed: [--seed 1]; ordering uses it, epoch order uses seed + epoch, crops use (seed, epoch, position).
        shuffle: shuffle the batch order each epoch (training) or keep size order (validation).
        filter_long: skip utterances whose token count exceeds max_tokens, and (with ``conv_layers``) those too
            short for one output frame, with a warning naming their filelist lines (training;
            ``--skip_invalid_size_inputs_valid_test`` for validation); otherwise such an utterance is an error
            naming its file and filelist line (validation).
        conv_layers: ``(kernel, stride)`` of each convolution of the model's feature extractor (the
            ``(dim, kernel, stride)`` triples of ``Wav2Vec2Config.conv_layers`` are accepted), None = not known.
            With it, utterances shorter than the extractor's input for one frame are filtered as above, and
            labelled utterances whose transcript needs more CTC frames than their audio gives are counted and
            logged once (their loss stays the reference's zero_infinity 0).
        min_frames: the output frames an utterance needs at least (with ``conv_layers``): 1, or 2 in pretraining,
            whose contrastive loss draws its negatives from the other masked frames of the utterance.
        num_workers, prefetch_factor, persistent_workers: torch DataLoader options [--num_workers 6].
        pin_memory: None = when CUDA is available.
    """

    max_tokens: Optional[int] = 1_400_000
    max_sentences: Optional[int] = None
    required_batch_size_multiple: int = 8
    max_sample_size: Optional[int] = None
    pad: bool = False
    num_batch_buckets: int = 0
    num_concat_batches: int = 1
    seed: int = 1
    shuffle: bool = True
    filter_long: bool = True
    num_workers: int = 6
    prefetch_factor: int = 2
    persistent_workers: bool = True
    pin_memory: Optional[bool] = None
    conv_layers: Optional[Sequence[Sequence[int]]] = None
    min_frames: int = 1


@dataclass
class DataSummary:
    """What the batch plan keeps of a manifest (printed before training starts)."""

    manifest: str
    entries: int
    skipped_short: int
    skipped_long: int
    kept: int
    longer_than_max_sample_size: int
    batches: int
    batches_per_rank: int
    world_size: int
    min_input_samples: Optional[int] = None  # the feature extractor's input for one frame, when known
    skipped_no_frames: int = 0  # skipped for being shorter than min_input_samples
    ctc_infeasible: int = 0  # kept, with a transcript longer than CTC can align in their frames
    workers: Optional[int] = None  # loader worker processes per rank (usable_workers)
    workers_requested: Optional[int] = None  # --num_workers

    def describe(self) -> str:
        no_frames = (f"{self.skipped_no_frames} skipped (< {self.min_input_samples} samples: too short for the model), "
                     if self.min_input_samples is not None else "")
        ctc = (f", {self.ctc_infeasible} with a transcript longer than CTC can align (loss 0)"
               if self.ctc_infeasible else "")
        return (
            f"{self.manifest}: {self.entries} entries, {self.skipped_short} skipped (< min_sample_size), "
            f"{no_frames}{self.skipped_long} skipped (> max_tokens), {self.kept} kept "
            f"({self.longer_than_max_sample_size} longer than max_sample_size{ctc}), {self.batches} batches = "
            f"{self.batches_per_rank} per rank x {self.world_size} ranks"
            + (f"; {self.workers} loader workers per rank (--num_workers {self.workers_requested}, capped at the CPUs "
               f"this process may use and at its batches)"
               if self.workers is not None and self.workers_requested is not None
               and self.workers < self.workers_requested else "")
        )


class BatchDataset(Dataset):
    """Maps a :class:`BatchPlan` to a collated batch (runs inside the loader's worker processes)."""

    def __init__(self, dataset: AudioDataset, collater: Collater):
        self.dataset = dataset
        self.collater = collater

    def __getitem__(self, plan: BatchPlan) -> Dict[str, Any]:  # type: ignore[override]
        samples = [self.dataset[int(i)] for i in plan.indices]
        return self.collater(samples, plan.rng(), plan.sub_batch_sizes)

    def __len__(self) -> int:
        return len(self.dataset)


def _no_collate(batch: Dict[str, Any]) -> Dict[str, Any]:
    return batch


class AudioLoader:
    """Iterable over this rank's batches of the current epoch, with a resumable position.

    Typical use::

        loader.set_epoch(epoch)           # epochs count from 1
        for batch in loader: ...          # len(loader) batches per rank per epoch
        state = loader.state_dict()       # store in the checkpoint; loader.load_state_dict(state) to resume
    """

    def __init__(self, dataset: AudioDataset, sampler: ShardedBatchSampler, collater: Collater,
                 config: LoaderConfig, summary: Optional[DataSummary] = None):
        self.dataset = dataset
        self.sampler = sampler
        self.collater = collater
        self.config = config
        self.summary = summary
        self.epoch = sampler.epoch
        self.batch_in_epoch = 0
        self._resume_from = 0
        self._batches: Optional[Iterator[Dict[str, Any]]] = None  # the torch iterator of the current epoch
        workers = usable_workers(config.num_workers, len(sampler))
        pin = torch.cuda.is_available() if config.pin_memory is None else bool(config.pin_memory)
        self._loader = DataLoader(
            BatchDataset(dataset, collater),
            batch_size=None,
            sampler=sampler,
            collate_fn=_no_collate,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=bool(config.persistent_workers) and workers > 0,
            prefetch_factor=config.prefetch_factor if workers > 0 else None,
            worker_init_fn=_worker_leaves_stop_signals_to_the_trainer if workers > 0 else None,
        )
        if workers > 0:
            global _EXIT_HOOK_REGISTERED
            if not _EXIT_HOOK_REGISTERED:  # registered after torch's and multiprocessing's hooks: runs before them
                atexit.register(_close_loaders_at_exit)
                _EXIT_HOOK_REGISTERED = True
            _LIVE_LOADERS.add(self)

    def __len__(self) -> int:
        return len(self.sampler)

    def close(self) -> None:
        """Stop the worker processes now (the next iteration starts new ones)."""
        iterators = {id(it): it for it in (getattr(self._loader, "_iterator", None), self._batches) if it is not None}
        self._loader._iterator = None
        self._batches = None
        for iterator in iterators.values():
            if hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate. A position restored for this same epoch is kept; otherwise it starts at 0."""
        if int(epoch) != self.epoch:
            self._resume_from = 0
        self.epoch = int(epoch)
        self.batch_in_epoch = self._resume_from

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        start, self._resume_from = self._resume_from, 0
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = start
        self.batch_in_epoch = start
        # Workers are forked when the first iteration starts. Objects tracked by the garbage collector at that moment
        # (the trainer's, torch's) would have their headers written by every collection in every worker, copying
        # their pages into it; frozen, the workers' collections skip them. The parent unfreezes at once (unless the
        # program had frozen objects itself: its freeze is left as it was).
        ours = gc.get_freeze_count() == 0
        if ours:
            gc.freeze()
        try:
            batches = iter(self._loader)
        finally:
            if ours:
                gc.unfreeze()
        self._batches = batches  # (without persistent workers, only this generator holds the workers)
        try:
            for batch in batches:
                self.batch_in_epoch += 1
                yield batch
        finally:  # a generator dropped part-way (the trainer's ``del it``) lets non-persistent workers end, as before
            if self._batches is batches:
                self._batches = None

    def state_dict(self) -> Dict[str, Any]:
        """The position: epoch, batches consumed in it, and what identifies the batch plan."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "batches_per_epoch": len(self),
            "world_size": self.sampler.world_size,
            "seed": self.sampler.seed,
            "plan": self.sampler.digest,
        }

    def load_state_dict(self, state: Dict[str, Any], allow_plan_change: bool = False) -> Optional[str]:
        """Restore a position saved by :meth:`state_dict`.

        The data, world size, seed and batch settings must be the saved run's, so that the rest of the epoch is
        exactly the batches the run had not consumed. ``allow_plan_change`` (``--allow_data_plan_change``) accepts a
        changed plan instead: the epoch goes on from the same fraction of its new batches (which utterances those
        are is then not the uninterrupted run's). Returns a message describing that change, None otherwise.
        """
        mine = self.state_dict()
        changed = [f"{key} {state[key]} -> {mine[key]}" for key in ("world_size", "seed", "batches_per_epoch", "plan")
                   if key in state and str(state[key]) != str(mine[key])]
        saved_total = int(state.get("batches_per_epoch", len(self)))
        pos = int(state["batch_in_epoch"])
        if not 0 <= pos <= saved_total:
            raise ValueError(f"saved batch_in_epoch={pos} outside [0, {saved_total}]")
        message = None
        if changed:
            if not allow_plan_change:
                raise ValueError(
                    f"cannot resume the data position exactly: the batch plan changed ({'; '.join(changed)}): the "
                    "manifest, world size, seed or batch settings differ from the saved run's. Restore them, or pass "
                    "--allow_data_plan_change to continue the epoch from the same fraction of the new plan")
            new_pos = min(len(self), round(pos * len(self) / max(saved_total, 1)))
            message = (f"data plan changed ({'; '.join(changed)}): epoch {int(state['epoch'])} continues at batch "
                       f"{new_pos} of {len(self)} (was {pos} of {saved_total})")
            pos = new_pos
        self.epoch = int(state["epoch"])
        self._resume_from = pos
        self.batch_in_epoch = pos
        return message


def _refuse_invalid_sizes(dataset: AudioDataset, indices: np.ndarray, capped: np.ndarray, tokens: np.ndarray,
                          min_samples: Optional[int], max_tokens: Optional[int]) -> None:
    """Validation without ``filter_long``: an utterance too short for one frame or over the token budget is an
    error naming the audio file, its filelist line and the flag to change."""
    m = dataset.manifest

    def entry(i: int) -> str:
        return f"{m.audio_path(i)} ({m.path}:{int(m.line_numbers[i])}, {int(m.sizes[i])} samples)"

    skip = "pass --skip_invalid_size_inputs_valid_test to skip such validation utterances"
    if min_samples is not None:
        short = np.sort(indices[capped[indices] < min_samples])  # named in filelist order
        if len(short):
            raise DataError(
                f"{len(short)} validation utterance(s) shorter than the {min_samples} samples the model needs (the "
                f"feature extractor's input for its minimum number of frames): {first_few(short, entry)}; remove them "
                f"from {m.path}, or {skip}"
            )
    if max_tokens:
        long = np.sort(indices[tokens[indices] > max_tokens])
        if len(long):
            longest = int(tokens[long].max())
            raise DataError(
                f"{len(long)} validation utterance(s) longer than max_tokens={max_tokens} samples (train.py "
                f"--max_tokens_valid): {first_few(long, entry)}; raise --max_tokens_valid to at least {longest}, "
                f"or {skip}"
            )


def _log_ctc_infeasible(dataset: AudioDataset, indices: np.ndarray, frames: np.ndarray) -> int:
    """Count (and log once, naming the first few filelist and transcript lines) the utterances whose transcript
    needs more CTC frames than their audio gives; returns the count."""
    bad = dataset.ctc_infeasible(indices, frames)
    if bad:
        m, labels = dataset.manifest, dataset.labels
        assert labels is not None
        needed = dict(bad)

        def entry(i: int) -> str:
            return (f"{m.path}:{int(m.line_numbers[i])} ({labels.path}:{int(labels.line_numbers[i])}: "
                    f"{needed[i]} frames needed, {int(frames[i])} available)")

        logger.warning(
            "%d utterance(s) with a transcript longer than CTC can align in their audio's frames (it needs one "
            "frame per label plus one per pair of equal adjacent labels): their loss is 0 (zero_infinity, as in the "
            "reference) and they train nothing; first few: %s", len(bad), first_few([i for i, _ in bad], entry))
    return len(bad)


def build_loader(dataset: AudioDataset, config: LoaderConfig, world_size: int = 1, rank: int = 0) -> AudioLoader:
    """Form the run's batches for ``dataset`` and wrap them in an :class:`AudioLoader` for ``rank`` of ``world_size``.

    Raises:
        DataError: nothing left after filtering (names the manifest and the thresholds), an utterance longer than
            max_tokens or (with ``conv_layers``) too short for one frame when ``filter_long`` is off (names the
            file, its filelist line and the flag to change), or fewer utterances than ranks (training).
    """
    if config.max_sample_size is not None and config.max_sample_size <= 0:
        raise ValueError(f"max_sample_size must be positive or None, got {config.max_sample_size}")
    sizes = dataset.sizes
    manifest = dataset.manifest
    tokens = num_tokens(sizes, config.pad, config.max_sample_size)
    capped = capped_sizes(sizes, config.max_sample_size)  # what the model sees of each utterance (crop or pad)
    min_samples = (min_input_samples(config.conv_layers, frames=config.min_frames)
                   if config.conv_layers is not None else None)
    order = ordered_indices(sizes, config.seed, config.max_sample_size, shuffle=True)

    def where(i: int) -> str:
        return f"{manifest.path}:{int(manifest.line_numbers[i])}"

    if not config.filter_long:
        _refuse_invalid_sizes(dataset, order, capped, tokens, min_samples, config.max_tokens)
    order, no_frames = filter_too_short(order, capped, min_samples, where=where)
    kept, ignored = filter_by_size(order, tokens, config.max_tokens if config.filter_long else None, where=where)
    if len(kept) == 0:
        too_short = (f"{len(no_frames)} shorter than the model's minimum ({min_samples} samples), "
                     if len(no_frames) else "")
        raise DataError(
            f"no utterance of {manifest.path} is left after filtering: {manifest.num_entries} entries, "
            f"{len(manifest.skipped_indices)} shorter than min_sample_size, {too_short}{len(ignored)} longer than "
            f"max_tokens={config.max_tokens} (pad={config.pad}, max_sample_size={config.max_sample_size})"
        )
    ctc_infeasible = 0
    if config.conv_layers is not None and dataset.labels is not None:
        ctc_infeasible = _log_ctc_infeasible(dataset, kept, conv_frames(capped, config.conv_layers))
    batches = batch_by_size(kept, tokens, config.max_tokens, config.max_sentences,
                            config.required_batch_size_multiple, where=where)
    groups = concat_batches(batches, config.num_concat_batches)
    groups = balance_for_ranks(groups, world_size, allow_empty=not config.shuffle)
    bucketed = None
    if config.num_batch_buckets > 0:
        if not config.pad:
            raise ValueError("num_batch_buckets > 0 requires pad=True")
        bucketed = get_bucketed_sizes(capped, get_buckets(capped, config.num_batch_buckets))
    summary = DataSummary(
        manifest=manifest.path,
        entries=manifest.num_entries,
        skipped_short=len(manifest.skipped_indices),
        skipped_long=len(ignored),
        kept=len(kept),
        longer_than_max_sample_size=int((sizes[kept] > config.max_sample_size).sum())
        if config.max_sample_size is not None else 0,
        batches=len(groups),
        batches_per_rank=len(groups) // max(1, world_size),
        world_size=max(1, world_size),
        min_input_samples=min_samples,
        skipped_no_frames=len(no_frames),
        ctc_infeasible=ctc_infeasible,
        workers=usable_workers(config.num_workers, len(groups) // max(1, world_size)),
        workers_requested=config.num_workers,
    )
    logger.info("%s", summary.describe())
    sampler = ShardedBatchSampler(groups, world_size, rank, config.seed, config.shuffle)
    collater = Collater(pad=config.pad, max_sample_size=config.max_sample_size,
                        pad_index=dataset.dictionary.pad if dataset.dictionary else 1, bucketed_sizes=bucketed)
    return AudioLoader(dataset, sampler, collater, config, summary)
