"""Optimizer construction, gradient normalisation and clipping (REFERENCE.md §5.3, §5.4).

Reference facts this module follows:

* ``--optimizer adam`` only; betas ``--adam_betas`` (0.9, 0.98); eps ``--adam_eps`` 1e-6 (pre-training; the
  fine-tuning scripts pass 1e-8); ``--weight_decay`` 0.01 (fine-tuning scripts 0.0), decoupled (AdamW: the apex
  FusedAdam V2 / ``torch.optim.AdamW`` update ``p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)``).
* ONE parameter group with every trainable parameter: weight decay applies to biases, norm weights, ``mask_emb``,
  codebook ``vars`` and pos-conv ``weight_g`` alike (no "no-decay" groups).
* The gradient the optimizer sees is ``g = (sum over ranks and micro-batches of grad of the SUMMED loss) / S`` where
  S is the all-reduced ``sample_size`` (masked frames in pre-training, utterances in fine-tuning). The reference gets
  there from DDP-averaged gradients times ``W / S``; our trainer (``common/trainer.py``) SUMS the gradients over ranks
  (``common.distributed.all_reduce_gradients``) and then calls ``scale_gradients(params, 1 / (S * loss_scale))``,
  which also undoes the loss scale, so 1 rank x U micro-batches and U ranks x 1 give the same ``g``.
* ``--clip_norm`` (0 = off; 25 in pre-training scripts) clips by the global L2 norm of the normalised gradients.
  Deviation (Q3): the reference clips only in fp16/bf16 runs; :func:`clip_grad_norm` is meant to be called in every
  precision mode, and gradients are normalised by S in every precision (the modern apex kernel ignored it in FP32).

Implementation choice: torch ``AdamW`` with ``fused=True`` when every parameter is on one device type that has a
fused kernel (CUDA, CPU; on the 2-core CPU it steps the Base model in ~80 ms instead of ~285 ms with
``foreach=True``; the two agree to ~1e-8), ``foreach=True`` otherwise; NVIDIA apex ``FusedAdam`` (AdamW mode) only on request or when ``implementation="auto"`` prefers it on
CUDA and apex is genuinely NVIDIA's (``apex.optimizers.FusedAdam`` exists).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "OptimizerConfig",
    "PRETRAIN_ADAM_EPS",
    "FINETUNE_ADAM_EPS",
    "AdamW",
    "nvidia_apex_fused_adam",
    "build_optimizer",
    "clear_gradients",
    "scale_gradients",
    "grad_norm",
    "clip_grad_norm",
    "adam_state_from_reference",
    "adapt_optimizer_state",
]

PRETRAIN_ADAM_EPS = 1e-6
FINETUNE_ADAM_EPS = 1e-8


@dataclass(frozen=True)
class OptimizerConfig:
    """Adam settings; names follow the reference flags (§8.1).

    Attributes:
        lr: initial lr (the scheduler overwrites it; the reference sets policy(1) right after construction).
        adam_betas: ``--adam_betas``, default (0.9, 0.98).
        adam_eps: ``--adam_eps``, default 1e-6 (fine-tuning scripts: 1e-8).
        weight_decay: ``--weight_decay``, default 0.01 (fine-tuning scripts: 0.0), decoupled, on every parameter.
        clip_norm: ``--clip_norm``, default 0.0 (off); pre-training scripts 25.
        implementation: "auto" | "torch" | "apex".  "auto": apex FusedAdam if genuine NVIDIA apex is importable and
            the parameters are on CUDA, else torch AdamW (fused on CUDA and CPU, foreach elsewhere).
    """

    lr: float = 5e-4
    adam_betas: Tuple[float, float] = (0.9, 0.98)
    adam_eps: float = PRETRAIN_ADAM_EPS
    weight_decay: float = 0.01
    clip_norm: float = 0.0
    implementation: str = "auto"

    def __post_init__(self) -> None:
        if self.implementation not in ("auto", "torch", "apex"):
            raise ValueError(f"implementation must be auto|torch|apex, got {self.implementation!r}")
        if len(self.adam_betas) != 2:
            raise ValueError("--adam_betas needs two values")


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` with ONE step count for all parameters, as in the reference's optimizers (apex FusedAdam
    V2 keeps the step count in the param group; the mixed-precision flat Adam steps every parameter).

    A parameter without a gradient in an update (a layer that LayerDrop dropped, the encoder during
    ``--freeze_finetune_updates``) is not moved and its moments are kept, as apex V2 skips it, but its step count
    advances with the others'; one whose first gradient comes late starts with zero moments at the group's count (no
    state is kept for a parameter that never has a gradient, e.g. a frozen feature extractor). So when its gradients
    (re)start, Adam's bias correction is the group's, ``1 - beta**t`` with the run's t, not a fresh start at t = 1:
    after a 10,000-update freeze the encoder's first update is ``0.1 g / sqrt(0.02 g^2) = 0.71`` lr-units per
    coordinate, as the reference's, not 1. (torch's own AdamW counts steps per parameter and restarts them.)
    """

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:  # a parameter's first gradient: zero moments at the group's step count
            counted = next((self.state[p]["step"] for p in group["params"] if "step" in self.state.get(p, ())), None)
            if counted is None:
                continue
            for p in group["params"]:
                if p.grad is not None and "step" not in self.state.get(p, ()):
                    state = self.state[p]
                    state["step"] = counted.clone()
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group.get("amsgrad"):
                        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        loss = super().step(closure)
        for group in self.param_groups:  # a parameter without a gradient this time: its count advances all the same
            behind = [self.state[p]["step"] for p in group["params"]
                      if p.grad is None and "step" in self.state.get(p, ())]
            if behind:
                torch._foreach_add_(behind, 1.0)
        return loss

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """torch's load, then every parameter's step count set to the largest: a state saved by torch's own AdamW
        (steps counted per parameter) continues with one count, as this class keeps it."""
        super().load_state_dict(state_dict)
        steps = [st["step"] for st in self.state.values() if "step" in st]
        if steps:
            top = max(float(t) for t in steps)
            for t in steps:
                if isinstance(t, torch.Tensor):
                    t.fill_(top)


def nvidia_apex_fused_adam():
    """Return NVIDIA apex's ``FusedAdam`` class, or None when apex is absent or is another package named apex."""
    try:
        optimizers = importlib.import_module("apex.optimizers")
    except Exception:  # ImportError, or a broken/foreign apex raising on import
        return None
    cls = getattr(optimizers, "FusedAdam", None)
    return cls if isinstance(cls, type) else None


def _trainable(params: Iterable) -> List[torch.nn.Parameter]:
    out = []
    for p in params:
        if isinstance(p, dict):
            raise TypeError("pass parameters, not param groups: the reference uses one group for all parameters")
        if p.requires_grad:
            out.append(p)
    if not out:
        raise ValueError("no trainable parameters")
    return out


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay over ONE param group of all trainable ``params`` (reference §5.4).

    The chosen implementation is recorded as ``optimizer.implementation_name`` (e.g. "torch.AdamW(fused)").
    """
    plist = _trainable(params)
    on_cuda = all(p.is_cuda for p in plist)
    fused_device = on_cuda or all(p.device.type == "cpu" for p in plist)
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    apex_cls = nvidia_apex_fused_adam() if cfg.implementation in ("auto", "apex") else None
    if cfg.implementation == "apex" and (apex_cls is None or not on_cuda):
        raise RuntimeError("implementation='apex' needs NVIDIA apex (apex.optimizers.FusedAdam) and CUDA parameters")
    if apex_cls is not None and on_cuda:
        opt = apex_cls(plist, adam_w_mode=True, **kwargs)
        name = "apex.FusedAdam"
    elif fused_device and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in plist):
        opt = AdamW(plist, fused=True, **kwargs)
        name = "torch.AdamW(fused)"
    else:
        opt = AdamW(plist, foreach=True, **kwargs)
        name = "torch.AdamW(foreach)"
    opt.implementation_name = name  # type: ignore[attr-defined]
    return opt


def clear_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Every gradient to None. Not ``optimizer.zero_grad(set_to_none=True)``: NVIDIA apex's FusedAdam (the
    optimizer on CUDA when apex is installed) has a ``zero_grad()`` without that argument."""
    for p in params:
        p.grad = None


def _grads(params: Iterable[torch.nn.Parameter]) -> List[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def scale_gradients(params: Iterable[torch.nn.Parameter], factor: float) -> None:
    """Multiply every existing gradient by ``factor`` in place."""
    grads = _grads(params)
    if not grads or factor == 1.0:
        return
    if hasattr(torch, "_foreach_mul_"):
        torch._foreach_mul_(grads, factor)
    else:  # pragma: no cover
        for g in grads:
            g.mul_(factor)


def grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """Global L2 norm of all gradients (computed in float32; inf/NaN propagate)."""
    grads = _grads(params)
    if not grads:
        return 0.0
    device = grads[0].device
    if all(g.device == device for g in grads):
        try:
            norms = list(torch._foreach_norm([g.detach() for g in grads], 2, dtype=torch.float32))
        except (AttributeError, TypeError, RuntimeError):  # older torch without the dtype argument
            norms = [torch.linalg.vector_norm(g.detach(), 2, dtype=torch.float32) for g in grads]
    else:
        norms = [torch.linalg.vector_norm(g.detach(), 2, dtype=torch.float32).to(device) for g in grads]
    return float(torch.linalg.vector_norm(torch.stack(norms), 2))


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Clip gradients to global L2 norm ``max_norm`` (``--clip_norm``; 0 = off) and return the norm before clipping.

    Applied in every precision mode (Q3 fixed). A non-finite norm is returned unchanged and no clipping is done: the
    caller (loss scaler / health check) decides to skip the update. Gradients are scaled by ``max_norm / norm`` only
    when ``norm > max_norm > 0`` (fairseq semantics: no epsilon).
    """
    params = list(params)
    total = grad_norm(params)
    if max_norm > 0 and math.isfinite(total) and total > max_norm:
        scale_gradients(params, max_norm / total)
    return total


def _group_with_saved_hyperparameters(optimizer: torch.optim.Optimizer,
                                      saved_group: Mapping[str, Any]) -> Dict[str, Any]:
    """``optimizer``'s own param group (its implementation's switches and keys) with the Adam hyper-parameters
    (lr, betas, eps, weight_decay) of a saved group."""
    group = dict(optimizer.state_dict()["param_groups"][0])
    for key in ("lr", "betas", "eps", "weight_decay"):
        if key in saved_group:
            group[key] = tuple(saved_group[key]) if key == "betas" else saved_group[key]
    return group


def adapt_optimizer_state(state: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, Any], str]:
    """A training checkpoint's ``optimizer`` entry in ``optimizer``'s own layout, and what it was converted to ("" when
    it already was). torch's AdamW keeps a step count per parameter; NVIDIA apex's FusedAdam keeps one in the param
    group (and other group keys): a run resumed after apex was installed or removed (a rebuilt container) would fail
    on the other's state. Moments are kept; the step count is the group's (the largest per-parameter one);
    hyper-parameters come from the saved group, the implementation's own switches from ``optimizer``."""
    entries = dict(state.get("state", {}))
    saved_group = (state.get("param_groups") or [{}])[0]
    saved_per_parameter = any("step" in e for e in entries.values()) or ("step" not in saved_group)
    target_per_parameter = isinstance(optimizer, torch.optim.AdamW)
    group = _group_with_saved_hyperparameters(optimizer, saved_group)
    if not entries:  # saved before the first step: nothing to convert, but the group keys must be the optimizer's
        return {"state": {}, "param_groups": [group]}, ""
    if saved_per_parameter == target_per_parameter:
        return dict(state), ""
    moments = {i: {k: e[k] for k in ("exp_avg", "exp_avg_sq")} for i, e in entries.items()}
    if target_per_parameter:
        step = float(saved_group.get("step", 0))
        for m in moments.values():
            m["step"] = torch.tensor(step, dtype=torch.float32)
        return {"state": moments, "param_groups": [group]}, "torch AdamW's layout"
    group["step"] = int(max(float(e["step"]) for e in entries.values() if "step" in e))
    return {"state": moments, "param_groups": [group]}, "apex FusedAdam's layout"


def adam_state_from_reference(ref_state: Mapping[str, Any], params: Iterable[torch.nn.Parameter],
                              optimizer: torch.optim.Optimizer,
                              layout: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, Any]:
    """Convert a reference checkpoint's ``optimizer`` entry (REFERENCE.md §2.2) into ``optimizer.state_dict()``
    form for our one-group AdamW over ``params`` (the trainable parameters in ``model.parameters()`` order).

    ``layout`` lists the reference's parameters in its order, each as the indices (into ``params``) of the
    parameters of ours that it is made of, concatenated (a packed attention projection is three of ours); default:
    the same parameters in the same order. Handles the mixed-precision layout (the inner Adam's state for ONE flat
    fp32 tensor: ``step``, ``exp_avg``, ``exp_avg_sq``, split back per parameter) and the FP32 apex FusedAdam layout
    (per-parameter moments keyed by the parameter's index, present only for parameters that had a gradient; ``step``
    in the param group); parameters without reference moments get no state (Adam starts them afresh). Hyper-parameters (lr, betas, eps, weight_decay) are taken
    from the reference's group; the ``loss_scale`` entry is ignored here (give it to the loss scaler).
    """
    plist = [p for p in params if p.requires_grad]
    layout = [list(g) for g in layout] if layout is not None else [[i] for i in range(len(plist))]
    placed = sorted(i for g in layout for i in g)
    if placed != list(range(len(plist))):
        missing = sorted(set(range(len(plist))) - set(placed))
        raise ValueError(f"the reference parameter layout covers {len(placed)} parameters, this model has "
                         f"{len(plist)} (not covered: {missing[:8]})")
    ref_group = (ref_state.get("param_groups") or [{}])[0]
    ref_items = list(ref_state.get("state", {}).items())
    total = sum(p.numel() for p in plist)

    def step_of(entry: Mapping[str, Any]) -> float:
        st = entry.get("step", ref_group.get("step", 0))
        return float(st.item() if hasattr(st, "item") else st)

    def moments(entry: Mapping[str, Any], group: Sequence[int]) -> Dict[int, Dict[str, Any]]:
        """One reference parameter's moments split over the parameters of ours that it is made of."""
        out, offset = {}, 0
        for i in group:
            p = plist[i]
            n = p.numel()
            out[i] = {"step": torch.tensor(step_of(entry), dtype=torch.float32)}
            for name in ("exp_avg", "exp_avg_sq"):
                flat = entry[name].reshape(-1)
                out[i][name] = flat[offset:offset + n].view_as(p).to(p.device, torch.float32).clone()
            offset += n
        return out

    new_state: Dict[int, Dict[str, Any]] = {}
    if len(ref_items) == 1 and ref_items[0][1]["exp_avg"].numel() == total:  # mixed precision: one flat tensor
        new_state = moments(ref_items[0][1], [i for group in layout for i in group])
    else:
        # per parameter, keyed by the parameter's index in the reference's order; apex creates state only for
        # parameters that got a gradient (none for a frozen extractor), so some indices may be missing
        for key, entry in ref_items:
            j = int(key)
            if not 0 <= j < len(layout):
                raise ValueError(f"reference optimizer state has an entry for parameter {j}, the model "
                                 f"{len(layout)} parameters")
            size = sum(plist[i].numel() for i in layout[j])
            if entry["exp_avg"].numel() != size:
                raise ValueError(f"reference parameter {j}: moment shape {tuple(entry['exp_avg'].shape)} for "
                                 f"{[tuple(plist[i].shape) for i in layout[j]]}")
            new_state.update(moments(entry, layout[j]))
    new_state = dict(sorted(new_state.items()))
    return {"state": new_state, "param_groups": [_group_with_saved_hyperparameters(optimizer, ref_group)]}
