"""Model-agnostic CTC evaluation: batching for inference, the timed per-batch loop, greedy decoding, WER/UER,
latency/throughput summaries, DDP aggregation and the prediction / logits files (REFERENCE.md §3.5, §6.3-6.5).

The model is any callable ``logits, out_lengths = model(waveforms, lengths)`` (logits B x T x V before the
log-softmax; ``out_lengths`` the valid frames per row, or None when every frame is valid). Index 0 is the CTC blank.

Typical use (``inference.py`` does this)::

    batches = plan_batches(dataset.sizes, batch_size=8)                 # or max_duration=60.0
    loader = build_eval_loader(dataset, shard_batches(batches, W, r), num_workers=4)
    result = run_ctc_evaluation(model, loader, EvalSettings(symbols=dictionary.symbols, word_separator=4),
                                device=device)
    result = gather_results(result)                                     # DDP: every rank calls it
    summary = result.summary()                                          # eval_wer, latencies, throughput ...

Results do not depend on the batching: decoding is per utterance on its valid frames only, and utterances are
reported in filelist order whatever order the batches ran in.

Long audio (``EvalSettings.chunking``, off by default): utterances longer than a window run as overlapping windows
whose logits are stitched back into the whole utterance's frames (``common.chunking``; docs/INFERENCE.md).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from common.chunking import ChunkingConfig, Window
from common.distributed import synchronize
from common.metrics import ctc_greedy_collapse, edit_distance, latency_statistics, word_error_rate

__all__ = [
    "plan_batches",
    "shard_batches",
    "forward_batches",
    "chunked_forward",
    "build_eval_loader",
    "EvalSettings",
    "UtteranceResult",
    "EvalResult",
    "decode_text",
    "run_ctc_evaluation",
    "gather_results",
    "throughput_statistics",
    "write_predictions",
    "write_logits",
    "STAGES",
]

#: timed stages of the reference (§6.4): data loading + host->device copy, model, both
STAGES = ("data", "dnn", "data+dnn")


# ----------------------------------------------------------------------------------------------- batching


def plan_batches(sizes: Sequence[int], batch_size: Optional[int] = None, max_duration: Optional[float] = None,
                 sample_rate: int = 16000, drop_last: bool = False) -> List[List[int]]:
    """Group utterance indices into inference batches.

    * ``batch_size`` only (the reference): consecutive groups of ``batch_size`` in filelist order; ``drop_last``
      drops a final smaller group (performance mode) unless that would leave nothing.
    * ``max_duration`` (seconds; ours): utterances sorted longest first (ties by filelist position), greedily packed
      so that the PADDED audio of a batch (utterances x longest) stays within ``max_duration`` seconds, and at most
      ``batch_size`` utterances when that is given too. An utterance longer than ``max_duration`` forms a batch of
      its own. Sorting minimises padding; outputs are reported in filelist order anyway.
    """
    n = len(sizes)
    if n == 0:
        raise ValueError("no utterances to batch")
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_duration is None:
        if batch_size is None:
            raise ValueError("give --batch_size (utterances per batch) or --max_duration (seconds per batch)")
        batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
            batches.pop()
        return batches
    if max_duration <= 0:
        raise ValueError(f"max_duration must be positive, got {max_duration}")
    budget = max_duration * sample_rate
    order = sorted(range(n), key=lambda i: (-int(sizes[i]), i))
    batches, current, longest = [], [], 0
    for i in order:
        size = int(sizes[i])
        new_longest = max(longest, size)
        full = batch_size is not None and len(current) >= batch_size
        if current and (full or new_longest * (len(current) + 1) > budget):
            batches.append(current)
            current, new_longest = [], size
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def shard_batches(batches: Sequence[Sequence[int]], world_size: int = 1, rank: int = 0) -> List[List[int]]:
    """Batches ``rank, rank + W, rank + 2W, ...``: every utterance is evaluated exactly once over all ranks (no
    padding with repeated samples, unlike torch's DistributedSampler, REFERENCE.md §9.2 item 30)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    return [list(b) for b in batches[rank::world_size]]


class _PadCollate:
    """Zero-pads the waveforms of a batch (inference never crops); picklable for loader workers."""

    def __init__(self, pad_index: int = 1):
        from common.data.collate import Collater

        self.collater = Collater(pad=True, max_sample_size=None, pad_index=pad_index)

    def __call__(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        return self.collater(samples, np.random.default_rng(0))


def build_eval_loader(dataset: Any, batches: Sequence[Sequence[int]], num_workers: int = 0,
                      pin_memory: Optional[bool] = None) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` (``common.data.AudioDataset``) yielding the given batches, in that order, as
    batch dicts (``id``, ``source``, ``lengths``, ``target``, ``target_lengths``)."""
    pad_index = dataset.dictionary.pad if getattr(dataset, "dictionary", None) is not None else 1
    from common.data.loader import usable_workers

    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    num_workers = usable_workers(num_workers, len(batches))
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[list(b) for b in batches],
        collate_fn=_PadCollate(pad_index),
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
    )


# ----------------------------------------------------------------------------------------------- chunked forward


def _window_groups(plans: Sequence[Sequence[Window]], chunking: ChunkingConfig) -> List[List[Tuple[int, Window]]]:
    """The windows of a batch's utterances, as ``(row, window)``, grouped into forwards by :func:`plan_batches` with
    the chunking's limits (``max_duration``: longest first, padded audio within the budget; ``batch_size``: at most
    that many windows, in utterance order)."""
    pieces = [(row, w) for row, plan in enumerate(plans) for w in plan]
    groups = plan_batches([w.num_samples for _, w in pieces], batch_size=chunking.batch_size,
                          max_duration=chunking.max_duration, sample_rate=chunking.sample_rate)
    return [[pieces[i] for i in group] for group in groups]


def forward_batches(sizes: Sequence[int], chunking: Optional[ChunkingConfig]) -> List[List[int]]:
    """The input sample counts of each model call that :func:`run_ctc_evaluation` makes for a batch of utterances of
    ``sizes`` samples: the batch itself, or its window groups when chunking applies to it (CUDA-graph capture)."""
    if chunking is None or not any(chunking.is_long(n) for n in sizes):
        return [[int(n) for n in sizes]]
    groups = _window_groups([chunking.plan(n) for n in sizes], chunking)
    return [[w.num_samples for _, w in group] for group in groups]


def _padded_logits(rows: int, frames: int, like: torch.Tensor, blank: int) -> torch.Tensor:
    """rows x frames x V logits of padded frames as the CTC model writes them: blank 0, every other class -inf."""
    out = like.new_full((rows, frames, like.shape[-1]), float("-inf"))
    out[..., blank] = 0.0
    return out


def chunked_forward(model: Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]], source: torch.Tensor,
                    lengths: Sequence[int], chunking: ChunkingConfig, blank: int = 0,
                    unpadded_fast_path: bool = True) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """A batch's logits with long utterances run as windows (``common.chunking``) and stitched back together.

    ``source``: B x S zero-padded waveforms on the model's device; ``lengths``: valid samples per row (host ints).
    Every row's windows (one window over all of it when the row is not longer than a window) are grouped into model
    calls by :func:`plan_batches`; a call whose windows all have one length runs without lengths when
    ``unpadded_fast_path``, as the unchunked loop does. Returns ``(logits B x T x V, out_lengths B, windows per
    row)``: row ``b`` has ``num_frames(lengths[b])`` valid frames (the whole-utterance forward's count), each taken
    from exactly one window; frames past it are padded-frame logits."""
    plans = [chunking.plan(n) for n in lengths]
    frames = [chunking.geometry.num_frames(n) for n in lengths]
    out: Optional[torch.Tensor] = None
    for group in _window_groups(plans, chunking):
        sizes = [w.num_samples for _, w in group]
        inputs = source.new_zeros(len(group), max(sizes))
        for j, (row, w) in enumerate(group):
            inputs[j, : w.num_samples] = source[row, w.start: w.stop]
        same_length = unpadded_fast_path and len(set(sizes)) == 1
        logits, _ = model(inputs, None if same_length else torch.tensor(sizes, device=source.device))
        if out is None:
            out = _padded_logits(len(lengths), max(frames), logits, blank)
        for j, (row, w) in enumerate(group):
            out[row, w.keep_start: w.keep_stop] = logits[j, w.kept]
    assert out is not None  # every row has at least one window
    return out, torch.tensor(frames, device=source.device), [len(plan) for plan in plans]


# ----------------------------------------------------------------------------------------------- decoding


def decode_text(ids: Sequence[int], symbols: Sequence[str], word_separator: Optional[int]) -> str:
    """Dictionary symbols of ``ids`` concatenated; the word-separator id (``|``) becomes a space (fix of Q19: the
    separator's real index, not index 4). Ids outside the dictionary render as ``<unk>``."""
    out = []
    for i in ids:
        if word_separator is not None and i == word_separator:
            out.append(" ")
        else:
            out.append(symbols[i] if 0 <= i < len(symbols) else "<unk>")
    return "".join(out)


@dataclass
class EvalSettings:
    """What the evaluation loop needs besides the model and the batches.

    Attributes:
        symbols: dictionary symbols by index (index 0 = CTC blank).
        word_separator: index of the word separator (``|``), None when the dictionary has none (then an
            utterance's words are whitespace-separated symbols, usually one "word").
        steps: performance mode when > 0: run ``max(1, warmup_steps) + steps`` batches, cycling over the data, and
            skip the WER (the reference); 0: one pass, WER mode.
        warmup_steps: batches excluded from timing (the first batch is always excluded, as in the reference).
        keep_log_probs: keep each utterance's T_i x V log-probabilities (for ``--save_logits``).
        autocast: context manager factory for the forward (precision), e.g. ``PrecisionPolicy.autocast``.
        progress: an object with ``update(n, desc=...)``/``close()`` (``common.progress.Progress``) or None.
        sample_rate: for audio durations.
        unpadded_fast_path: call ``model(source, None)`` for a batch without padding (every row full length):
            the masked GroupNorm of the extractor (per-utterance statistics over valid frames) then equals the
            plain fused GroupNorm, which is ~2x faster on CPU for the first conv layer. Disable for models whose
            forward needs ``lengths`` even without padding.
        chunking: chunked inference of long utterances (``common.chunking``); None (default): every utterance
            runs whole. A batch without an utterance longer than the window runs exactly as without chunking.
    """

    symbols: Sequence[str]
    word_separator: Optional[int] = None
    blank: int = 0
    steps: int = 0
    warmup_steps: int = 0
    keep_log_probs: bool = False
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    progress: Any = None
    sample_rate: int = 16000
    unpadded_fast_path: bool = True
    chunking: Optional[ChunkingConfig] = None

    @property
    def first_timed(self) -> int:
        return max(1, self.warmup_steps)

    def num_iterations(self, batches_per_pass: int) -> int:
        return self.first_timed + self.steps if self.steps > 0 else batches_per_pass


@dataclass
class UtteranceResult:
    index: int  # dataset index (filelist order)
    hypothesis: str  # words separated by single spaces
    reference: Optional[str]
    num_samples: int
    pred_ids: List[int] = field(default_factory=list)  # collapsed greedy ids
    ref_ids: Optional[List[int]] = None
    log_probs: Optional[torch.Tensor] = None  # T_i x V float32 (valid frames only)
    windows: int = 1  # forwards the utterance ran in (> 1: chunked, EvalSettings.chunking)
    nan_frames: int = 0  # valid frames whose log-probabilities hold NaN (a broken forward, e.g. FP16 overflow)


@dataclass
class EvalResult:
    """Per-utterance results (filelist order after :meth:`sorted`) and per-batch timings of this process."""

    utterances: List[UtteranceResult] = field(default_factory=list)
    timings: Dict[str, List[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    timed_utterances: int = 0
    timed_audio_s: float = 0.0
    iterations: int = 0
    wer_mode: bool = True

    def sorted(self) -> "EvalResult":
        """Utterances in filelist order, one entry per dataset index (repeats of performance mode dropped)."""
        seen: Dict[int, UtteranceResult] = {}
        for u in self.utterances:
            seen.setdefault(u.index, u)
        self.utterances = [seen[i] for i in sorted(seen)]
        return self

    @property
    def has_references(self) -> bool:
        return bool(self.utterances) and all(u.reference is not None for u in self.utterances)

    def error_counts(self) -> Dict[str, int]:
        """Word errors / reference words (§3.5 word_error_rate) and unit errors / reference units (UER, units =
        dictionary symbols incl. the word separator, as the CTC criterion's ``c_errs``/``c_len``, §3.2)."""
        hyps = [u.hypothesis for u in self.utterances]
        refs = [u.reference or "" for u in self.utterances]
        _, w_errs, w_len = word_error_rate(hyps, refs)
        c_errs = sum(edit_distance(u.pred_ids, u.ref_ids or []) for u in self.utterances)
        c_len = sum(len(u.ref_ids or []) for u in self.utterances)
        empty = sum(1 for u in self.utterances if not u.hypothesis.split())  # no word: blank- or separator-only
        return {"w_errs": w_errs, "w_len": w_len, "c_errs": c_errs, "c_len": c_len,
                "utterances": len(self.utterances), "empty_predictions": empty}

    def nan_utterances(self) -> List[UtteranceResult]:
        """Utterances with NaN log-probabilities in some valid frame: greedy decoding reads such a frame as a
        blank, the beam search cannot score it (inference.py warns, naming them)."""
        return [u for u in self.utterances if u.nan_frames > 0]

    def chunking_counts(self) -> Dict[str, int]:
        """Utterances that ran in several windows (chunked inference) and the number of those windows."""
        chunked = [u for u in self.utterances if u.windows > 1]
        return {"chunked_utterances": len(chunked), "chunk_windows": sum(u.windows for u in chunked)}

    def summary(self, batch_latency: bool = True) -> Dict[str, float]:
        """dllogger values (step ()): ``eval_wer``/``eval_uer`` (%, WER mode with references) plus counts, the
        reference's latency keys per stage (ms, only with >= 20 timed batches), throughput and real-time factor."""
        out: Dict[str, float] = {}
        if self.wer_mode and self.has_references:
            c = self.error_counts()
            out["eval_wer"] = 100.0 * c["w_errs"] / c["w_len"] if c["w_len"] else float("inf")
            out["eval_uer"] = 100.0 * c["c_errs"] / c["c_len"] if c["c_len"] else float("inf")
            out.update({f"eval_{k}": v for k, v in c.items()})
        if batch_latency:
            for stage in STAGES:
                stats = latency_statistics(self.timings[stage], stage=stage)
                if stats:
                    out.update(stats)
        out.update(throughput_statistics(self.timings, self.timed_utterances, self.timed_audio_s))
        return out


def throughput_statistics(timings: Dict[str, List[float]], utterances: int, audio_s: float) -> Dict[str, float]:
    """For the model alone (``dnn``) and data + model: utterances/s, audio seconds/s and the real-time factor
    (processing time / audio time) over all timed batches (no drop of the first 5)."""
    out: Dict[str, float] = {}
    if audio_s <= 0:
        return out
    for stage in ("dnn", "data+dnn"):
        total = float(sum(timings.get(stage, ())))
        if total <= 0:
            continue
        out[f"{stage}_throughput_utts_per_s"] = utterances / total
        out[f"{stage}_throughput_audio_s_per_s"] = audio_s / total
        out[f"{stage}_rtf"] = total / audio_s
    return out


# ----------------------------------------------------------------------------------------------- the loop


def _cycle(loader: Iterable[Dict[str, Any]], cyclic: bool) -> Iterator[Dict[str, Any]]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if not cyclic or empty:
            return


def _move(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _forward(model: Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]], batch: Dict[str, Any],
             host_lengths: Optional[List[int]], settings: EvalSettings
             ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[List[int]]]:
    """``(logits, out_lengths, windows per row or None)`` of one batch: the chunked forward when chunking is on and
    some utterance of the batch is longer than a window, else the plain model call (unpadded fast path included)."""
    chunking = settings.chunking
    if chunking is not None and host_lengths is not None and any(chunking.is_long(n) for n in host_lengths):
        return chunked_forward(model, batch["source"], host_lengths, chunking, blank=settings.blank,
                               unpadded_fast_path=settings.unpadded_fast_path)
    lengths_in = batch["lengths"]
    if settings.unpadded_fast_path and bool((lengths_in == batch["source"].shape[1]).all()):
        lengths_in = None  # no padding: the plain (fused) extractor norm gives the same result, faster
    logits, out_lengths = model(batch["source"], lengths_in)
    return logits, out_lengths, None


@torch.no_grad()
def run_ctc_evaluation(model: Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]],
                       loader: Iterable[Dict[str, Any]], settings: EvalSettings,
                       device: torch.device = torch.device("cpu"),
                       batches_per_pass: Optional[int] = None,
                       clock: Callable[[], float] = time.perf_counter) -> EvalResult:
    """Run ``model`` over ``loader``; greedy-decode every utterance on its valid frames; time each batch.

    Timing (§6.4): ``data`` = end of the previous batch -> batch on the device (loading, collation, copy),
    ``dnn`` = forward + log-softmax + argmax (device-synchronised), ``data+dnn`` = both; batch ``it`` is timed when
    ``it >= max(1, warmup_steps)``. Decoding and bookkeeping happen outside the timed region.
    """
    if batches_per_pass is None:
        batches_per_pass = len(loader)  # type: ignore[arg-type]
    total = settings.num_iterations(batches_per_pass)
    result = EvalResult(wer_mode=settings.steps == 0)
    progress = settings.progress
    t0 = clock()
    try:
        _evaluate_batches(model, loader, settings, device, clock, result, total, t0)
    except Exception as exc:
        # a file that fails to load mid-run: the utterances finished so far go with the error (a transcription
        # prints them before reporting it, instead of losing them)
        exc.partial_evaluation = result.sorted()  # type: ignore[attr-defined]
        raise
    if progress is not None:
        progress.close()
    return result.sorted()


def _evaluate_batches(model, loader, settings: EvalSettings, device: torch.device, clock: Callable[[], float],
                      result: EvalResult, total: int, t0: float) -> None:
    """The loop of :func:`run_ctc_evaluation`, adding to ``result``."""
    progress = settings.progress
    symbols = list(settings.symbols)
    it = 0
    for it, batch in enumerate(_cycle(loader, settings.steps > 0)):
        if it >= total:
            break
        if not batch:
            continue
        host_lengths = [int(n) for n in batch["lengths"].tolist()] if settings.chunking is not None else None
        batch = _move(batch, device)
        synchronize(device)
        t1 = clock()
        with settings.autocast():
            logits, out_lengths, windows = _forward(model, batch, host_lengths, settings)
        log_probs = F.log_softmax(logits.float(), dim=-1).contiguous()
        preds = log_probs.argmax(dim=-1)
        synchronize(device)
        t2 = clock()
        nan_cpu = torch.isnan(log_probs).any(dim=-1).cpu()  # after t2: not part of the timed forward
        bsz = int(batch["source"].shape[0])
        lengths = batch["lengths"].cpu()
        if it >= settings.first_timed:
            result.timings["data"].append(t1 - t0)
            result.timings["dnn"].append(t2 - t1)
            result.timings["data+dnn"].append(t2 - t0)
            result.timed_utterances += bsz
            result.timed_audio_s += float(lengths.sum()) / settings.sample_rate
        frames = out_lengths.cpu() if out_lengths is not None else torch.full((bsz,), preds.shape[1])
        preds_cpu = preds.cpu()
        lp_cpu = log_probs.cpu() if settings.keep_log_probs else None
        ids = batch["id"].cpu().tolist()
        targets = batch.get("target")
        tlens = batch.get("target_lengths")
        for row in range(bsz):
            n_frames = int(frames[row])
            pred_ids = ctc_greedy_collapse(preds_cpu[row, :n_frames], settings.blank)
            hyp = " ".join(decode_text(pred_ids, symbols, settings.word_separator).split())
            ref_ids = ref = None
            if targets is not None and tlens is not None:
                ref_ids = targets[row, : int(tlens[row])].cpu().tolist()
                ref = " ".join(decode_text(ref_ids, symbols, settings.word_separator).split())
            result.utterances.append(UtteranceResult(
                index=int(ids[row]), hypothesis=hyp, reference=ref, num_samples=int(lengths[row]),
                pred_ids=pred_ids, ref_ids=ref_ids,
                log_probs=lp_cpu[row, :n_frames].clone() if lp_cpu is not None else None,
                windows=windows[row] if windows is not None else 1,
                nan_frames=int(nan_cpu[row, :n_frames].sum()),
            ))
        if progress is not None:
            desc = "warmup" if settings.warmup_steps > 0 and it < settings.warmup_steps else "inference"
            progress.update(1, desc=desc)
        synchronize(device)
        t0 = clock()
    result.iterations = min(it + 1, total) if total else 0


# ----------------------------------------------------------------------------------------------- DDP


def gather_results(result: EvalResult, keep_log_probs: bool = False) -> EvalResult:
    """Collect every rank's utterances on rank 0 (all ranks must call it). Rank 0 keeps its own timings (the
    reference reports rank 0's latencies); other ranks get their result back unchanged. Without an initialised
    process group this is the identity.

    WER statistics are then computed on rank 0 from the gathered utterances, which equals summing per-rank
    (errors, words) because every utterance is evaluated on exactly one rank.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return result
    payload = [
        (u.index, u.hypothesis, u.reference, u.num_samples, u.pred_ids, u.ref_ids,
         u.log_probs if keep_log_probs else None, u.windows, u.nan_frames)
        for u in result.utterances
    ]
    gathered: List[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else []
    dist.gather_object(payload, gathered if dist.get_rank() == 0 else None, dst=0)
    if dist.get_rank() != 0:
        return result
    merged = EvalResult(timings=result.timings, timed_utterances=result.timed_utterances,
                        timed_audio_s=result.timed_audio_s, iterations=result.iterations,
                        wer_mode=result.wer_mode)
    for part in gathered:
        for idx, hyp, ref, ns, pids, rids, lp, windows, nan_frames in part or ():
            merged.utterances.append(UtteranceResult(idx, hyp, ref, ns, pids, rids, lp, windows, nan_frames))
    return merged.sorted()


# ----------------------------------------------------------------------------------------------- files


def _clean(text: Optional[str]) -> str:
    return "" if text is None else " ".join(text.split())


def write_predictions(path: str, result: EvalResult, names: Sequence[str]) -> None:
    """TSV, header ``id<TAB>reference<TAB>hypothesis``, one row per utterance in filelist order; ``id`` = the
    utterance's relative path in the filelist, words separated by single spaces, empty reference when the data set
    has no transcripts."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("id\treference\thypothesis\n")
        for u in result.utterances:
            fh.write(f"{names[u.index]}\t{_clean(u.reference)}\t{_clean(u.hypothesis)}\n")


def write_logits(path: str, result: EvalResult, names: Sequence[str], symbols: Sequence[str]) -> None:
    """``torch.save`` of ``{"ids": [relative path, ...], "log_probs": [T_i x V float32 tensor, ...],
    "symbols": [dictionary symbols]}`` in filelist order; only valid (unpadded) frames are stored."""
    missing = [u.index for u in result.utterances if u.log_probs is None]
    if missing:
        raise ValueError("log-probabilities were not kept (EvalSettings.keep_log_probs=False)")
    torch.save({
        "ids": [names[u.index] for u in result.utterances],
        "log_probs": [u.log_probs.float().contiguous() for u in result.utterances],
        "symbols": list(symbols),
    }, path)

