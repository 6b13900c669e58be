"""The convolutional waveform encoder (fairseq ``ConvFeatureExtractionModel``).

Seven 1-D convolutions (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2 by default) turn a 16 kHz waveform
into 50 frames per second. Each block is ``Sequential(conv, dropout(p=0), [norm], GELU)`` so that its state
dict keys are fairseq's: ``conv_layers.{i}.0.weight`` (conv), ``conv_layers.0.2.{weight,bias}`` (GroupNorm,
"default" mode) or ``conv_layers.{i}.2.1.{weight,bias}`` (LayerNorm, "layer_norm" mode).

Padding awareness: given per-utterance sample lengths, the layer-0 GroupNorm takes its mean and variance over
each utterance's valid frames only, so a zero-padded batch yields on every valid frame what the utterance
alone would give. (The reference only does this in its inference path; LayerNorm is per frame and needs no
masking.)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import Wav2Vec2Config
from .layers import Fp32GroupNorm, Fp32LayerNorm, TransposeLast, conv_out_length

__all__ = ["ConvFeatureExtractor", "ConvBlock", "masked_group_norm"]


def masked_group_norm(
    x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm, fp32: bool = True
) -> torch.Tensor:
    """Per-channel normalisation (GroupNorm with groups == channels) with statistics over the first
    ``lengths[b]`` frames of each utterance. x: B x C x T. All frames are normalised with those statistics."""
    if norm.num_groups != norm.num_channels:
        raise ValueError("masked group norm supports num_groups == num_channels only (the wav2vec 2.0 case)")
    dtype = x.dtype
    xf = x.float() if fp32 else x
    t = xf.shape[-1]
    valid = (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).to(xf.dtype)[:, None, :]  # B x 1 x T
    count = valid.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (xf * valid).sum(-1, keepdim=True) / count
    var = ((xf - mean).square_() * valid).sum(-1, keepdim=True) / count  # biased, as GroupNorm
    # fold normalisation and affine into one multiply-add over the big tensor: y = x * scale + shift
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.to(scale.dtype)[None, :, None]
        shift = norm.bias.to(scale.dtype)[None, :, None] - mean * scale
    else:
        shift = -mean * scale
    return torch.addcmul(shift, xf, scale).to(dtype)


class ConvBlock(nn.Sequential):
    """``conv -> dropout(0) -> [norm] -> GELU`` with fairseq's child indices; ``forward`` also maps lengths."""

    def __init__(self, conv: nn.Conv1d, norm: Optional[nn.Module]):
        mods: list[nn.Module] = [conv, nn.Dropout(p=0.0)]
        if norm is not None:
            mods.append(norm)
        mods.append(nn.GELU())
        super().__init__(*mods)
        self.has_norm = norm is not None

    @property
    def conv(self) -> nn.Conv1d:
        return self[0]  # type: ignore[return-value]

    @property
    def norm(self) -> Optional[nn.Module]:
        return self[2] if self.has_norm else None

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        conv = self.conv
        x = conv(x)
        if lengths is not None:
            lengths = conv_out_length(lengths, conv.kernel_size[0], conv.stride[0])
        norm = self.norm
        if norm is not None:
            if isinstance(norm, nn.GroupNorm) and lengths is not None:
                x = masked_group_norm(x, lengths, norm)
            else:
                x = norm(x)
        return F.gelu(x), lengths


class ConvFeatureExtractor(nn.Module):
    """Waveform (B x L) -> features (B x E x T) and frame lengths.

    Args (fairseq names): ``conv_feature_layers`` spec, ``extractor_mode`` ("default": GroupNorm on layer 0,
    Base; "layer_norm": LayerNorm on every layer, Large), ``conv_bias`` (Base False, Large True),
    ``fp32_conv_norms`` (norms computed in float32).
    """

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        mode = cfg.extractor_mode
        blocks = []
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(cfg.conv_layers):
            conv = nn.Conv1d(in_dim, dim, kernel, stride=stride, bias=cfg.conv_bias)
            nn.init.kaiming_normal_(conv.weight)
            norm: Optional[nn.Module] = None
            if mode == "layer_norm":
                ln = Fp32LayerNorm(dim) if cfg.fp32_conv_norms else nn.LayerNorm(dim)
                norm = nn.Sequential(TransposeLast(), ln, TransposeLast())
            elif i == 0:
                gn_cls = Fp32GroupNorm if cfg.fp32_conv_norms else nn.GroupNorm
                norm = gn_cls(dim, dim, affine=True)
            blocks.append(ConvBlock(conv, norm))
            in_dim = dim
        self.conv_layers = nn.ModuleList(blocks)
        self.mask_padding = cfg.masked_feature_extractor

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for block in self.conv_layers:
            conv = block.conv
            lengths = conv_out_length(lengths, conv.kernel_size[0], conv.stride[0])
        return lengths

    def forward(
        self, waveforms: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """waveforms: B x L; lengths: B valid samples or None (no padding). Returns (B x E x T, frame lengths)."""
        x = waveforms.unsqueeze(1)
        frame_lengths = lengths if (lengths is not None and self.mask_padding) else None
        for block in self.conv_layers:
            x, frame_lengths = block(x, frame_lengths)
        if lengths is not None and frame_lengths is None:
            frame_lengths = self.output_lengths(lengths)
        return x, frame_lengths
