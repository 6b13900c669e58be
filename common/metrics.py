"""Evaluation statistics and the metric aggregator (REFERENCE.md §3.2, §3.3, §3.5, §6.4-6.5).

Contents:

* :func:`edit_distance` - Levenshtein distance with unit costs (own implementation; the reference uses the
  ``editdistance`` package, which gives identical numbers).
* :func:`ctc_greedy_collapse`, :func:`ctc_greedy_string` - greedy CTC: collapse consecutive duplicates, drop blanks.
* :func:`ids_to_string`, :func:`post_process_letter`, :class:`WerStats` - the CTC criterion's validation statistics
  ``c_errs``/``c_len``/``w_errs``/``wv_errs``/``w_len`` (§3.2), "letter" post-processing with ``|``.
* :func:`word_error_rate` - the standalone WER of inference (§3.5).
* :func:`latency_statistics`, :func:`real_time_factor` - inference latency summary (§6.5).
* :class:`MetricsSpec`, :class:`MetricsAggregator` - per-key reductions, scopes, loss normalisation, derived
  metrics, all-reduce hook, benchmark summary (§3.3).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "edit_distance",
    "ctc_greedy_collapse",
    "ctc_greedy_string",
    "ids_to_string",
    "post_process_letter",
    "WerStats",
    "word_error_rate",
    "percentile_descending",
    "latency_statistics",
    "real_time_factor",
    "distributed_sum",
    "MetricsSpec",
    "MetricsAggregator",
]

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------- edit distances


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance between two sequences (unit insertion/deletion/substitution costs).

    Bit-parallel algorithm (Myers 1999 / Hyyro 2001) on Python integers: O(len(a)) integer operations whatever
    len(b) is, so a 300-letter utterance costs well under a millisecond without a C extension. Elements must be
    hashable (ids, words); otherwise a plain dynamic programme is used.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    try:
        peq: Dict[Any, int] = {}
        for i, token in enumerate(b):
            peq[token] = peq.get(token, 0) | (1 << i)
    except TypeError:
        return _edit_distance_dp(a, b)
    full = (1 << m) - 1
    top = 1 << (m - 1)
    pv, mv, score = full, 0, m
    for token in a:
        eq = peq.get(token, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & full
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = (mh | ~(xv | ph)) & full
        mv = ph & xv
    return score


def _edit_distance_dp(a: Sequence[Any], b: Sequence[Any]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _as_list(ids: Any) -> List[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


def ctc_greedy_collapse(frame_ids: Any, blank: int = 0) -> List[int]:
    """Greedy CTC on frame-wise argmax ids: collapse consecutive duplicates, then remove blanks.

    ``[0, 5, 5, 0, 5, 6, 6] -> [5, 5, 6]`` (a blank separates two genuine repetitions).
    """
    out: List[int] = []
    prev: Optional[int] = None
    for p in _as_list(frame_ids):
        if p != prev and p != blank:
            out.append(p)
        prev = p
    return out


def ids_to_string(ids: Iterable[int], symbols: Sequence[str], separator: str = " ",
                  ignore_ids: Iterable[int] = (0, 2), unk: str = "<unk>") -> str:
    """Dictionary ``string()`` of the reference: symbols joined by ``separator``, ``<s>`` (0) and ``</s>`` (2) left out,
    ids outside the dictionary rendered as ``<unk>``."""
    skip = set(ignore_ids)
    return separator.join(symbols[i] if 0 <= i < len(symbols) else unk for i in _as_list(ids) if i not in skip)


def ctc_greedy_string(frame_ids: Any, symbols: Sequence[str], blank: int = 0) -> str:
    """Inference's greedy decoding (§3.5): collapsed non-blank ids mapped to symbols, concatenated without separators
    (e.g. ``"THE|CAT|"``)."""
    return "".join(symbols[i] for i in ctc_greedy_collapse(frame_ids, blank))


def post_process_letter(text: str, separator: str = "|") -> str:
    """fairseq "letter" post-processing: delete spaces, turn ``|`` into spaces, strip, single-space the words."""
    return " ".join(text.replace(" ", "").replace(separator, " ").split())


@dataclass
class WerStats:
    """The CTC criterion's validation statistics (§3.2), summed over utterances.

    ``c_errs``/``c_len``: token edit distance / reference tokens (letters incl. ``|``); ``w_errs``/``wv_errs``/``w_len``:
    word edit distance (identical without an LM decoder) / reference words. ``empty_preds`` counts utterances whose
    greedy prediction holds no word: blank-only output, or only word separators, the two ways a stuck CTC model
    outputs nothing (used by :mod:`common.health`).
    """

    c_errs: int = 0
    c_len: int = 0
    w_errs: int = 0
    wv_errs: int = 0
    w_len: int = 0
    n_utts: int = 0
    empty_preds: int = 0

    def add(self, pred_ids: Sequence[int], ref_ids: Sequence[int], symbols: Sequence[str],
            ignore_ids: Iterable[int] = (0, 2)) -> None:
        """Add one utterance: ``pred_ids`` already collapsed (blank-free), ``ref_ids`` without pad/eos."""
        pred_ids, ref_ids = _as_list(pred_ids), _as_list(ref_ids)
        self.c_errs += edit_distance(pred_ids, ref_ids)
        self.c_len += len(ref_ids)
        ref_words = post_process_letter(ids_to_string(ref_ids, symbols, ignore_ids=ignore_ids)).split()
        pred_words = post_process_letter(ids_to_string(pred_ids, symbols, ignore_ids=ignore_ids)).split()
        dist = edit_distance(pred_words, ref_words)
        self.w_errs += dist
        self.wv_errs += dist
        self.w_len += len(ref_words)
        self.n_utts += 1
        self.empty_preds += int(not pred_words)  # blank-only, or only word separators: no word at all

    def add_frames(self, frame_ids: Any, ref_ids: Sequence[int], symbols: Sequence[str], blank: int = 0) -> None:
        """Add one utterance from its frame-wise argmax ids (truncated to the valid length)."""
        self.add(ctc_greedy_collapse(frame_ids, blank), ref_ids, symbols)

    @property
    def uer(self) -> float:
        return 100.0 * self.c_errs / self.c_len if self.c_len else float("nan")

    @property
    def wer(self) -> float:
        return 100.0 * self.w_errs / self.w_len if self.w_len else float("nan")

    @property
    def raw_wer(self) -> float:
        return 100.0 * self.wv_errs / self.w_len if self.w_len else float("nan")

    def log_dict(self) -> Dict[str, int]:
        """The keys the criterion adds to its eval log dict (all ``sum`` reductions)."""
        return {"c_errs": self.c_errs, "c_len": self.c_len, "w_errs": self.w_errs, "wv_errs": self.wv_errs,
                "w_len": self.w_len, "empty_preds": self.empty_preds}


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> Tuple[float, int, int]:
    """Inference WER (§3.5): ``(sum word edit distances / sum reference words, errors, words)``.

    More references than hypotheses is an error; extra hypotheses are ignored. Words are whitespace-split. No
    reference words -> ``inf``.
    """
    if len(references) > len(hypotheses):
        raise ValueError(f"{len(references)} references but only {len(hypotheses)} hypotheses")
    errors = words = 0
    for hyp, ref in zip(hypotheses, references):
        ref_words = ref.split()
        words += len(ref_words)
        errors += edit_distance(hyp.split(), ref_words)
    return (errors / words if words else float("inf")), errors, words


# ----------------------------------------------------------------------------------------------- latency


def percentile_descending(values: Sequence[float], ratio: float) -> float:
    """The reference's percentile: sort descending, take index ``floor(n * (1 - ratio))`` (float arithmetic, no
    interpolation). For n = 100 values 1..100: ratio 0.9 -> 91, 0.95 -> 95, 0.99 -> 99."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values, reverse=True)
    return ordered[min(len(ordered) - 1, int(math.floor(len(ordered) * (1.0 - ratio))))]


def latency_statistics(durations_s: Sequence[float], stage: str = "dnn", drop_first: int = 5,
                       min_samples: int = 20, ratios: Sequence[float] = (0.99, 0.95, 0.9)
                       ) -> Optional[Dict[str, float]]:
    """Latency summary of inference (§6.5) in milliseconds, or None with fewer than ``min_samples`` timings.

    The first ``drop_first`` timed values are dropped (in addition to the warm-up), the mean of the rest is logged as
    ``<stage>_latency_0_5`` (the reference's name for the average) and each ratio r as ``<stage>_latency_0_99`` etc.
    """
    if len(durations_s) < min_samples:
        return None
    ms = [1000.0 * d for d in durations_s[drop_first:]]
    if not ms:
        return None
    out = {f"{stage}_latency_{str(r).replace('.', '_')}": percentile_descending(ms, r) for r in ratios}
    out[f"{stage}_latency_0_5"] = sum(ms) / len(ms)
    return out


def real_time_factor(processing_seconds: float, audio_seconds: float) -> float:
    """RTF = processing time / audio duration (< 1: faster than real time)."""
    if audio_seconds <= 0:
        raise ValueError("audio duration must be > 0")
    return processing_seconds / audio_seconds


# ----------------------------------------------------------------------------------------------- aggregation


def distributed_sum(values: List[float]) -> List[float]:
    """Sum ``values`` over all ranks (float64) with torch.distributed; identity when it is not initialised."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


SUM, MEAN, LAST = "sum", "mean", "last"


@dataclass(frozen=True)
class MetricsSpec:
    """What differs between pre-training and fine-tuning metrics (§3.3).

    Attributes:
        mode: "pretrain" | "finetune".
        reductions: per-key reduction (default ``sum``).
        normalizer: the partial that losses are divided by (``ntokens`` / ``nsentences``), together with ln 2.
        dllogger_keys: keys of a scope written to the dllogger log (in this order, when present).
        normalize_loss_scale: reproduce Q1 (``loss_scale`` divided like a loss). Default False (fixed).
        benchmark_keys: per-epoch values kept for the ``train_benchmark`` summary.
    """

    mode: str
    reductions: Mapping[str, str]
    normalizer: str
    dllogger_keys: Tuple[str, ...]
    normalize_loss_scale: bool = False
    benchmark_keys: Tuple[str, ...] = ("took", "accuracy", "loss", "ntokens/s", "tflop/s", "mfu")

    @classmethod
    def pretrain(cls, **kw: Any) -> "MetricsSpec":
        """Reference ``W2v2Metrics`` plus ``temp`` and ``grad_norm`` in the log (PITFALLS #1), throughput in model
        FLOPs (``tflop/s``, ``mfu``) and the fraction of time spent waiting for data (``data_wait``, PITFALLS #3)."""
        red = {"temp": MEAN, "prob_perplexity": MEAN, "code_perplexity": MEAN, "lr": LAST, "loss_scale": LAST,
               "grad_norm": LAST}
        keys = ("loss", "ntokens", "accuracy", "prob_perplexity", "code_perplexity", "temp", "took", "loss_scale",
                "lr", "grad_norm", "ntokens/s", "tflop/s", "mfu", "data_wait")
        return cls("pretrain", red, "ntokens", keys, **kw)

    @classmethod
    def finetune(cls, **kw: Any) -> "MetricsSpec":
        """Reference ``W2v2FineTuningMetrics`` (+ ``loss_scale``, ``grad_norm``, ``tflop/s``, ``mfu``, ``data_wait``)."""
        red = {"temp": MEAN, "prob_perplexity": MEAN, "code_perplexity": MEAN, "lr": LAST, "loss_scale": LAST,
               "grad_norm": LAST}
        keys = ("loss", "ntokens", "accuracy", "lr", "prob_perplexity", "took", "loss_scale", "grad_norm",
                "ntokens/s", "tflop/s", "mfu", "data_wait", "uer", "wer", "raw_wer")
        return cls("finetune", red, "nsentences", keys, **kw)


@dataclass
class _Scope:
    sums: Dict[str, float] = field(default_factory=dict)
    counts: Dict[str, float] = field(default_factory=dict)
    took: float = 0.0
    timer_start: Optional[float] = None
    active: bool = True


class MetricsAggregator:
    """Per-key reductions, scopes and derived metrics of the reference (§3.3).

    Training call pattern (per update; ``W`` = world size)::

        agg = MetricsAggregator(MetricsSpec.pretrain(), benchmark_epochs_num=3)
        agg.start_scope("train_avg"); agg.start_scope("train", timer=False)     # epoch start
        agg.start_timer("train")                                                 # update start (fix Q18: before
        for micro-batch: agg.log(criterion_log_dict)                             #   fetching its first batch)
        agg.all_reduce(W); agg["lr"] = lr; agg["loss_scale"] = s; agg["grad_norm"] = n
        agg.accumulate(); agg.stop_timer("train")
        if step % log_frequency == 0: res = agg.finish_scope("train"); agg.start_scope("train", timer=False)
        ... epoch end: res = agg.finish_scope("train_avg")   (appends the benchmark values)

    Reductions of micro-batch partials: ``sum`` (add, count 1), ``mean`` (add, count += 1), ``last`` (overwrite,
    count 1); item assignment always uses ``last``. ``accumulate`` normalises keys starting with ``loss`` by the
    reduced ``ntokens`` (pre-training) or ``nsentences`` (fine-tuning) and ln 2 (bits), computes
    ``accuracy = correct / count`` and adds everything into the active scopes. Finishing a scope divides by the
    counts (per-update averages for ``sum`` keys), ``took`` stays the total, ``ntokens/s`` = total tokens / took,
    ``tflop/s`` = total model FLOPs (the steps' ``flops``, summed over ranks) / took / 1e12, ``mfu`` = that rate over
    ``peak_flops`` (all ranks' dense matmul rate together; left out when not given), ``data_wait`` = the updates'
    ``data_s`` (seconds spent fetching batches) / took, and
    ``uer``/``wer``/``raw_wer`` are 100 x ratios of totals.

    Deviations: Q1 (``loss_scale`` is not normalised); Q9 (losses are normalised even when some ranks had an empty
    validation batch, as long as the normaliser is > 0); Q17 (a benchmark key that was never produced, e.g. the
    fine-tuning accuracy, is left out instead of reported as 0).
    """

    def __init__(self, spec: MetricsSpec, benchmark_epochs_num: int = 3,
                 all_reduce_fn: Optional[Callable[[List[float]], List[float]]] = None,
                 synchronize: Optional[Callable[[], None]] = None,
                 clock: Callable[[], float] = time.perf_counter, peak_flops: Optional[float] = None) -> None:
        self.spec = spec
        self.peak_flops = peak_flops
        self.benchmark_epochs_num = int(benchmark_epochs_num)
        self._all_reduce_fn = all_reduce_fn or distributed_sum
        self._synchronize = synchronize
        self._clock = clock
        self._partials: Dict[str, float] = {}
        self._partial_counts: Dict[str, float] = {}
        self._partial_red: Dict[str, str] = {}
        self._pending: List[Tuple[str, Any, str]] = []  # logged entries not read yet (see ``log``)
        self._scopes: Dict[str, _Scope] = {}
        self._benchmark: Dict[str, List[float]] = {}
        self._saved_scopes: Dict[str, Dict[str, Any]] = {}  # from a loaded checkpoint, until resume_scopes

    # ---- partials
    def log(self, stats: Mapping[str, Any]) -> None:
        """Add one micro-batch's log dict (Python numbers or 0-d tensors) into the partials.

        Tensors are not read here: reading a GPU value waits for the device, so the entries wait in order until the
        partials are needed (``all_reduce``, ``accumulate``, reading or setting a key), and all of their tensors
        are then read in one transfer per device: one synchronisation per update instead of one per value."""
        for key, value in stats.items():
            reduction = self.spec.reductions.get(key, SUM)
            if reduction not in (SUM, MEAN, LAST):
                raise ValueError(f"unknown reduction {reduction!r} for {key!r}")
            self._pending.append((key, value, reduction))

    def _flush(self) -> None:
        """Replay the pending entries in their order, reading their tensors in one transfer per device."""
        if not self._pending:
            return
        import torch  # (this module imports torch only where it needs it, as distributed_sum does)

        by_device: Dict[Any, List[int]] = {}
        for i, (_, value, _) in enumerate(self._pending):
            if isinstance(value, torch.Tensor):
                by_device.setdefault(value.device, []).append(i)
        numbers: Dict[int, float] = {}
        for indices in by_device.values():
            stacked = torch.stack([self._pending[i][1].detach().reshape(()).double() for i in indices])
            numbers.update(zip(indices, stacked.tolist()))
        pending, self._pending = self._pending, []
        for i, (key, value, reduction) in enumerate(pending):
            self._add(key, numbers[i] if i in numbers else float(value), reduction)

    def _add(self, key: str, value: float, reduction: str) -> None:
        self._partial_red[key] = reduction
        if reduction == LAST:
            self._partials[key] = value
            self._partial_counts[key] = 1
        elif reduction == MEAN:
            self._partials[key] = self._partials.get(key, 0.0) + value
            self._partial_counts[key] = self._partial_counts.get(key, 0) + 1
        elif reduction == SUM:
            self._partials[key] = self._partials.get(key, 0.0) + value
            self._partial_counts[key] = 1
        else:
            raise ValueError(f"unknown reduction {reduction!r} for {key!r}")

    def __setitem__(self, key: str, value: Any) -> None:
        self._flush()
        self._add(key, float(value), LAST)

    def __getitem__(self, key: str) -> float:
        self._flush()
        return self._partials[key]

    def discard(self) -> None:
        """Drop the partials of the current update (a skipped update's non-finite losses never reach a scope)."""
        self._pending.clear()
        self._partials.clear()
        self._partial_counts.clear()
        self._partial_red.clear()

    @property
    def partials(self) -> Dict[str, float]:
        self._flush()
        return dict(self._partials)

    def all_reduce(self, world_size: int) -> None:
        """Sum partial values over ranks (no-op for ``world_size == 1``); counts of ``mean``/``last`` keys are
        multiplied by ``world_size - ignore`` (``ignore`` = reduced number of ranks with an empty batch).

        Keys are reduced in sorted order, so every rank must log the same key set."""
        self._flush()
        if world_size <= 1:
            return
        keys = sorted(self._partials)
        reduced = self._all_reduce_fn([self._partials[k] for k in keys])
        self._partials = dict(zip(keys, (float(v) for v in reduced)))
        ranks = max(1, world_size - int(round(self._partials.get("ignore", 0.0))))
        for k in keys:
            if self._partial_red.get(k, SUM) in (MEAN, LAST):
                self._partial_counts[k] = self._partial_counts.get(k, 1) * ranks

    def _normalise(self) -> None:
        p = self._partials
        denom = p.get(self.spec.normalizer, 0.0)
        if denom > 0:
            for k in list(p):
                if k.startswith("loss") and (k != "loss_scale" or self.spec.normalize_loss_scale):
                    p[k] = p[k] / denom / LN2
        if "correct" in p and "count" in p:
            correct, count = p.pop("correct"), p.pop("count")
            for k in ("correct", "count"):
                self._partial_counts.pop(k, None)
                self._partial_red.pop(k, None)
            if count > 0:
                self._add("accuracy", correct / count, LAST)

    def accumulate(self, scopes: Optional[Iterable[str]] = None) -> None:
        """Normalise the partials and add them into ``scopes`` (default: every active scope); clear the partials."""
        self._flush()
        self._normalise()
        names = list(scopes) if scopes is not None else [n for n, s in self._scopes.items() if s.active]
        for name in names:
            scope = self._scopes[name]
            for k, v in self._partials.items():
                scope.sums[k] = scope.sums.get(k, 0.0) + v
                scope.counts[k] = scope.counts.get(k, 0) + self._partial_counts.get(k, 1)
        self._partials.clear()
        self._partial_counts.clear()
        self._partial_red.clear()

    # ---- scopes and timers
    def start_scope(self, name: str, timer: bool = True, sync: bool = False) -> None:
        """(Re)start scope ``name`` with empty sums; ``timer`` starts its wall clock (``sync``: CUDA-synchronise
        first, as the reference does for ``train_avg`` and ``val``)."""
        self._scopes[name] = _Scope()
        if timer:
            self.start_timer(name, sync=sync)

    def start_timer(self, name: str, sync: bool = False) -> None:
        if sync and self._synchronize is not None:
            self._synchronize()
        self._scopes[name].timer_start = self._clock()

    def stop_timer(self, name: str, sync: bool = False) -> None:
        scope = self._scopes[name]
        if scope.timer_start is not None:
            if sync and self._synchronize is not None:
                self._synchronize()
            scope.took += self._clock() - scope.timer_start
            scope.timer_start = None

    def finish_scope(self, name: str, sync: bool = False) -> Dict[str, float]:
        """Stop the scope's timer, return its averaged metrics (all keys) and deactivate it."""
        self.stop_timer(name, sync=sync)
        scope = self._scopes[name]
        scope.active = False
        res = {k: v / scope.counts[k] for k, v in scope.sums.items()}
        res["took"] = scope.took
        if "ntokens" in scope.sums and scope.took > 0:
            res["ntokens/s"] = scope.sums["ntokens"] / scope.took
        if "data_s" in scope.sums and scope.took > 0:
            res["data_wait"] = scope.sums["data_s"] / scope.took
        if "flops" in scope.sums and scope.took > 0:
            res["tflop/s"] = scope.sums["flops"] / scope.took / 1e12
            if self.peak_flops:
                res["mfu"] = scope.sums["flops"] / scope.took / self.peak_flops
        for out, num, den in (("uer", "c_errs", "c_len"), ("wer", "w_errs", "w_len"), ("raw_wer", "wv_errs", "w_len")):
            if num in res and res.get(den, 0) > 0:
                res[out] = 100.0 * res[num] / res[den]
        if name == "train_avg":
            self._record_benchmark(res)
        return res

    def _record_benchmark(self, res: Mapping[str, float]) -> None:
        for k in self.spec.benchmark_keys:
            if k in res:
                lst = self._benchmark.setdefault(k, [])
                lst.append(res[k])
                del lst[: max(0, len(lst) - self.benchmark_epochs_num)]

    def benchmark(self) -> Dict[str, float]:
        """``train_avg_<key>`` = mean over the last ``benchmark_epochs_num`` epochs, plus ``benchmark_epochs_num``."""
        out: Dict[str, float] = {}
        n = 0
        for k in self.spec.benchmark_keys:
            vals = self._benchmark.get(k)
            if vals:
                out[f"train_avg_{k}"] = sum(vals) / len(vals)
                n = max(n, len(vals))
        out["benchmark_epochs_num"] = n
        return out

    def dllogger_data(self, scope: str, results: Mapping[str, float]) -> Dict[str, float]:
        """``{"<scope>_<key>": value}`` for the spec's dllogger keys present in ``results`` (reference order)."""
        return {f"{scope}_{k}": results[k] for k in self.spec.dllogger_keys if k in results}

    #: the scopes a checkpoint taken between two updates carries over: the epoch so far and the current log window
    RESUMABLE_SCOPES = ("train_avg", "train")

    def state_dict(self) -> Dict[str, Any]:
        """The benchmark history, and the sums of the open training scopes (their time so far included), so that
        a job resumed in the middle of an epoch logs the same epoch average and log windows as an uninterrupted
        run (:meth:`resume_scopes`)."""
        scopes = {}
        for name in self.RESUMABLE_SCOPES:
            scope = self._scopes.get(name)
            if scope is not None and scope.active:
                running = self._clock() - scope.timer_start if scope.timer_start is not None else 0.0
                scopes[name] = {"sums": dict(scope.sums), "counts": dict(scope.counts), "took": scope.took + running}
        return {"benchmark": {k: list(v) for k, v in self._benchmark.items()}, "scopes": scopes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._benchmark = {k: list(v) for k, v in state.get("benchmark", {}).items()}
        self._saved_scopes = {k: dict(v) for k, v in state.get("scopes", {}).items()}

    def resume_scopes(self, apply: bool = True) -> bool:
        """Add the sums and time of the scopes saved in the loaded checkpoint into the (just started) scopes of the
        same names, once: when a job continues an epoch part-way through (``apply``); otherwise they are dropped.
        True if the epoch's average (``train_avg``) was carried over."""
        saved, self._saved_scopes = self._saved_scopes, {}
        if not apply:
            return False
        for name, st in saved.items():
            scope = self._scopes.get(name)
            if scope is None:
                continue
            scope.sums.update({k: float(v) for k, v in st.get("sums", {}).items()})
            scope.counts.update({k: float(v) for k, v in st.get("counts", {}).items()})
            scope.took += float(st.get("took", 0.0))
        return "train_avg" in saved  # the epoch has an average to finish (not after an epoch end already logged)
