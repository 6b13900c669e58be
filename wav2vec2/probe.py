"""Representation probes: how many directions a model's layers really use.

A pretraining run can look healthy by its own metrics (codebook perplexity well above the floor, contrastive
accuracy above chance) while its transformer has folded every frame onto a handful of directions. Fine-tuning from
such a model is worse than from random initialisation: on the synthetic corpus, a model whose top layer had an
effective rank of 2.5 (of 144 dimensions) never left the blank-only CTC plateau, while random initialisation (rank
~55) and a model of rank ~10 learnt (docs/RESULTS.md). These probes make that visible before a fine-tuning run is
spent on it.

* :func:`effective_rank` - exp(entropy) of the normalised singular-value energy of centred features (Roy & Vetterli,
  2007): d for isotropic features in d dimensions, 1 when all frames lie on one line.
* :func:`layer_effective_ranks` - that number for the normalised conv features and for every transformer layer's
  output, over a list of waveforms (padding-free: one utterance per forward).
"""

from __future__ import annotations

from typing import Dict, Iterable, List

import torch
from torch import nn

from .encoder import TransformerLayer

__all__ = ["effective_rank", "layer_effective_ranks"]


def effective_rank(features: torch.Tensor) -> float:
    """Effective rank of a ``N x D`` matrix of feature rows (centred over rows first).

    ``exp(H(p))`` with ``p_i = s_i^2 / sum_j s_j^2`` over the singular values ``s`` of the centred matrix. Returns
    0.0 for a matrix whose rows are all equal (no variance at all).
    """
    if features.dim() != 2:
        raise ValueError(f"expected an N x D matrix, got shape {tuple(features.shape)}")
    x = features.detach().to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    energy = torch.linalg.svdvals(x).pow(2)
    total = energy.sum()
    if total <= 0:
        return 0.0
    p = energy / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def layer_effective_ranks(model: nn.Module, waveforms: Iterable[torch.Tensor]) -> Dict[str, float]:
    """Effective rank of the feature-extractor output (after its LayerNorm) and of each transformer layer's output.

    ``model``: a :class:`~wav2vec2.model.Wav2Vec2Model` or a CTC model (its ``w2v_model`` is probed). Frames of all
    ``waveforms`` (1-D tensors) are pooled. Keys: ``features``, then ``layer_i`` for the i-th TransformerLayer module,
    in the order the layers run (for a Hourglass encoder, module order and execution order can differ).
    """
    w2v = getattr(model, "w2v_model", model)
    was_training = w2v.training
    w2v.eval()
    layers = [m for m in w2v.modules() if isinstance(m, TransformerLayer)]
    captured: Dict[str, List[torch.Tensor]] = {}
    order: List[str] = []

    def keep(name: str):
        def hook(_module, _inputs, output):
            if name not in captured:
                captured[name] = []
                order.append(name)
            captured[name].append(output.reshape(-1, output.shape[-1]).float())
        return hook

    # execution order is what matters for a Hourglass encoder; record names as hooks fire
    handles = [w2v.layer_norm.register_forward_hook(keep("features"))]
    handles += [layer.register_forward_hook(keep(f"layer_{i}")) for i, layer in enumerate(layers)]
    try:
        for wav in waveforms:
            w2v.extract_features(wav.reshape(1, -1), None, mask=False)
    finally:
        for h in handles:
            h.remove()
        w2v.train(was_training)
    return {name: effective_rank(torch.cat(captured[name])) for name in order}
