"""Training criteria: the wav2vec 2.0 contrastive objective and CTC.

Both return SUM losses plus a ``sample_size``; the trainer divides gradients by the sample size summed over
micro-batches and ranks (REFERENCE.md §3.1, §3.2, §5.3).

Pretraining (``--infonce``, ``loss_weights`` = (0.1, 10.0) Base, (0.1, 0.0) Large)::

    S    = number of masked frames (rows of the logits)
    loss = sum_rows CE(logits_row, 0)
         + w_div * sum_s S_s * (G*V - prob_perplexity_s) / (G*V)      (per concatenated sub-batch s)
         + w_pen * S * features_pen

With one sub-batch this is the reference's formula. With several, each sub-batch's diversity term uses its own
perplexity (the reference uses the last sub-batch's for all, REFERENCE-QUIRKS Q6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .model import PretrainingOutput

__all__ = ["ContrastiveCriterion", "CtcCriterion", "contrastive_accuracy"]


def _correct_count(logits: torch.Tensor) -> torch.Tensor:
    """The reference's count of correct rows as a 0-d tensor on the logits' device (no host synchronisation): rows
    whose argmax is the positive (column 0), minus rows where argmax and argmin are both 0 (all candidates tie)."""
    if logits.numel() == 0:
        return torch.zeros((), dtype=torch.long, device=logits.device)
    with torch.no_grad():
        is_max = logits.argmax(-1) == 0
        is_min = logits.argmin(-1) == 0
        return is_max.sum() - (is_max & is_min).sum()


def contrastive_accuracy(logits: torch.Tensor) -> tuple[int, int]:
    """(correct, count) as the reference counts them (see ``_correct_count``)."""
    return int(_correct_count(logits)), int(logits.shape[0])


@dataclass
class ContrastiveCriterion:
    """``loss_weights``: weights of (diversity, feature penalty); a single value is replicated (reference rule).
    ``log_keys``: the quantizer statistics copied into the log (``--log_keys``), of ``prob_perplexity``,
    ``code_perplexity`` and ``temp``; other names are ignored, as the reference ignores keys the model does not
    output."""

    loss_weights: Sequence[float] = (0.1, 10.0)
    log_keys: Sequence[str] = ("prob_perplexity", "code_perplexity", "temp")

    def __post_init__(self) -> None:
        w = list(self.loss_weights)
        if len(w) == 1:
            w = w * 2
        if len(w) != 2:
            raise ValueError(f"loss_weights takes 1 or 2 values (diversity, feature penalty), got {w}")
        self.loss_weights = tuple(float(v) for v in w)

    def __call__(self, out: PretrainingOutput) -> tuple[torch.Tensor, int, dict]:
        logits = out.logits.float()
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        contrastive = F.cross_entropy(logits, target, reduction="sum")
        sample_size = int(logits.shape[0])
        loss = contrastive
        # log values stay 0-d device tensors: the metrics read them all at once, with one synchronisation per update
        log: dict = {"loss_0": contrastive.detach()}
        w_div, w_pen = self.loss_weights
        k = 1
        if out.prob_perplexity is not None and out.num_vars is not None:
            ppl = out.prob_perplexity.float()  # per sub-batch; weighted by its rows (Python ints: no host copy)
            diversity = sum(((out.num_vars - ppl[i]) / out.num_vars) * rows for i, rows in enumerate(out.sub_batch_rows))
            if w_div != 0:
                term = w_div * diversity
                loss = loss + term
                log[f"loss_{k}"] = term.detach()
                k += 1
        if w_pen != 0:
            term = w_pen * out.features_pen.float() * sample_size
            loss = loss + term
            log[f"loss_{k}"] = term.detach()
            k += 1
        if k == 1:  # the reference logs the terms loss_0, loss_1, ... only when there is more than one
            del log["loss_0"]
        log.update(
            loss=loss.detach(),
            ntokens=sample_size,
            nsentences=int(out.mask_indices.shape[0]),
            sample_size=sample_size,
            correct=_correct_count(logits),
            count=sample_size,
        )
        if out.prob_perplexity is not None:  # --log_keys: the quantizer statistics to log (reference §3.1 step 7)
            available = {"prob_perplexity": lambda: out.prob_perplexity.detach().float().mean(),
                         "code_perplexity": lambda: out.code_perplexity.detach().float().mean(),
                         "temp": lambda: float(out.temp)}
            for key in self.log_keys:
                if key in available:
                    log[key] = available[key]()
        return loss, sample_size, log


@dataclass
class CtcCriterion:
    """CTC with blank index 0, ``zero_infinity=True``, SUM reduction and sentence averaging (sample_size = B),
    computed from float32 log-probabilities. Targets exclude the pad and eos indices."""

    blank_index: int = 0
    pad_index: int = 1
    eos_index: int = 2
    zero_infinity: bool = True

    def __call__(
        self,
        logits: torch.Tensor,
        out_lengths: Optional[torch.Tensor],
        target: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, int, dict]:
        """logits B x T x V (as the CTC model returns them), target B x Lmax padded with ``pad_index``.

        Give ``target`` and ``target_lengths`` on the CPU (as the loader makes them): the pad/eos removal and the
        length check then run there and only the flat targets travel to the device. torch's ``ctc_loss`` copies
        the frame lengths ``out_lengths`` to the host: give them on the CPU too (``FinetuneTask`` does), or the
        copy waits for the device. None: every frame is valid (lengths made on the CPU)."""
        b, t, _ = logits.shape
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # T x B x V
        if out_lengths is None:
            out_lengths = torch.full((b,), t, dtype=torch.long)
        valid = (target != self.pad_index) & (target != self.eos_index)
        flat_targets = target[valid].to(logits.device, non_blocking=True)
        tl = valid.sum(-1)
        if not torch.equal(tl.cpu(), target_lengths.cpu()):
            raise ValueError("target_lengths do not match the non-pad entries of target")
        loss = F.ctc_loss(
            log_probs,
            flat_targets,
            out_lengths,
            tl,
            blank=self.blank_index,
            reduction="sum",
            zero_infinity=self.zero_infinity,
        )
        log = {
            "loss": loss.detach(),
            "ntokens": int(tl.sum()),
            "nsentences": b,
            "sample_size": b,
        }
        return loss, b, log

