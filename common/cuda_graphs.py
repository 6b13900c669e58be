"""CUDA-graph replay of an inference forward ``model(source, lengths) -> (logits, out_lengths)``.

Batch-1 GPU inference of a Base model launches ~400 small kernels per utterance; on a fast GPU the launch overhead,
not the arithmetic, sets the latency. A CUDA graph records those launches once and replays them with one call.
A graph is tied to its input shapes, so ``GraphedInference`` keeps one graph per *signature* (batch size, padded
length, dtype, autocast state) and, with ``pad_to > 0``, rounds each input's length up to a multiple of ``pad_to``
samples (passing the true lengths, so the model's padding masks make the result that of the unpadded input): a
corpus of utterances of many lengths then needs a few dozen graphs instead of one per utterance.

The model must be free of host-device synchronisation in its forward (no ``.item()``, ``bool(tensor)``, data-
dependent shapes): tests/test_cuda_graphs.py checks that on CPU by running the forward under ``FakeTensorMode``,
which raises on exactly those operations, and checks graph replay against eager execution where a GPU exists.
Model-agnostic: nothing here knows about wav2vec 2.0.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F

LOG = logging.getLogger(__name__)

Signature = Tuple[int, int, torch.dtype, bool, Optional[torch.dtype]]


def padded_length(length: int, pad_to: int) -> int:
    """``length`` rounded up to a multiple of ``pad_to`` (``pad_to <= 0``: unchanged)."""
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    if pad_to <= 0:
        return int(length)
    return -(-int(length) // pad_to) * pad_to


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    source: torch.Tensor  # static input buffers, refilled before each replay
    lengths: Optional[torch.Tensor]
    logits: torch.Tensor  # static outputs, overwritten by each replay
    out_lengths: Optional[torch.Tensor]


class GraphedInference:
    """Callable like the model: ``(source B x L, lengths B or None) -> (logits, out_lengths)``, replayed from CUDA
    graphs captured on first use of each signature.

    Args:
        model: an eval-mode module on a CUDA device, without gradients (``prepare_model`` does that).
        pad_to: round input lengths up to a multiple of this many samples and pass the true lengths (0: capture
            the exact shapes; inputs without ``lengths`` stay without them).
        max_graphs: at most this many graphs are kept; further signatures run eagerly (logged once).
        warmup: eager forwards on a side stream before each capture (lazy initialisation, cuDNN autotuning).
    """

    def __init__(self, model: Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]], *, pad_to: int = 0,
                 max_graphs: int = 256, warmup: int = 3):
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else None
        if device is None or device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device (the model is on {device})")
        if not torch.cuda.is_available():
            raise ValueError("CUDA graphs need CUDA, which is not available")
        if any(p.requires_grad for p in params):
            raise ValueError("CUDA graphs replay an inference forward: switch the parameters' requires_grad off "
                             "(autocast would cache low-precision weight copies inside the graph's memory)")
        if pad_to < 0 or max_graphs < 1 or warmup < 1:
            raise ValueError(f"need pad_to >= 0, max_graphs >= 1, warmup >= 1 (got {pad_to}, {max_graphs}, {warmup})")
        self.model = model
        self.device = device
        self.pad_to = int(pad_to)
        self.max_graphs = int(max_graphs)
        self.warmup = int(warmup)
        self._graphs: Dict[Signature, _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle()  # one memory pool shared by all graphs (replays never overlap)
        self._overflow_logged = False
        self.capture_seconds = 0.0
        self.replays = 0
        self.eager_calls = 0

    # ------------------------------------------------------------------------------------------------ helpers

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def _signature(self, batch: int, length: int, dtype: torch.dtype, with_lengths: bool) -> Signature:
        enabled = torch.is_autocast_enabled("cuda")
        return (batch, length, dtype, with_lengths, torch.get_autocast_dtype("cuda") if enabled else None)

    def _pad(self, source: torch.Tensor, lengths: Optional[torch.Tensor]):
        b, n = source.shape
        if self.pad_to <= 0:
            return source, lengths
        target = padded_length(n, self.pad_to)
        if lengths is None:
            lengths = torch.full((b,), n, dtype=torch.long, device=source.device)
        if target > n:
            source = F.pad(source, (0, target - n))
        return source, lengths

    def _capture(self, sig: Signature, source: torch.Tensor, lengths: Optional[torch.Tensor]) -> _Graph:
        t0 = time.perf_counter()
        static_source = source.clone()
        static_lengths = lengths.clone() if lengths is not None else None
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.model(static_source, static_lengths)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: allocations by other threads (the data loader's pin-memory thread) cannot invalidate it
        with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits, out_lengths = self.model(static_source, static_lengths)
        torch.cuda.synchronize(self.device)
        self.capture_seconds += time.perf_counter() - t0
        entry = _Graph(graph, static_source, static_lengths, logits, out_lengths)
        self._graphs[sig] = entry
        return entry

    # ------------------------------------------------------------------------------------------------ API

    def prepare(self, shapes: Iterable[Tuple[int, int, bool]], dtype: torch.dtype = torch.float32) -> int:
        """Capture the graphs for ``(batch size, longest length, called with lengths)`` triples up front (outside
        any timed region); returns how many were captured. Call it in the autocast context that the forwards will
        run in. With ``pad_to > 0`` every call carries lengths, whatever the third element says."""
        n0 = self.num_graphs
        for b, n, with_lengths in shapes:
            length = padded_length(int(n), self.pad_to)
            lens = bool(with_lengths) or self.pad_to > 0
            sig = self._signature(int(b), length, dtype, lens)
            if sig in self._graphs:
                continue
            if self.num_graphs >= self.max_graphs:
                break
            source = torch.zeros(int(b), length, dtype=dtype, device=self.device)
            lengths = torch.full((int(b),), length, dtype=torch.long, device=self.device) if lens else None
            self._capture(sig, source, lengths)
        return self.num_graphs - n0

    def __call__(self, source: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        if source.device != self.device:
            raise ValueError(f"input on {source.device}, graphs on {self.device}")
        source, lengths = self._pad(source, lengths)
        b, n = source.shape
        sig = self._signature(b, n, source.dtype, lengths is not None)
        entry = self._graphs.get(sig)
        if entry is None:
            if self.num_graphs >= self.max_graphs:
                if not self._overflow_logged:
                    LOG.warning("CUDA graphs: %d graphs captured (max_graphs); further shapes run eagerly",
                                self.num_graphs)
                    self._overflow_logged = True
                self.eager_calls += 1
                with torch.no_grad():
                    return self.model(source, lengths)
            entry = self._capture(sig, source, lengths)
        entry.source.copy_(source)
        if entry.lengths is not None and lengths is not None:
            entry.lengths.copy_(lengths)
        entry.graph.replay()
        self.replays += 1
        # the static outputs are overwritten by the next replay: hand out copies
        out_lengths = entry.out_lengths.clone() if entry.out_lengths is not None else None
        return entry.logits.clone(), out_lengths

    def summary(self) -> str:
        return (f"CUDA graphs: {self.num_graphs} captured in {self.capture_seconds:.1f} s, {self.replays} replays, "
                f"{self.eager_calls} eager calls (pad_to {self.pad_to} samples)")

