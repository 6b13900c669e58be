"""Transformer encoder: convolutional positional embedding, post-LN / pre-LN layers, LayerDrop, Hourglass.

Tensors are batch-major (B x T x C) throughout; attention runs through
``torch.nn.functional.scaled_dot_product_attention``. State-dict keys are fairseq's:
``pos_conv.0.{weight_g,weight_v,bias}``, ``layers.{i}.self_attn.{q,k,v,out}_proj``, ``self_attn_layer_norm``,
``fc1``, ``fc2``, ``final_layer_norm``, ``layer_norm``; Hourglass adds ``hourglass_layers``, ``post_layers`` and,
for ``hourglass_resample="linear"``, ``downsample_layer.linear`` / ``upsample_layer.linear``.

Padding: ``padding_mask`` is B x T with True on padded frames. Padded frames are zeroed before the positional
convolution and before Hourglass shortening, so on its valid frames a padded batch computes what each utterance
alone computes (the reference lets padded frames leak into boundary windows, REFERENCE-QUIRKS Q13).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import HourglassSpec, Wav2Vec2Config
from .layers import autocast_off, bert_init_, get_activation, make_layer_norm

__all__ = [
    "WeightNormConv1d",
    "SamePad",
    "MultiheadSelfAttention",
    "TransformerLayer",
    "TransformerEncoder",
]


class WeightNormConv1d(nn.Module):
    """Conv1d with weight normalisation over all dims but ``dim`` (fairseq: dim=2, i.e. one magnitude per kernel
    tap). Parameters ``weight_g`` (1 x 1 x K), ``weight_v`` (C x C/groups x K) and ``bias``, as
    ``torch.nn.utils.weight_norm`` names them. With ``fp32`` the convolution runs in float32 and the result is cast
    back (``--fp32_pos_conv``).

    Without autograd on the CPU (inference, validation) the convolution runs as an overlap-save FFT in float32
    (``_forward_fft``) with the weight spectrum cached until a parameter changes; with autograd (training), when
    traced or compiled, and on other devices, it is ``F.conv1d``."""

    fft_block = 256  # overlap-save block of the inference FFT path (fastest of 256/512/1024 at Base's shapes)

    def __init__(self, channels: int, kernel: int, groups: int, fp32: bool = False):
        super().__init__()
        self.padding = kernel // 2
        self.groups = groups
        self.fp32 = fp32
        std = math.sqrt(4.0 / (kernel * channels))
        v = torch.empty(channels, channels // groups, kernel).normal_(0.0, std)
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(self._norm(v).detach().clone())
        self.bias = nn.Parameter(torch.zeros(channels))

    @staticmethod
    def _norm(v: torch.Tensor) -> torch.Tensor:
        return v.float().pow(2).sum(dim=(0, 1), keepdim=True).sqrt().to(v.dtype)

    def weight(self) -> torch.Tensor:
        v = self.weight_v
        return v * (self.weight_g / self._norm(v))

    def _bf16_cpu_grouped_conv_is_wrong(self, x: torch.Tensor) -> bool:
        """torch 2.13's CPU (oneDNN) BF16 grouped conv1d returns wrong values (errors as large as the outputs) for
        2, 4, 8 or 12 channels per group with kernels >= 16; 1, 9, 16, 18, 24, 48 are right (measured; the presets
        use 18 and 48). Such shapes run in float32 instead."""
        if x.device.type != "cpu":
            return False
        low = x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                            and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return low and 1 < self.weight_v.shape[1] < 16

    def _use_fft(self, x: torch.Tensor) -> bool:
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or x.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight_v.requires_grad or self.weight_g.requires_grad
                                        or self.bias.requires_grad):
            return False  # training: oneDNN's conv and its backward (autograd through the FFT path is slower)
        return self.weight_v.shape[-1] >= 32

    def train(self, mode: bool = True) -> "WeightNormConv1d":
        self.__dict__.pop("_fft_cache", None)  # train() / eval() around an optimizer's steps: start afresh
        return super().train(mode)

    def _weight_probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of ``weight_g`` (K values) and of every n-th value of ``weight_v`` (~4096): compared with
        ``torch.equal`` they tell whether the weights changed in place. ``_version`` alone does not: torch's fused CPU
        AdamW (the trainer's optimizer) updates parameters without bumping it."""
        v = self.weight_v.detach().reshape(-1)
        step = max(1, v.numel() // 4096) | 1  # odd: the samples cover every kernel tap, not one (128 divides evens)
        return self.weight_g.detach().clone(), v[::step].clone()

    def _probe_unchanged(self, probe: tuple[torch.Tensor, torch.Tensor]) -> bool:
        try:
            return all(torch.equal(a, b) for a, b in zip(probe, self._weight_probe()))
        except RuntimeError:  # fake or meta tensors (shape propagation, sync checks): values unknown, recompute
            return False

    def _spectrum(self, block: int) -> torch.Tensor:
        """conj(rfft(weight, block)) as groups x frequencies x C_out/g x C_in/g, cached until a parameter changes:
        a new tensor or ``_version`` (``.to()``, ``load_state_dict``), different values (:meth:`_weight_probe`, for
        in-place updates that keep ``_version``), or a ``train()`` / ``eval()`` call in between."""
        v, g = self.weight_v, self.weight_g
        key = (block, v.device, v.data_ptr(), v._version, g.data_ptr(), g._version)
        cached = self.__dict__.get("_fft_cache")
        if cached is not None and cached[0] == key and self._probe_unchanged(cached[2]):
            return cached[1]
        with torch.no_grad():
            w = self.weight().float()
            c, cin, _ = w.shape
            spec = torch.fft.rfft(w, n=block).conj()  # C x C_in/g x F
            spec = spec.view(self.groups, c // self.groups, cin, -1).permute(0, 3, 1, 2).contiguous()
        self.__dict__["_fft_cache"] = (key, spec, self._weight_probe())  # not a buffer: derived, never saved
        return spec

    def _forward_fft(self, x: torch.Tensor) -> torch.Tensor:
        """The same grouped convolution (padding K // 2) by overlap-save FFT in float32: blocks of ``fft_block``
        samples, each giving ``fft_block - K + 1`` outputs; per frequency, one (C/g x C/g) complex product per
        group. For the Base shape (768 channels, K = 128, 16 groups) this is 4.6x (6.5 s, batch 1), 5.1x (batch 8)
        and 8.7x (35 s) faster than oneDNN's direct grouped convolution on the 2-core CPU, relative error ~2e-7
        (``python benchmarks/pos_conv_fft.py``)."""
        b, c, t = x.shape
        k = self.weight_v.shape[-1]
        block = self.fft_block
        step = block - k + 1
        t_out = t + 2 * self.padding - k + 1
        nseg = -(-t_out // step)
        spec = self._spectrum(block)
        groups, freqs, cout, cin = spec.shape
        xf = F.pad(x.float(), (self.padding, (nseg - 1) * step + block - t - self.padding))
        seg = torch.fft.rfft(xf.unfold(-1, block, step), n=block)  # B x C x nseg x F
        seg = seg.view(b, groups, cin, nseg, freqs).permute(1, 4, 2, 0, 3).reshape(groups, freqs, cin, b * nseg)
        out = torch.matmul(spec, seg)  # groups x F x C_out/g x (B * nseg): circular correlation per block
        out = out.view(groups, freqs, cout, b, nseg).permute(3, 0, 2, 4, 1).reshape(b, c, nseg, freqs)
        y = torch.fft.irfft(out, n=block)[..., :step].reshape(b, c, nseg * step)[..., :t_out]
        y = y + self.bias.float()[:, None]
        autocast = torch.is_autocast_enabled("cpu") and not self.fp32  # the dtype F.conv1d would return
        dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
        return y.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_fft(x):
            return self._forward_fft(x)
        w = self.weight()
        wrong_bf16 = self._bf16_cpu_grouped_conv_is_wrong(x)
        if self.fp32 or wrong_bf16:  # float32 for real: autocast off inside (it would cast the conv back to BF16)
            with torch.autocast(x.device.type, enabled=False):
                y = F.conv1d(x.float(), w.float(), self.bias.float(), padding=self.padding, groups=self.groups)
            return y.to(x.dtype if self.fp32 else torch.bfloat16)
        return F.conv1d(x, w.to(x.dtype), self.bias.to(x.dtype), padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra last frame that an even kernel with symmetric padding produces."""

    def __init__(self, kernel: int):
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : x.shape[-1] - self.remove] if self.remove else x


class MultiheadSelfAttention(nn.Module):
    """Self-attention with separate q/k/v/out projections (fairseq key names), computed by SDPA.

    ``fp32_softmax``: q, k, v are upcast so the attention (softmax included) runs in float32.
    """

    def __init__(self, dim: int, heads: int, dropout: float, fp32_softmax: bool = False):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.fp32_softmax = fp32_softmax
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: B x T x C; attn_mask: boolean B x 1 x 1 x T, True = may attend (None: attend everywhere)."""
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        dtype = q.dtype
        precision = contextlib.nullcontext()
        if self.fp32_softmax:  # float32 for real: under autocast SDPA would cast them back down
            q, k, v = q.float(), k.float(), v.float()
            precision = autocast_off(q.device)
        with precision:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
            )
        y = y.to(dtype).transpose(1, 2).reshape(b, t, c)
        return self.out_proj(y)


class TransformerLayer(nn.Module):
    """fairseq ``TransformerSentenceEncoderLayer``.

    Post-LN (Base): h = LN(x + drop(attn(x))); out = LN(h + drop(fc2(drop(act(fc1(h)))))).
    Pre-LN (Large, ``layer_norm_first``): h = x + drop(attn(LN(x))); out = h + drop(fc2(drop(act(fc1(LN(h)))))).
    """

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        c = cfg.encoder_embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.activation = get_activation(cfg.activation_fn)
        self.self_attn = MultiheadSelfAttention(
            c, cfg.encoder_attention_heads, cfg.attention_dropout, fp32_softmax=cfg.fp32_mha_softmax
        )
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.activation_dropout)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.self_attn_layer_norm = make_layer_norm(c, fp32=cfg.fp32_transformer_layernorm)
        self.fc1 = nn.Linear(c, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, c)
        self.final_layer_norm = make_layer_norm(c, fp32=cfg.fp32_transformer_layernorm)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.fc2(self.dropout2(self.activation(self.fc1(x)))))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), attn_mask))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x, attn_mask)))
        return self.final_layer_norm(x + self._ffn(x))


class _Resample(nn.Module):
    """Holder of the Linear used by ``hourglass_resample="linear"`` (key ``*_layer.linear``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)


def _attn_mask(padding_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if padding_mask is None:
        return None
    return (~padding_mask)[:, None, None, :]


class TransformerEncoder(nn.Module):
    """fairseq ``TransformerEncoder`` with NVIDIA's Hourglass option.

    Args (fairseq names): ``encoder_embed_dim``, ``encoder_layers``, ``encoder_ffn_embed_dim``,
    ``encoder_attention_heads``, ``conv_pos`` (128), ``conv_pos_groups`` (16), ``layer_norm_first``,
    ``dropout``, ``attention_dropout``, ``activation_dropout``, ``encoder_layerdrop``, ``hourglass_transformer``
    ("[2,(8,4),2]"), ``hourglass_resample`` (naive | linear), ``fp32_pos_conv``, ``fp32_transformer_layernorm``.

    LayerDrop decisions come from a CPU generator reseeded from the update number (:meth:`reseed_layerdrop`), so
    every DDP rank drops the same layers and a resumed run replays the same decisions.
    """

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        c = cfg.encoder_embed_dim
        self.dropout = cfg.dropout
        self.layer_norm_first = cfg.layer_norm_first
        self.layerdrop = cfg.encoder_layerdrop
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(c, cfg.conv_pos, cfg.conv_pos_groups, fp32=cfg.fp32_pos_conv),
            SamePad(cfg.conv_pos),
            nn.GELU(),
        )
        self.hourglass: Optional[HourglassSpec] = cfg.hourglass
        hg = self.hourglass
        n_first = hg.n_pre if hg is not None else cfg.encoder_layers
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(n_first))
        self.resample = cfg.hourglass_resample
        if hg is not None:
            self.hourglass_layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(hg.n_shortened))
            self.post_layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(hg.n_post))
            if self.resample == "linear":
                self.downsample_layer = _Resample(c * hg.factor, c)
                self.upsample_layer = _Resample(c, c * hg.factor)
        self.layer_norm = make_layer_norm(c)
        bert_init_(self)
        self._layerdrop_gen = torch.Generator()
        self._layerdrop_gen.manual_seed(0)

    # LayerDrop -------------------------------------------------------------------------------------------------------
    def reseed_layerdrop(self, seed: int) -> None:
        self._layerdrop_gen.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)

    def _run(self, layers: nn.ModuleList, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        if self.training and self.layerdrop > 0 and len(layers):
            keep = (torch.rand(len(layers), generator=self._layerdrop_gen) > self.layerdrop).tolist()
        else:
            keep = [True] * len(layers)
        for layer, k in zip(layers, keep):
            if k:
                x = layer(x, attn_mask)
        return x

    # Hourglass -------------------------------------------------------------------------------------------------------
    def _hourglass(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        hg = self.hourglass
        assert hg is not None
        k = hg.factor
        b, t, c = x.shape
        res = x
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        diff = (k - t % k) % k
        if diff:
            x = F.pad(x, (0, 0, 0, diff))
        short_mask = None
        if padding_mask is not None:
            pm = F.pad(padding_mask, (0, diff), value=True) if diff else padding_mask
            short_mask = pm.view(b, -1, k).all(dim=-1)  # padded iff all k source frames are padded
        if self.resample == "naive":
            xs = x.view(b, -1, k, c).mean(dim=2)
        else:
            xs = self.downsample_layer.linear(x.reshape(b, -1, k * c))
        xs = self._run(self.hourglass_layers, xs, _attn_mask(short_mask))
        if self.resample == "naive":
            up = xs.repeat_interleave(k, dim=1)
        else:
            up = self.upsample_layer.linear(xs).reshape(b, -1, c)
        return up[:, :t] + res

    # forward ---------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: B x T x C; padding_mask: B x T bool (True = padded) or None. Returns B x T x C."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        pos = self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        x = x + pos
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        attn_mask = _attn_mask(padding_mask)
        x = self._run(self.layers, x, attn_mask)
        if self.hourglass is not None:
            x = self._hourglass(x, padding_mask)
            x = self._run(self.post_layers, x, attn_mask)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x
