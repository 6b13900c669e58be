"""Precision policy, TF32 switches, autocast and the dynamic loss scaler (REFERENCE.md §1.16, §5.3).

Modes (reference flags in brackets):

* ``fp32`` - plain float32, TF32 disabled.
* ``tf32`` - float32 parameters, TF32 matmul/cuDNN enabled (the reference's default "TF32" runs on A100: the code
  sets nothing, the NGC container enables it).
* ``bf16`` (``--bf16``) / ``fp16`` (``--fp16``) - mixed precision. Deviation: the reference casts the whole model to
  fp16/bf16 ("O2") and keeps fp32 master weights in a flat buffer inside the optimizer (not checkpointed, Q8); we keep
  float32 parameters and run the forward under ``torch.autocast`` (the master weights are the parameters, so they are
  checkpointed exactly and resume is lossless).

Loss scaling (``DynamicLossScaler``, fairseq semantics, §5.3): init scale ``--fp16_init_scale`` 128, factor 2,
window ``int(2**14 / W / update_freq)``, tolerance 0, no threshold, ``--min_loss_scale`` 1e-4. The reference uses
the scaler for bf16 as well (its "disable for bf16" switch is hard-wired off; REFERENCE.md §9.1 item 6), which
``PrecisionPolicy.bf16_loss_scaling=True`` (the default) reproduces; the fp16 path always scales.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Mapping, Optional

import torch

__all__ = [
    "PrecisionPolicy",
    "set_tf32",
    "scale_window_for",
    "MinimumLossScaleError",
    "ScalerUpdate",
    "DynamicLossScaler",
    "NoOpLossScaler",
]

_LOG = logging.getLogger(__name__)

_MODES = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class PrecisionPolicy:
    """How a run computes.

    Attributes:
        mode: "fp32" | "tf32" | "bf16" (``--bf16``) | "fp16" (``--fp16``).
        device: "cpu" | "cuda". fp16 on CPU is rejected (most CPU kernels lack fp16; use bf16 or fp32).
        bf16_loss_scaling: use the dynamic loss scaler in bf16 as the reference does (default True).
    """

    mode: str = "tf32"
    device: str = "cuda"
    bf16_loss_scaling: bool = True

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"precision mode must be one of {_MODES}, got {self.mode!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.mode == "fp16" and self.device == "cpu":
            raise ValueError("fp16 mixed precision is not supported on CPU; use --bf16 or fp32")

    @classmethod
    def from_flags(cls, fp16: bool = False, bf16: bool = False, tf32: bool = True, cpu: bool = False,
                   **kw: Any) -> "PrecisionPolicy":
        """Map the reference flags (``--fp16``, ``--bf16`` mutually exclusive; ``--cpu``) to a policy."""
        if fp16 and bf16:
            raise ValueError("--fp16 and --bf16 are mutually exclusive")
        device = "cpu" if cpu else "cuda"
        mode = "fp16" if fp16 else "bf16" if bf16 else ("tf32" if tf32 and device == "cuda" else "fp32")
        return cls(mode=mode, device=device, **kw)

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mode)

    @property
    def mixed(self) -> bool:
        return self.mode in ("bf16", "fp16")

    @property
    def uses_loss_scaling(self) -> bool:
        return self.mode == "fp16" or (self.mode == "bf16" and self.bf16_loss_scaling)

    @property
    def allow_tf32(self) -> bool:
        """TF32 for fp32 matmuls/convolutions: on for tf32 and the mixed modes (their fp32 islands), off for fp32."""
        return self.mode != "fp32"

    def autocast(self, enabled: bool = True) -> ContextManager:
        """Autocast context for the forward pass (and loss); a null context in fp32/tf32 or when disabled."""
        if not (enabled and self.mixed):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=self.autocast_dtype)

    def fp32_region(self) -> ContextManager:
        """Context that disables autocast (for numerically fragile parts: norms, softmax, CTC, cosine sim)."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, enabled=False)

    def apply_tf32(self) -> Dict[str, bool]:
        """Set the TF32 switches for this policy; returns the previous values (for :func:`set_tf32`)."""
        return set_tf32(self.allow_tf32)

    def make_loss_scaler(self, world_size: int = 1, update_freq: int = 1, init_scale: float = 128.0,
                         min_loss_scale: float = 1e-4) -> "DynamicLossScaler | NoOpLossScaler":
        """The reference's scaler (``--fp16_init_scale``, ``--min_loss_scale``) or a no-op one."""
        if not self.uses_loss_scaling:
            return NoOpLossScaler()
        return DynamicLossScaler(init_scale=init_scale, scale_window=scale_window_for(world_size, update_freq),
                                 min_loss_scale=min_loss_scale)


def set_tf32(enabled: bool, matmul: Optional[bool] = None, cudnn: Optional[bool] = None) -> Dict[str, bool]:
    """Switch TF32 for CUDA matmuls and cuDNN convolutions; returns the previous values {"matmul", "cudnn"}.

    These are process-wide torch switches: call once at start-up. No effect on CPU computations.
    """
    prev = {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}
    torch.backends.cuda.matmul.allow_tf32 = enabled if matmul is None else matmul
    torch.backends.cudnn.allow_tf32 = enabled if cudnn is None else cudnn
    return prev


def scale_window_for(world_size: int, update_freq: int) -> int:
    """The reference's loss-scale growth window ``int(2**14 / W / update_freq)`` (at least 1).

    W=8,U=1 -> 2048; W=1,U=8 -> 2048; W=4,U=2 -> 2048; W=1,U=64 -> 256.
    """
    if world_size < 1 or update_freq < 1:
        raise ValueError("world_size and update_freq must be >= 1")
    return max(1, int(2 ** 14 / world_size / update_freq))


class MinimumLossScaleError(FloatingPointError):
    """The loss scale would fall to ``--min_loss_scale`` or below: training cannot continue."""

    def __init__(self, update: Optional[int], scale: float, min_loss_scale: float,
                 current_scale: Optional[float] = None) -> None:
        where = f" at update {update}" if update is not None else ""
        kept = f" (kept at {current_scale:g})" if current_scale is not None else ""
        super().__init__(
            f"Minimum loss scale reached{where}: after another gradient overflow the loss scale would drop to "
            f"{scale:g} <= --min_loss_scale {min_loss_scale:g}{kept}. The gradients keep overflowing (inf/NaN), "
            f"the loss is probably diverging. Try a lower --lr, --clip_norm, the --fp32_* options, bf16 instead of "
            f"fp16, or resume from an earlier checkpoint."
        )
        self.update = update
        self.scale = scale
        self.min_loss_scale = min_loss_scale
        self.current_scale = current_scale


@dataclass(frozen=True)
class ScalerUpdate:
    """Outcome of :meth:`DynamicLossScaler.update` for one update."""

    skipped: bool
    loss_scale: float
    reason: Optional[str] = None
    update: Optional[int] = None


class DynamicLossScaler:
    """Dynamic loss scaling with fairseq semantics (REFERENCE.md §5.3).

    Per update, after backward (of ``loss * loss_scale``), normalisation and clipping, call
    ``update(grad_norm, update=k)``:

    * non-finite ``grad_norm`` -> overflow: the scale is divided by ``scale_factor`` (when the overflow fraction since
      the last rescale >= ``tolerance``; tolerance 0 -> always), the returned :class:`ScalerUpdate` has
      ``skipped=True`` and the reason is logged with the update number. If the new scale is <= ``min_loss_scale``,
      the previous scale is kept and :class:`MinimumLossScaleError` is raised (naming update and scale).
    * finite -> the step must be applied; when ``(iter - last_overflow_iter)`` is a multiple of ``scale_window`` the
      scale is multiplied by ``scale_factor`` (first doubling after ``scale_window`` clean updates).

    No hysteresis: the reference has none (one overflow halves the scale).
    """

    def __init__(self, init_scale: float = 128.0, scale_factor: float = 2.0, scale_window: int = 2 ** 14,
                 tolerance: float = 0.0, threshold: Optional[float] = None, min_loss_scale: float = 1e-4) -> None:
        if init_scale <= 0 or scale_factor <= 1 or scale_window < 1:
            raise ValueError("need init_scale > 0, scale_factor > 1, scale_window >= 1")
        self.loss_scale = float(init_scale)
        self.scale_factor = float(scale_factor)
        self.scale_window = int(scale_window)
        self.tolerance = float(tolerance)
        self.threshold = threshold
        self.min_loss_scale = float(min_loss_scale)
        self._iter = 0
        self._last_overflow_iter = -1
        self._last_rescale_iter = -1
        self._overflows_since_rescale = 0

    enabled = True

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * loss_scale`` (call ``.backward()`` on the result)."""
        return loss * self.loss_scale

    def update(self, grad_norm: float, update: Optional[int] = None) -> ScalerUpdate:
        """Check ``grad_norm`` (of the unscaled gradients) and adapt the scale; see the class docstring."""
        if math.isfinite(grad_norm):
            if (self._iter - self._last_overflow_iter) % self.scale_window == 0:
                self.loss_scale *= self.scale_factor
                self._last_rescale_iter = self._iter
            self._iter += 1
            return ScalerUpdate(skipped=False, loss_scale=self.loss_scale, update=update)

        prev_scale = self.loss_scale
        iters_since_rescale = self._iter - self._last_rescale_iter
        self._last_overflow_iter = self._iter
        self._overflows_since_rescale += 1
        # (max: after a MinimumLossScaleError the caller may try again with last_rescale_iter == iter; fairseq
        # divides by zero there)
        if self._overflows_since_rescale / float(max(1, iters_since_rescale)) >= self.tolerance:
            self.loss_scale /= self.scale_factor
            if self.threshold is not None:
                self.loss_scale = max(self.loss_scale, self.threshold)
            self._last_rescale_iter = self._iter
            self._overflows_since_rescale = 0
        if self.loss_scale <= self.min_loss_scale:
            attempted = self.loss_scale
            self.loss_scale = prev_scale
            raise MinimumLossScaleError(update, attempted, self.min_loss_scale, prev_scale)
        self._iter += 1
        reason = (f"Grad overflow (grad norm {grad_norm}) at update {update}, ignoring grad; "
                  f"setting loss scale to: {self.loss_scale:g}")
        _LOG.warning(reason)
        return ScalerUpdate(skipped=True, loss_scale=self.loss_scale, reason=reason, update=update)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "loss_scale": self.loss_scale,
            "scale_factor": self.scale_factor,
            "scale_window": self.scale_window,
            "tolerance": self.tolerance,
            "threshold": self.threshold,
            "min_loss_scale": self.min_loss_scale,
            "iter": self._iter,
            "last_overflow_iter": self._last_overflow_iter,
            "last_rescale_iter": self._last_rescale_iter,
            "overflows_since_rescale": self._overflows_since_rescale,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore; accepts a reference optimizer state that only carries ``loss_scale`` (counters then restart,
        as in the reference). The window of the running job is kept (it depends on W and update_freq)."""
        self.loss_scale = float(state["loss_scale"])
        self._iter = int(state.get("iter", 0))
        self._last_overflow_iter = int(state.get("last_overflow_iter", -1))
        self._last_rescale_iter = int(state.get("last_rescale_iter", -1))
        self._overflows_since_rescale = int(state.get("overflows_since_rescale", 0))


class NoOpLossScaler:
    """Stands in for the scaler in fp32/tf32 (and bf16 without scaling): scale 1; a non-finite gradient norm still
    skips the update (with a logged reason) instead of corrupting the weights."""

    enabled = False
    loss_scale = 1.0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def update(self, grad_norm: float, update: Optional[int] = None) -> ScalerUpdate:
        if math.isfinite(grad_norm):
            return ScalerUpdate(skipped=False, loss_scale=1.0, update=update)
        reason = f"Non-finite gradient norm ({grad_norm}) at update {update}, skipping the update"
        _LOG.warning(reason)
        return ScalerUpdate(skipped=True, loss_scale=1.0, reason=reason, update=update)

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None
