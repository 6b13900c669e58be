"""Model FLOPs of the wav2vec 2.0 models, counted from shapes: what the trainer divides by time to report achieved
FLOP/s and MFU (model FLOPs utilisation; nanoGPT and PaLM divide by the hardware's datasheet peak, the trainer by a
measured dense matmul rate unless ``--peak_tflops`` gives the datasheet's).

Counted are the multiply-adds (2 FLOPs each) of every matmul and convolution the model's mathematics needs:
extractor convolutions, the projections, the positional convolution, attention (q/k/v/out projections and the two
T x T products), feed-forward layers, the quantizer's logits and codebook lookup, ``project_q``, ``final_proj``,
the contrastive similarities (1 + negatives per masked frame) and the CTC projection. Normalisations, activations,
softmax and the loss are left out (a few per cent of the arithmetic, none of it on the matrix units).

The backward pass costs twice the forward for a layer whose input needs a gradient (input gradient + weight
gradient) and once for a layer whose input does not (the first extractor convolution, whose input is the
waveform); frozen parts (``feature_grad_mult`` 0, ``freeze_finetune_updates``) cost their forward only. LayerDrop
is counted at its expected rate whenever the model is in training mode (also while the encoder is frozen). Shapes
are the batch's tensor shape: padded frames count (they are computed).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Wav2Vec2Config

__all__ = ["StepFlops", "pretraining_flops", "ctc_flops", "extractor_frames"]


@dataclass
class StepFlops:
    """Forward and backward FLOPs of one batch (or of a part of the model, while the parts are added up)."""

    forward: float = 0.0
    backward: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def add(self, forward: float, trained: bool, input_grad: bool = True) -> None:
        """A matmul of ``forward`` FLOPs: its backward computes the weight gradient when ``trained`` and the input
        gradient when ``input_grad`` (the gradient must flow further back), each as costly as the forward. A
        product of two activations (attention) passes ``trained`` for its second operand."""
        self.forward += forward
        if trained:
            self.backward += forward * (2 if input_grad else 1)
        elif input_grad:
            self.backward += forward

    def __add__(self, other: "StepFlops") -> "StepFlops":
        return StepFlops(self.forward + other.forward, self.backward + other.backward)


def extractor_frames(cfg: Wav2Vec2Config, num_samples: int) -> list[int]:
    """Output length of each extractor layer for an input of ``num_samples`` samples."""
    frames, t = [], num_samples
    for _, kernel, stride in cfg.conv_layers:
        t = max(0, (t - kernel) // stride + 1)
        frames.append(t)
    return frames


def _extractor(cfg: Wav2Vec2Config, batch: int, num_samples: int, trained: bool) -> StepFlops:
    out = StepFlops()
    c_in = 1
    for (c_out, kernel, _), t in zip(cfg.conv_layers, extractor_frames(cfg, num_samples)):
        # the first layer's input is the waveform: no input gradient
        out.add(2.0 * batch * t * c_in * kernel * c_out, trained, input_grad=trained and c_in != 1)
        c_in = c_out
    return out


def _layer(cfg: Wav2Vec2Config, rows: float, t: float, trained: bool, input_grad: bool) -> StepFlops:
    """One transformer layer on ``rows`` = B * t frames of sequences of length ``t``."""
    c, f = cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
    out = StepFlops()
    out.add(2.0 * rows * c * c * 3, trained, input_grad)  # q, k, v projections
    out.add(2.0 * rows * t * c * 2, trained, trained)  # q k^T and attention x v: both operands get gradients
    out.add(2.0 * rows * c * c, trained, trained)  # out projection
    out.add(2.0 * rows * c * f * 2, trained, trained)  # fc1, fc2
    return out


def _encoder(cfg: Wav2Vec2Config, batch: int, t: int, trained: bool, input_grad: bool, training: bool) -> StepFlops:
    """Positional convolution and the transformer layers (plain stack or Hourglass) on B x t frames; ``training``:
    the model is in training mode (LayerDrop active), ``trained``: the encoder learns."""
    c = cfg.encoder_embed_dim
    out = StepFlops()
    t_pos = t + 1 - cfg.conv_pos % 2  # 'same' padding of an even kernel computes one frame more (then dropped)
    out.add(2.0 * batch * t_pos * c * (c // cfg.conv_pos_groups) * cfg.conv_pos, trained, input_grad)
    keep = 1.0 - cfg.encoder_layerdrop if training else 1.0  # LayerDrop runs in training mode only
    hg = cfg.hourglass
    full = (cfg.encoder_layers if hg is None else hg.n_pre + hg.n_post) * keep
    layer = _layer(cfg, batch * t, t, trained, trained)
    out = out + StepFlops(layer.forward * full, layer.backward * full)
    if hg is not None:
        ts = -(-t // hg.factor)  # padded up to a multiple of the factor
        short = _layer(cfg, batch * ts, ts, trained, trained)
        n = hg.n_shortened * keep
        out = out + StepFlops(short.forward * n, short.backward * n)
        if cfg.hourglass_resample == "linear":
            out.add(2.0 * batch * ts * (c * hg.factor) * c * 2, trained, trained)  # down- and upsampling
    return out


def _front(cfg: Wav2Vec2Config, batch: int, num_samples: int, extractor_trained: bool,
           encoder_trained: bool, training: bool) -> tuple[StepFlops, int]:
    """Extractor, ``post_extract_proj`` and encoder; also returns the frame count."""
    t = extractor_frames(cfg, num_samples)[-1]
    out = _extractor(cfg, batch, num_samples, extractor_trained)
    if cfg.embed_dim != cfg.encoder_embed_dim:
        # (its input needs a gradient whenever the model learns: the layer norm before it has weights)
        out.add(2.0 * batch * t * cfg.embed_dim * cfg.encoder_embed_dim, encoder_trained, encoder_trained)
    return out + _encoder(cfg, batch, t, encoder_trained, encoder_trained, training), t


def pretraining_flops(cfg: Wav2Vec2Config, batch: int, num_samples: int, masked_frames: int,
                      training: bool = True) -> StepFlops:
    """One pretraining batch of ``batch`` x ``num_samples`` samples with ``masked_frames`` masked frames in all
    (the contrastive loss's rows); ``training``: forward and backward, else forward only (validation)."""
    extractor_trained = training and cfg.feature_grad_mult > 0
    out, _ = _front(cfg, batch, num_samples, extractor_trained, training, training)
    e, d, rows = cfg.embed_dim, cfg.proj_dim, float(masked_frames)
    if cfg.quantize_targets:
        width = e  # the quantizer reads the (layer-normalised, unmasked) features
        for _ in range(cfg.quantizer_depth - 1):
            out.add(2.0 * rows * width * e * cfg.quantizer_factor, training, training)
            width = e * cfg.quantizer_factor
        out.add(2.0 * rows * width * cfg.latent_groups * cfg.latent_vars, training, training)
        out.add(2.0 * rows * cfg.latent_vars * cfg.vq_dim, training, training)  # codebook lookup (per group)
        out.add(2.0 * rows * cfg.vq_dim * d, training, training)  # project_q
    else:
        out.add(2.0 * rows * e * d, training, training)
    if cfg.target_glu:
        out.add(2.0 * rows * d * 2 * d, training, training)
    out.add(2.0 * rows * cfg.encoder_embed_dim * d, training, training)  # final_proj
    columns = 1 + cfg.num_negatives + cfg.cross_sample_negatives
    out.add(2.0 * rows * columns * d, training, training)  # cosine similarities (both operands get gradients)
    return out


def ctc_flops(cfg: Wav2Vec2Config, batch: int, num_samples: int, vocab_size: int, training: bool = True,
              encoder_frozen: bool = False) -> StepFlops:
    """One CTC batch of ``batch`` x ``num_samples`` (padded) samples. ``encoder_frozen``: the updates before
    ``freeze_finetune_updates``, where only the output projection learns."""
    encoder_trained = training and not encoder_frozen
    extractor_trained = encoder_trained and cfg.feature_grad_mult > 0
    out, t = _front(cfg, batch, num_samples, extractor_trained, encoder_trained, training)
    out.add(2.0 * batch * t * cfg.encoder_embed_dim * vocab_size, training, encoder_trained)
    return out
