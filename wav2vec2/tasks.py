"""How a batch of the data loader feeds the wav2vec 2.0 models and criteria (the trainer's ``TrainingTask``).

Batches are the loader's dictionaries (``common/data``): ``source`` B x L, ``lengths`` B, ``sub_batch_sizes``, and in
fine-tuning ``target`` / ``target_lengths``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from common.metrics import WerStats, ctc_greedy_collapse

from .criterion import ContrastiveCriterion, CtcCriterion
from .flops import ctc_flops, pretraining_flops

__all__ = ["PretrainTask", "FinetuneTask"]


def _lengths_or_none(batch: Mapping[str, Any]) -> torch.Tensor | None:
    """None when every row is full length (cropped pretraining batches carry no padding). The loader's ``padded``
    flag answers without reading the lengths back from the device; other batches are inspected."""
    lengths = batch.get("lengths")
    if lengths is None:
        return None
    padded = batch.get("padded")
    if padded is None:
        padded = not bool((lengths == batch["source"].shape[1]).all())
    return lengths if padded else None


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model as .module


@dataclass
class PretrainTask:
    """Contrastive pretraining. Each step's log also carries its model FLOPs (``flops``, from the batch's shape and
    masked-frame count: forward and backward in training, forward in validation), from which the metrics derive
    achieved FLOP/s and MFU."""

    criterion: ContrastiveCriterion
    mode: str = "pretrain"

    def train_step(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator):
        source = batch["source"]
        out = model(
            source,
            _lengths_or_none(batch),
            sub_batch_sizes=batch.get("sub_batch_sizes"),
            generator=generator,
        )
        loss, size, log = self.criterion(out)
        log["flops"] = pretraining_flops(_unwrapped(model).cfg, source.shape[0], source.shape[1], out.sample_size,
                                         training=model.training).total
        return loss, size, log

    valid_step = train_step


@dataclass
class FinetuneTask:
    """CTC training; validation adds the reference's WER statistics (greedy decoding, letter post-processing). Each
    step's log carries its model FLOPs (``flops``), as in pretraining.

    ``frame_lengths`` is the model's samples-to-frames length map (``Wav2Vec2Model.output_lengths``). Given it and
    the batch's ``host_lengths`` (the loader's CPU copy, which the trainer keeps), the CTC loss gets frame lengths
    computed on the host: torch's ``ctc_loss`` copies its length tensors to the host, which for the model's
    device lengths would wait for the whole forward and stall the launch of the backward."""

    criterion: CtcCriterion
    symbols: Sequence[str]
    mode: str = "finetune"
    frame_lengths: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def _forward(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator):
        # an unpadded batch runs without lengths, as the reference runs it without a padding mask: one span-count
        # draw for the whole batch (REFERENCE 1.4.1) and the plain extractor; the CTC loss then uses every frame
        logits, out_lengths = model(batch["source"], _lengths_or_none(batch), generator=generator)
        host_lengths = batch.get("host_lengths")
        if out_lengths is not None and host_lengths is not None and self.frame_lengths is not None:
            out_lengths = self.frame_lengths(host_lengths)
        # targets stay on the CPU: the criterion strips their padding there and sends only the letters over
        return logits, out_lengths, self.criterion(logits, out_lengths, batch["target"], batch["target_lengths"])

    def _flops(self, model: nn.Module, batch: Mapping[str, Any], vocab_size: int) -> float:
        inner = _unwrapped(model)
        frozen = model.training and inner.num_updates < inner.cfg.freeze_finetune_updates
        b, samples = batch["source"].shape
        return ctc_flops(inner.cfg, b, samples, vocab_size, training=model.training, encoder_frozen=frozen).total

    def train_step(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator):
        logits, _, (loss, size, log) = self._forward(model, batch, generator)
        log["flops"] = self._flops(model, batch, logits.shape[-1])
        return loss, size, log

    def valid_step(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator):
        logits, out_lengths, (loss, size, log) = self._forward(model, batch, generator)
        stats = WerStats()
        pred = logits.argmax(-1).cpu()
        frames = out_lengths.cpu().tolist() if out_lengths is not None else [logits.shape[1]] * logits.shape[0]
        tgt = batch["target"].cpu()
        for i, n in enumerate(frames):
            ref = [int(t) for t in tgt[i, : int(batch["target_lengths"][i])]]
            stats.add(ctc_greedy_collapse(pred[i, :n].tolist(), self.criterion.blank_index), ref, self.symbols)
        log = dict(log, **stats.log_dict())
        log["flops"] = self._flops(model, batch, logits.shape[-1])
        return loss, size, log
