"""The wav2vec 2.0 models: the pretraining model and the CTC fine-tuning model.

Public call convention (also in the README):

* ``Wav2Vec2ForCTC``: ``logits, out_lengths = model(waveforms, lengths)``; ``waveforms`` float B x S zero-padded,
  ``lengths`` int B valid samples (or None); ``logits`` B x T x V before log-softmax (padded frames force the
  blank), ``out_lengths`` valid frames.
* ``Wav2Vec2Model``: ``features, out_lengths = model.extract_features(waveforms, lengths)`` gives the final
  transformer output B x T x C (no masking in eval mode); ``model(waveforms, lengths)`` runs the pretraining task
  and returns a :class:`PretrainingOutput`.

In eval mode a padded batch gives, on each utterance's valid frames, the outputs of that utterance alone.
State-dict keys are fairseq's / NVIDIA's (``feature_extractor.*``, ``post_extract_proj``, ``quantizer.*``,
``project_q``, ``mask_emb``, ``encoder.*``, ``layer_norm``, ``final_proj``; the CTC model nests the encoder as
``w2v_encoder.w2v_model.*`` beside ``w2v_encoder.proj``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import Wav2Vec2Config
from .encoder import TransformerEncoder
from .feature_extractor import ConvFeatureExtractor
from .layers import GradMultiply
from .masking import compute_mask
from .negatives import contrastive_logits_from_indices, sample_negative_indices
from .quantizer import GumbelVectorQuantizer

__all__ = ["Wav2Vec2Model", "Wav2Vec2ForCTC", "PretrainingOutput", "lengths_to_padding_mask"]


def lengths_to_padding_mask(lengths: Optional[torch.Tensor], max_len: int) -> Optional[torch.Tensor]:
    """B x max_len boolean, True on padded positions (None when lengths is None)."""
    if lengths is None:
        return None
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def masked_positions(mask: torch.Tensor, m: int) -> torch.Tensor:
    """B x m indices of the masked frames of each row of ``mask`` (B x T bool, exactly ``m`` True per row), in
    order. Unlike boolean indexing, no ``nonzero`` reads the mask back to the host (a synchronisation on GPUs)."""
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :m]


def gather_frames(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x[b, positions[b, i]]`` for B x T x C ``x``: B x m x C (the same values as ``x[mask].view(B, m, C)``)."""
    return x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass
class PretrainingOutput:
    """Everything the contrastive criterion and the logs need from one forward pass.

    ``logits`` has one row per masked frame (rows of all sub-batches concatenated, batch-major within each) and
    ``1 + N`` columns, the positive first. Quantizer statistics are per sub-batch (vectors of length
    ``len(sub_batch_rows)``), together with the number of rows each sub-batch contributed.
    """

    logits: torch.Tensor  # R x (1 + N)
    features_pen: torch.Tensor  # scalar float32
    mask_indices: torch.Tensor  # B x T bool
    negative_indices: list[torch.Tensor]  # per sub-batch: B_s x M_s x N (flat indices into that sub-batch's targets)
    sub_batch_rows: list[int]
    prob_perplexity: Optional[torch.Tensor] = None  # (K,) float32
    code_perplexity: Optional[torch.Tensor] = None  # (K,) float32
    num_vars: Optional[int] = None
    temp: Optional[float] = None
    padding_mask: Optional[torch.Tensor] = None  # B x T frame padding

    @property
    def sample_size(self) -> int:
        return int(self.logits.shape[0])


class Wav2Vec2Model(nn.Module):
    """fairseq / NVIDIA ``Wav2Vec2Model``. ``pretraining=False`` builds it without the quantizer, ``project_q``,
    ``final_proj`` and ``target_glu`` (what ``remove_pretraining_modules`` leaves for fine-tuning)."""

    def __init__(self, cfg: Wav2Vec2Config, pretraining: bool = True):
        super().__init__()
        self.cfg = cfg
        e, c = cfg.embed_dim, cfg.encoder_embed_dim
        self.feature_extractor = ConvFeatureExtractor(cfg)
        self.post_extract_proj = nn.Linear(e, c) if e != c else None
        self.mask_emb = nn.Parameter(torch.empty(c).uniform_())
        self.encoder = TransformerEncoder(cfg)
        self.layer_norm = nn.LayerNorm(e)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.feature_grad_mult = cfg.feature_grad_mult
        self.pretraining = pretraining
        self.quantizer: Optional[GumbelVectorQuantizer] = None
        self.project_q: Optional[nn.Linear] = None
        self.final_proj: Optional[nn.Linear] = None
        self.target_glu: Optional[nn.Sequential] = None
        if pretraining:
            d = cfg.proj_dim
            if cfg.quantize_targets:
                self.quantizer = GumbelVectorQuantizer(
                    dim=e,
                    num_vars=cfg.latent_vars,
                    temp=cfg.latent_temp,
                    groups=cfg.latent_groups,
                    combine_groups=cfg.combine_groups,
                    vq_dim=cfg.vq_dim,
                    weight_proj_depth=cfg.quantizer_depth,
                    weight_proj_factor=cfg.quantizer_factor,
                )
                self.project_q = nn.Linear(cfg.vq_dim, d)
            else:
                self.project_q = nn.Linear(e, d)
            if cfg.target_glu:
                self.target_glu = nn.Sequential(nn.Linear(d, d * 2), nn.GLU())
            self.final_proj = nn.Linear(c, d)
        self.num_updates = 0
        self.layerdrop_seed = 0

    # training-schedule hooks -----------------------------------------------------------------------------------------
    def set_num_updates(self, num_updates: int) -> None:
        """Called by the trainer before each update: Gumbel temperature and LayerDrop stream follow the update."""
        self.num_updates = num_updates
        if self.quantizer is not None:
            self.quantizer.set_num_updates(num_updates)
        self.encoder.reseed_layerdrop(self.layerdrop_seed * 1_000_003 + num_updates)

    def remove_pretraining_modules(self) -> None:
        self.quantizer = None
        self.project_q = None
        self.final_proj = None
        self.target_glu = None
        self.pretraining = False

    # building blocks -------------------------------------------------------------------------------------------------
    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor.output_lengths(lengths)

    def _features(
        self, waveforms: torch.Tensor, lengths: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Extractor with the reference's gradient policy: scaled gradients in training, frozen otherwise.
        Returns time-major features (B x T x E)."""
        if self.training and self.feature_grad_mult > 0:
            feats, frame_lengths = self.feature_extractor.forward_time_major(waveforms, lengths)
            if self.feature_grad_mult != 1.0:
                feats = GradMultiply.apply(feats, self.feature_grad_mult)
        else:
            with torch.no_grad():
                feats, frame_lengths = self.feature_extractor.forward_time_major(waveforms, lengths)
        return feats, frame_lengths

    def _masked_input(
        self, waveforms: torch.Tensor, lengths: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Steps shared by all forwards: features, penalty, LN, projection, dropouts.
        Returns (projected x, unmasked targets, features_pen, padding_mask, frame_lengths)."""
        feats, frame_lengths = self._features(waveforms, lengths)
        features_pen = feats.float().pow(2).mean()
        feats = self.layer_norm(feats)
        unmasked = feats
        padding_mask = lengths_to_padding_mask(frame_lengths, feats.shape[1])
        x = self.post_extract_proj(feats) if self.post_extract_proj is not None else feats
        x = self.dropout_input(x)
        unmasked = self.dropout_features(unmasked)
        return x, unmasked, features_pen, padding_mask, frame_lengths

    def apply_mask(
        self,
        x: torch.Tensor,
        frame_lengths: Optional[torch.Tensor],
        mask_indices: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Time masks (replaced by ``mask_emb``) and channel masks (zeroed), in the reference's order."""
        cfg = self.cfg
        b, t, c = x.shape

        def channel_mask() -> torch.Tensor:
            cm = compute_mask(
                (b, c),
                cfg.mask_channel_prob,
                cfg.mask_channel_length,
                selection=cfg.mask_channel_selection,
                mask_other=cfg.mask_channel_other,
                min_masks=0,
                no_overlap=cfg.no_mask_channel_overlap,
                min_space=cfg.mask_channel_min_space,
                require_same_masks=True,
                generator=generator,
                device=x.device,
            )
            return cm[:, None, :]

        if cfg.mask_channel_prob > 0 and cfg.mask_channel_before:
            x = x.masked_fill(channel_mask(), 0.0)
        if mask_indices is None and cfg.mask_prob > 0:
            mask_indices = compute_mask(
                (b, t),
                cfg.mask_prob,
                cfg.mask_length,
                lengths=frame_lengths,
                selection=cfg.mask_selection,
                mask_other=cfg.mask_other,
                min_masks=cfg.mask_min_masks,
                no_overlap=cfg.no_mask_overlap,
                min_space=cfg.mask_min_space,
                require_same_masks=cfg.require_same_masks,
                mask_dropout=cfg.mask_dropout,
                generator=generator,
                device=x.device,
            )
        if mask_indices is not None:
            x = torch.where(mask_indices[..., None], self.mask_emb.to(x.dtype), x)
        if cfg.mask_channel_prob > 0 and not cfg.mask_channel_before:
            x = x.masked_fill(channel_mask(), 0.0)
        return x, mask_indices

    # public API ------------------------------------------------------------------------------------------------------
    def extract_features(
        self,
        waveforms: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        mask: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Final transformer output B x T x C and valid frame lengths. Masks only when ``mask`` and training."""
        x, _, _, padding_mask, frame_lengths = self._masked_input(waveforms, lengths)
        if mask and self.training:
            x, _ = self.apply_mask(x, frame_lengths, generator=generator)
        x = self.encoder(x, padding_mask)
        return x, frame_lengths

    def forward(
        self,
        waveforms: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        *,
        mask_indices: Optional[torch.Tensor] = None,
        negative_indices: Optional[torch.Tensor] = None,
        sub_batch_sizes: Optional[list[int] | torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> PretrainingOutput:
        """The pretraining task. ``mask_indices`` (B x T bool) and ``negative_indices`` (B x M x N) may be given
        (tests, analysis); otherwise they are drawn from ``generator``. ``sub_batch_sizes`` lists how many
        utterances each concatenated sub-batch contributes (``num_concat_batches``): masks, quantizer statistics
        and negatives are then per sub-batch while the transformer runs once on the whole batch."""
        if not self.pretraining or self.final_proj is None or self.project_q is None:
            raise RuntimeError("this model has no pretraining modules (it was built or converted for fine-tuning)")
        x, unmasked, features_pen, padding_mask, frame_lengths = self._masked_input(waveforms, lengths)
        b = x.shape[0]
        if sub_batch_sizes is None:
            sizes = [b]
        else:
            sizes = [int(s) for s in (sub_batch_sizes.tolist() if torch.is_tensor(sub_batch_sizes) else sub_batch_sizes)]
            if sum(sizes) != b:
                raise ValueError(f"sub_batch_sizes {sizes} do not add up to the batch size {b}")
        if len(sizes) > 1 and (mask_indices is not None or negative_indices is not None):
            raise ValueError("explicit mask/negative indices are only supported without sub-batches")

        # masks per sub-batch
        masked_x, masks = [], []
        start = 0
        for s in sizes:
            sl = slice(start, start + s)
            fl = frame_lengths[sl] if frame_lengths is not None else None
            xs, ms = self.apply_mask(x[sl], fl, mask_indices if len(sizes) == 1 else None, generator)
            if ms is None:
                raise ValueError("pretraining needs mask_prob > 0 (or explicit mask_indices)")
            masked_x.append(xs)
            masks.append(ms)
            start += s
        x = masked_x[0] if len(sizes) == 1 else torch.cat(masked_x, dim=0)
        mask_all = masks[0] if len(sizes) == 1 else torch.cat(masks, dim=0)

        x = self.encoder(x, padding_mask)

        logits_parts, neg_parts, rows = [], [], []
        prob_ppl, code_ppl = [], []
        num_vars, temp = None, None
        start = 0
        for s, ms in zip(sizes, masks):
            sl = slice(start, start + s)
            start += s
            per_row = ms.sum(1).tolist()  # the step's one host read: the masked-frame count sets the shapes
            m = per_row[0]
            if any(c != m for c in per_row):
                raise ValueError("pretraining needs the same number of masked frames per utterance (require_same_masks)")
            positions = masked_positions(ms, m)
            y = gather_frames(unmasked[sl], positions)
            if self.quantizer is not None:
                q = self.quantizer(y, generator=generator)
                y = q.x
                prob_ppl.append(q.prob_perplexity)
                code_ppl.append(q.code_perplexity)
                num_vars, temp = q.num_vars, q.temp
            y = self.project_q(y)
            if negative_indices is not None:
                neg_idx = negative_indices
            else:
                neg_idx = sample_negative_indices(
                    s, m, self.cfg.num_negatives, self.cfg.cross_sample_negatives, generator=generator, device=y.device
                )
            if self.target_glu is not None:
                y = self.target_glu(y)  # row-wise, so gathering negatives afterwards is the same
            xm = self.final_proj(gather_frames(x[sl], positions))
            lg = contrastive_logits_from_indices(xm, y, neg_idx, min(self.cfg.num_negatives, neg_idx.shape[-1]),
                                                 self.cfg.logit_temp, fp32=self.cfg.fp32_cosine_sim)
            logits_parts.append(lg.permute(1, 2, 0).reshape(s * m, -1))
            neg_parts.append(neg_idx)
            rows.append(s * m)
        logits = logits_parts[0] if len(logits_parts) == 1 else torch.cat(logits_parts, dim=0)
        return PretrainingOutput(
            logits=logits,
            features_pen=features_pen,
            mask_indices=mask_all,
            negative_indices=neg_parts,
            sub_batch_rows=rows,
            prob_perplexity=torch.stack(prob_ppl) if prob_ppl else None,
            code_perplexity=torch.stack(code_ppl) if code_ppl else None,
            num_vars=num_vars,
            temp=temp,
            padding_mask=padding_mask,
        )


class CtcEncoder(nn.Module):
    """fairseq ``Wav2VecEncoder``: a ``Wav2Vec2Model`` without pretraining modules, final dropout and ``proj``."""

    def __init__(self, cfg: Wav2Vec2Config, vocab_size: int):
        super().__init__()
        self.w2v_model = Wav2Vec2Model(cfg, pretraining=False)
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.proj = nn.Linear(cfg.encoder_embed_dim, vocab_size)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)


class Wav2Vec2ForCTC(nn.Module):
    """fairseq ``Wav2VecCtc``: ``logits, out_lengths = model(waveforms, lengths)``.

    Args: ``cfg`` (``final_dropout``, ``freeze_finetune_updates``, ``apply_mask`` and the mask parameters used in
    fine-tuning, ``blank_weight``/``blank_mode``), ``vocab_size`` (K, 32 for LibriSpeech letters; index 0 = blank).
    """

    def __init__(self, cfg: Wav2Vec2Config, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.w2v_encoder = CtcEncoder(cfg, vocab_size)
        self.num_updates = 0
        self.blank_index = 0

    @property
    def w2v_model(self) -> Wav2Vec2Model:
        return self.w2v_encoder.w2v_model

    def set_num_updates(self, num_updates: int) -> None:
        """The trainer passes the 1-based index of the update being computed; the encoder is frozen while
        ``num_updates < freeze_finetune_updates`` (so exactly ``freeze - 1`` frozen updates, as the reference)."""
        self.num_updates = num_updates
        self.w2v_model.set_num_updates(num_updates)

    def load_pretrained(self, state_dict: dict) -> None:
        """Initialise the encoder from a pretraining model's state dict (pretraining-only keys are dropped)."""
        from .checkpoint import load_pretrained_into_ctc

        load_pretrained_into_ctc(self, state_dict)

    def forward(
        self,
        waveforms: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        fine_tune = self.cfg.freeze_finetune_updates <= self.num_updates
        ctx = contextlib.nullcontext() if (fine_tune or not self.training) else torch.no_grad()
        with ctx:
            x, frame_lengths = self.w2v_model.extract_features(
                waveforms, lengths, mask=self.cfg.apply_mask and self.training, generator=generator
            )
        x = self.w2v_encoder.final_dropout(x)
        logits = self.w2v_encoder.proj(x)
        if self.cfg.blank_weight != 0 and not self.training:
            # fairseq applies blank_weight at inference only (the reference also in training, REFERENCE-QUIRKS Q20)
            logits = logits.clone()
            if self.cfg.blank_mode == "add":
                logits[..., self.blank_index] += self.cfg.blank_weight
            else:
                logits[..., self.blank_index] = self.cfg.blank_weight
        if frame_lengths is not None:
            pad = lengths_to_padding_mask(frame_lengths, logits.shape[1])
            forced = torch.full((logits.shape[-1],), float("-inf"), dtype=logits.dtype, device=logits.device)
            # fill_ on a view, not ``forced[i] = 0.0``: assigning a number to a 0-dim CUDA element copies a CPU
            # tensor to the GPU and synchronises, which CUDA-graph capture refuses
            forced.narrow(0, self.blank_index, 1).fill_(0.0)
            logits = torch.where(pad[..., None], forced, logits)
        return logits, frame_lengths
