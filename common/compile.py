"""``torch.compile`` for training: compile the model's repeated blocks in place.

Compiling each repeated block (the transformer layers) rather than the whole model keeps what inductor gains (the
pointwise work around each matmul fused: bias, GELU, dropout, residual, LayerNorm) and leaves out what it handles
badly: the feature extractor's chunk loops, whose trip counts depend on the input length and would recompile for
every new length, and the data-dependent masking and sampling. ``dynamic=True`` makes the sequence length symbolic,
so the variable-length batches of the bucketed loader reuse one graph; identical blocks share it. ``Module.compile``
works in place, so state-dict keys, checkpoints and DDP are unchanged.

What still compiles a new graph (measured with ``torch._dynamo.utils.counters``; each costs seconds to a minute on
a CPU, once per process): each new grad mode (training, validation under ``no_grad``, the fine-tuning updates with
the encoder frozen), padded batches vs unpadded ones (an attention mask or none) and a first batch of one
utterance (size-1 dimensions are specialised). Never a new length, LayerDrop, masking, BF16 autocast that stays on,
``--update_freq`` or EMA. :func:`compile_blocks` says so when it happens (:func:`report_compiles`), and
:func:`check_toolchain` turns a missing C++ compiler (CPU inductor needs one) into one clear error before training
instead of an inductor traceback at the first update.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Tuple, Type

import torch
from torch import nn

__all__ = ["CompileUnavailable", "check_toolchain", "compile_blocks", "report_compiles"]


class CompileUnavailable(RuntimeError):
    """``torch.compile`` cannot run on this machine (e.g. no C++ compiler for CPU inductor)."""


def check_toolchain(device: torch.device | str) -> None:
    """Raise :class:`CompileUnavailable` with a one-line message when inductor lacks what it needs on ``device``: a
    C++ compiler on the CPU (``$CXX`` or ``g++``), Triton on CUDA. Without this check the first compiled forward
    fails with an inductor traceback of ~100 lines, after the data and model set-up."""
    kind = torch.device(device).type
    if kind == "cpu":
        try:
            from torch._inductor import cpp_builder

            find_compiler = cpp_builder.get_cpp_compiler
        except (ImportError, AttributeError):  # pragma: no cover - private helper moved: let inductor decide
            return
        try:
            find_compiler()
        except Exception as exc:  # InvalidCxxCompiler: say what was tried
            raise CompileUnavailable(
                f"--torch_compile: torch.compile's CPU backend (inductor) needs a C++ compiler and found none "
                f"({exc}); install one (e.g. g++) or set CXX to it, or run without --torch_compile") from None
    elif kind == "cuda":
        try:
            from torch.utils._triton import has_triton, has_triton_package

            installed = has_triton_package()
            ok = installed and has_triton()
        except Exception:  # pragma: no cover - private helper moved: let inductor decide
            installed = ok = True
        if not installed:
            raise CompileUnavailable("--torch_compile: torch.compile's GPU backend (inductor) needs Triton, which is "
                                     "not installed (pip install triton), or run without --torch_compile")
        if not ok:  # installed, but Triton needs compute capability 7.0 or later (not a P100, K80, GTX 10xx)
            try:
                major, minor = torch.cuda.get_device_capability(device)
                gpu = f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
            except Exception:  # pragma: no cover
                gpu = "this GPU"
            raise CompileUnavailable(f"--torch_compile: torch.compile's GPU backend (inductor) uses Triton, which "
                                     f"does not support {gpu} (7.0 or later needed); run without --torch_compile")


def _print_rank0(message: str) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    print(message, file=sys.stderr, flush=True)


class _CompileReporter:
    """Dynamo start/end callbacks that say when a graph compiles and how long it took: the first update of each new
    mode is otherwise silent for seconds to minutes, and a recompilation mid-run shows as a slow update only."""

    def __init__(self):
        self.log: Callable[[str], None] = _print_rank0
        self.count = 0
        self.started: Optional[float] = None
        self.what = ""

    def start(self, args) -> None:
        self.count += 1
        self.started = time.perf_counter()
        trigger = getattr(getattr(args, "callback_trigger", None), "name", "DYNAMO")
        self.what = "backward" if trigger == "LAZY_BACKWARD" else "forward"
        hint = "; TORCH_LOGS=recompiles says why" if self.count > 1 and self.what == "forward" else ""
        self.log(f"torch.compile: compiling graph {self.count} ({self.what}: a new mode, padding or batch size "
                 f"of one; seconds to minutes on a CPU){hint}...")

    def end(self, args) -> None:  # noqa: ARG002
        if self.started is not None:
            self.log(f"torch.compile: graph {self.count} ({self.what}) compiled in "
                     f"{time.perf_counter() - self.started:.1f} s")
            self.started = None


_REPORTER = _CompileReporter()


def report_compiles(log: Optional[Callable[[str], None]] = None) -> None:
    """Print a line when dynamo starts and ends compiling a graph (to ``log``; default stderr on rank 0). Idempotent;
    registers again after ``torch._dynamo.reset()`` (which clears the callbacks)."""
    try:
        from torch._dynamo.callback import callback_handler
    except ImportError:  # pragma: no cover - private module moved: compile silently rather than not at all
        return
    _REPORTER.log = log or _print_rank0
    if _REPORTER.start not in callback_handler.start_callbacks:
        callback_handler.register_start_callback(_REPORTER.start)
    if _REPORTER.end not in callback_handler.end_callbacks:
        callback_handler.register_end_callback(_REPORTER.end)


def compile_blocks(model: nn.Module, block_types: Tuple[Type[nn.Module], ...], dynamic: bool = True,
                   check: bool = True, log: Optional[Callable[[str], None]] = None) -> int:
    """``Module.compile(dynamic=dynamic)`` every submodule of ``model`` that is an instance of ``block_types`` (not
    nested inside another such block); returns how many were compiled.

    ``check``: :func:`check_toolchain` for the device of ``model``'s parameters first (call it after ``.to(device)``).
    Each compilation is then reported (:func:`report_compiles`, to ``log``; default stderr on rank 0)."""
    if check:
        param = next(model.parameters(), None)
        check_toolchain(param.device if param is not None else "cpu")
    count = 0
    skip: set = set()
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in skip):
            continue
        if isinstance(module, block_types):
            module.compile(dynamic=dynamic)
            skip.add(name)
            count += 1
    if count:
        report_compiles(log)
    return count
