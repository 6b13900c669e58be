"""The convolutional waveform encoder (fairseq ``ConvFeatureExtractionModel``).

Seven 1-D convolutions (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2 by default) turn a 16 kHz waveform
into 50 frames per second. Each block is ``Sequential(conv, dropout(p=0), [norm], GELU)`` so that its state
dict keys are fairseq's: ``conv_layers.{i}.0.weight`` (conv), ``conv_layers.0.2.{weight,bias}`` (GroupNorm,
"default" mode) or ``conv_layers.{i}.2.1.{weight,bias}`` (LayerNorm, "layer_norm" mode).

Padding awareness: given per-utterance sample lengths, the layer-0 GroupNorm takes its mean and variance over
each utterance's valid frames only, so a zero-padded batch yields on every valid frame what the utterance
alone would give. (The reference only does this in its inference path; LayerNorm is per frame and needs no
masking.)

Layout: the blocks compute time-major (B x T x C) with each convolution as matrix products on views of its input
(:func:`conv1d_time_major`), not ``F.conv1d`` on B x C x T. On the 2-core CPU this runs the Base layer-1 convolution
forward at ~205 instead of ~175 GFLOP/s and its forward + backward ~1.25x faster than oneDNN's conv1d (which also
re-lays out its input), and the encoder gets its B x T x C input without a transpose. ``forward`` still returns
B x C x T (a transposed view); ``forward_time_major`` returns B x T x C.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import Wav2Vec2Config
from .layers import Fp32GroupNorm, Fp32LayerNorm, TransposeLast, conv_out_length

__all__ = ["ConvFeatureExtractor", "ConvBlock", "masked_group_norm", "conv1d_time_major"]


def _fold_norm(mean: torch.Tensor, var: torch.Tensor, eps: float, weight: Optional[torch.Tensor],
               bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rstd, scale, shift)`` with ``(x - mean) * rstd * weight + bias == x * scale + shift``: normalisation and
    affine folded into one multiply-add over the big tensor (``weight`` / ``bias`` shaped to broadcast, or None)."""
    rstd = torch.rsqrt(var + eps)
    scale = rstd * weight if weight is not None else rstd
    shift = bias - mean * scale if bias is not None else -mean * scale
    return rstd, scale, shift


def masked_group_norm(
    x: torch.Tensor, lengths: Optional[torch.Tensor], norm: nn.GroupNorm, fp32: bool = True, time_dim: int = -1
) -> torch.Tensor:
    """Per-channel normalisation (GroupNorm with groups == channels) with statistics over the first
    ``lengths[b]`` frames of each utterance (all frames when ``lengths`` is None). x: B x C x T (``time_dim=-1``)
    or B x T x C (``time_dim=1``). All frames are normalised with those statistics."""
    if norm.num_groups != norm.num_channels:
        raise ValueError("masked group norm supports num_groups == num_channels only (the wav2vec 2.0 case)")
    if time_dim not in (1, -1):
        raise ValueError("time_dim must be 1 (B x T x C) or -1 (B x C x T)")
    dtype = x.dtype
    xf = x.float() if fp32 else x
    t = xf.shape[time_dim]
    chan = (1, -1, 1) if time_dim == -1 else (1, 1, -1)  # broadcast shape of per-channel parameters
    if time_dim == 1 and not torch.jit.is_tracing():  # (the chunk loop would be unrolled for one length)
        weight = norm.weight.to(xf.dtype) if norm.affine else None
        bias = norm.bias.to(xf.dtype) if norm.affine else None
        return _TimeMajorChannelNorm.apply(xf, lengths, weight, bias, norm.eps).to(dtype)
    elif lengths is None:
        var, mean = torch.var_mean(xf, dim=time_dim, keepdim=True, correction=0)
    else:
        valid = (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).to(xf.dtype)  # B x T
        valid = valid[:, None, :] if time_dim == -1 else valid[:, :, None]
        count = valid.sum(time_dim, keepdim=True).clamp_min(1.0)
        mean = (xf * valid).sum(time_dim, keepdim=True) / count
        var = ((xf - mean).square_() * valid).sum(time_dim, keepdim=True) / count  # biased, as GroupNorm
    weight = norm.weight.to(var.dtype).view(chan) if norm.affine else None
    bias = norm.bias.to(var.dtype).view(chan) if norm.affine else None
    _, scale, shift = _fold_norm(mean, var, norm.eps, weight, bias)
    return torch.addcmul(shift, xf, scale).to(dtype)


class _TimeMajorChannelNorm(torch.autograd.Function):
    """Per-utterance, per-channel normalisation of a time-major x (B x T x C) with statistics over the valid frames
    (``lengths``; None: all), then ``* weight + bias``; every frame is normalised. Forward and backward each read
    the big tensors a few times in cache-sized chunks; autograd through the chunked statistics instead slices x
    into ~25 pieces whose backward each zero-fills and adds a full-size gradient (measured: 1.18 s against 0.42 s
    for ``var_mean`` and ~0.1 s for this, Base layer 0, 2 x 8 s, forward + backward).

    Backward (n valid frames, g = dy * weight, d = x - mean, r = rstd, v = 1 on valid frames):
    dx = r * g + v * (-r * sum(g) / n - r^3 * d * sum(g * d) / n), sums over all frames (padded frames' outputs
    depend on the statistics too); dweight = sum(dy * d * r); dbias = sum(dy) (sums over batch and frames)."""

    @staticmethod
    def forward(ctx, x, lengths, weight, bias, eps):  # type: ignore[override]
        mean, var = _time_major_channel_stats(x, lengths)
        rstd, scale, shift = _fold_norm(mean, var, eps, weight.view(1, 1, -1) if weight is not None else None,
                                        bias.view(1, 1, -1) if bias is not None else None)
        ctx.save_for_backward(x, mean, rstd, weight, lengths)
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        return torch.addcmul(shift, x, scale)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, mean, rstd, weight, lengths = ctx.saved_tensors
        b, t, c = x.shape
        dy = dy.contiguous()
        chunks = _frame_chunks(t, _chunk_frames(x, t))
        sum_dy = torch.zeros_like(mean)  # B x 1 x C
        sum_dy_d = torch.zeros_like(mean)
        for i, j in chunks:  # per-utterance sums over ALL frames, in cache
            g = dy[:, i:j]
            sum_dy += g.sum(1, keepdim=True)
            sum_dy_d += (g * (x[:, i:j] - mean)).sum(1, keepdim=True)
        w = weight.view(1, 1, -1) if weight is not None else torch.ones_like(mean)
        count = (lengths.to(x.dtype).clamp_min(1.0).view(b, 1, 1) if lengths is not None
                 else torch.full((b, 1, 1), float(t), dtype=x.dtype, device=x.device))
        a = rstd * w  # dx = a * dy + v * (coef_x * x + coef_0)
        coef_x = -(rstd ** 3) * w * sum_dy_d / count
        coef_0 = -a * sum_dy / count - coef_x * mean
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty_like(x)
            for i, j in chunks:
                out = grad_x[:, i:j]
                if lengths is None:
                    torch.addcmul(coef_0, x[:, i:j], coef_x, out=out)
                else:
                    torch.mul(torch.addcmul(coef_0, x[:, i:j], coef_x), _valid_frames(lengths, i, j, x.dtype), out=out)
                out.addcmul_(dy[:, i:j], a)
        grad_w = (sum_dy_d * rstd).sum((0, 1)) if ctx.has_weight and ctx.needs_input_grad[2] else None
        grad_b = sum_dy.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x, None, grad_w, grad_b, None


def _chunk_frames(x: torch.Tensor, t: int) -> int:
    """Frames per chunk of the chunked passes: cache-sized on CPU; on GPUs one chunk (fewer, larger kernels)."""
    return 1024 if x.device.type == "cpu" else max(1, t)


def _frame_chunks(t: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering frames 0..t in pieces of ``chunk``."""
    return [(i, min(i + chunk, t)) for i in range(0, t, chunk)]


def _valid_frames(lengths: torch.Tensor, i: int, j: int, dtype: torch.dtype) -> torch.Tensor:
    """B x (j - i) x 1: 1 on frames i..j-1 that lie inside each utterance (``lengths`` valid frames), else 0."""
    return (torch.arange(i, j, device=lengths.device)[None, :] < lengths[:, None]).to(dtype).unsqueeze(-1)


def _time_major_channel_stats(x: torch.Tensor, lengths: Optional[torch.Tensor], chunk: Optional[int] = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance, per-channel mean and biased variance over the valid frames of x (B x T x C), each B x 1 x C.

    Two passes (mean, then squared deviations: no cancellation), in chunks of ``chunk`` frames so that the
    temporaries stay in cache: ``torch.var_mean`` over the frame axis of a time-major tensor is a strided reduction
    and took ~46 ms for a 6.5 s utterance's 20,799 x 512 layer-0 output on the 2-core CPU, this ~10 ms."""
    b, t, _ = x.shape
    chunks = _frame_chunks(t, chunk or _chunk_frames(x, t))

    if lengths is None:
        count = torch.full((b, 1, 1), float(t), dtype=x.dtype, device=x.device)
        mean = x.sum(1, keepdim=True) / count
    else:
        count = lengths.to(x.dtype).clamp_min(1.0).view(b, 1, 1)
        mean = sum((x[:, i:j] * _valid_frames(lengths, i, j, x.dtype)).sum(1, keepdim=True) for i, j in chunks) / count
    sq = torch.zeros_like(mean)
    for i, j in chunks:
        d = (x[:, i:j] - mean).square()
        sq = sq + (d if lengths is None else d * _valid_frames(lengths, i, j, x.dtype)).sum(1, keepdim=True)
    return mean, sq / count


NARROW_CONV_WIDTH = 64  # C_in * k up to this (the waveform layer): one product over an unfolded copy


def _narrow_conv_frames(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, start: int,
                        stop: int) -> torch.Tensor:
    """Output frames ``start..stop-1`` of the time-major convolution of a narrow input (``C_in * k <=
    NARROW_CONV_WIDTH``) as one product over the unfolded input frames (autograd-friendly; the waveform needs no
    gradient). x: B x T x C_in; returns B x (stop - start) x C_out."""
    b, _, cin = x.shape
    cout, _, k = weight.shape
    w = weight.permute(2, 1, 0).reshape(k * cin, cout)  # w[j*C_in + c, o] = weight[o, c, j]
    win = x.unfold(1, k, stride)[:, start:stop]  # B x n x C_in x k (a view)
    n = stop - start
    win = win.reshape(b, n, k) if cin == 1 else win.transpose(2, 3).reshape(b, n, k * cin)
    out = win @ w
    return out + bias.to(out.dtype) if bias is not None else out  # (autocast: stay in its dtype)


def waveform_block_no_grad(x: torch.Tensor, lengths: Optional[torch.Tensor], conv: nn.Conv1d, norm: nn.GroupNorm,
                           chunk: int = 1024) -> torch.Tensor:
    """``gelu(masked_group_norm(conv(x)))`` for the waveform layer (x: B x L x 1, time-major), without autograd, in
    chunks of ``chunk`` output frames that stay in cache. ``lengths``: valid FRAMES of the output (or None).

    The layer-0 output of a 6.5 s utterance is 20,799 x 512 floats (43 MB); computed whole, it is written once and
    read three more times (statistics, normalisation, GELU) from memory. Here each chunk's convolution (a K = 10
    product, cheap) is computed twice, once for the statistics and once for the output, so the big tensor is
    written once and never read. Statistics: each chunk's mean and sum of squared deviations, merged exactly
    (Chan et al.'s pairwise update) in float32, as stable as the two-pass formula. Under autocast the convolution
    runs in the autocast dtype and the statistics and normalisation in float32, as on the autograd path."""
    b, n, _ = x.shape
    cout, _, k = conv.weight.shape
    s = int(conv.stride[0])
    t_out = (n - k) // s + 1
    if t_out < 1:
        raise ValueError(f"input of {n} frames is shorter than the convolution kernel ({k})")
    bounds = _frame_chunks(t_out, chunk)

    def conv_chunk(i: int, j: int) -> torch.Tensor:
        return _narrow_conv_frames(x, conv.weight, conv.bias, s, i, j)

    total = None
    for i, j in bounds:  # pass 1: statistics, merged chunk by chunk
        y = conv_chunk(i, j).float()
        if lengths is None:
            cnt = torch.full((b, 1, 1), float(j - i), device=x.device)
            m = y.mean(1, keepdim=True)
            m2 = (y - m).square_().sum(1, keepdim=True)
        else:
            v = _valid_frames(lengths, i, j, torch.float32)
            cnt = v.sum(1, keepdim=True)
            m = (y * v).sum(1, keepdim=True) / cnt.clamp_min(1.0)
            m2 = ((y - m).square_() * v).sum(1, keepdim=True)
        if total is None:
            total, mean, sq = cnt, m, m2
        else:
            new_total = total + cnt
            delta = m - mean
            frac = cnt / new_total.clamp_min(1.0)
            mean = mean + delta * frac
            sq = sq + m2 + delta.square() * total * frac
            total = new_total
    var = sq / total.clamp_min(1.0)
    _, scale, shift = _fold_norm(mean, var, norm.eps, norm.weight.float().view(1, 1, -1) if norm.affine else None,
                                 norm.bias.float().view(1, 1, -1) if norm.affine else None)
    out = None
    for i, j in bounds:  # pass 2: recompute, normalise, GELU, write once
        y = conv_chunk(i, j)
        if out is None:
            out = torch.empty(b, t_out, cout, dtype=y.dtype, device=x.device)
        dst = out[:, i:j]
        if y.dtype == torch.float32:
            torch.addcmul(shift, y, scale, out=dst)
        else:
            dst.copy_(torch.addcmul(shift, y.float(), scale))
        torch.ops.aten.gelu_(dst)  # in place: no chunk-sized temporary to copy
    return out


def _bmm_into(out: torch.Tensor, a: torch.Tensor, w: torch.Tensor, accumulate: bool) -> None:
    """out (B x T x N, any BLAS-compatible strides) = / += a (B x T x K, rows contiguous) @ w (K x N), no copies."""
    for i in range(a.shape[0]):  # one GEMM per utterance: a and out are strided views that cannot be flattened
        if accumulate:  # addmm with out=self: in place, and visible to torch's FLOP counter (addmm_ is not)
            torch.addmm(out[i], a[i], w, out=out[i])
        else:
            torch.mm(a[i], w, out=out[i])


def _split_terms(x: torch.Tensor, k: int, s: int, t_out: int):
    """(view of x: B x T_out x (n*C_in), first kernel tap, n taps) for each matrix-product term of the convolution."""
    b, _, cin = x.shape
    q, r = divmod(k, s)
    for j in range(q):  # taps j*s .. j*s+s-1: rows of the view x[:, j*s : j*s + T_out*s] -> B x T_out x (s*C_in)
        yield x[:, j * s: j * s + t_out * s].reshape(b, t_out, s * cin), j * s, s
    for i in range(r):  # the remaining taps one by one: frames q*s+i, q*s+i+s, ... (row stride s*C_in)
        yield x[:, q * s + i:].unfold(1, 1, s)[:, :t_out].squeeze(-1), q * s + i, 1


class _TimeMajorConv(torch.autograd.Function):
    """The split-GEMM convolution with a hand-written backward: the input gradient is accumulated in place into
    one buffer (autograd through the slices would allocate and zero-fill a full-size buffer per term)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int):  # type: ignore[override]
        b, t, cin = x.shape
        cout, _, k = weight.shape
        t_out = (t - k) // stride + 1
        w = weight.permute(2, 1, 0).contiguous()  # k x C_in x C_out: w[j, c, o] = weight[o, c, j]
        out = x.new_empty(b, t_out, cout)
        for n_term, (a, tap, n) in enumerate(_split_terms(x, k, stride, t_out)):
            _bmm_into(out, a, w[tap: tap + n].reshape(n * cin, cout), accumulate=n_term > 0)
        if bias is not None:
            out += bias
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, w = ctx.saved_tensors
        k, cin, cout = w.shape
        g = grad_out.contiguous()
        t_out = g.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x, dtype=g.dtype)
            for dst, tap, n in _split_terms(grad_x, k, ctx.stride, t_out):
                _bmm_into(dst, g, w[tap: tap + n].reshape(n * cin, cout).t(), accumulate=True)
        if ctx.needs_input_grad[1]:
            gw = torch.zeros_like(w, dtype=g.dtype)  # k x C_in x C_out
            for a, tap, n in _split_terms(x, k, ctx.stride, t_out):
                dst = gw[tap: tap + n].view(n * cin, cout)
                for i in range(g.shape[0]):
                    torch.addmm(dst, a[i].t(), g[i], out=dst)
            grad_w = gw.permute(2, 1, 0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(dim=(0, 1))
        return grad_x, grad_w, grad_b, None


def conv1d_time_major(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int) -> torch.Tensor:
    """``F.conv1d(x.transpose(1, 2), weight, bias, stride).transpose(1, 2)`` (no padding, no dilation) for a
    time-major x (B x T x C_in, contiguous) and weight C_out x C_in x k; returns B x T_out x C_out.

    Write k = q * stride + r. Output frame t reads input frames [t*s, t*s + k): q blocks of ``stride`` consecutive
    frames, which are rows of the zero-copy view x[:, j*s : j*s + T_out*s] -> B x T_out x (s*C_in), plus r single
    frames (a strided view). So the convolution is q (+ r) matrix products with slices of the re-ordered weight,
    no im2col copy. Narrow inputs (the waveform layer) use one product over an unfolded copy.
    """
    if torch.jit.is_tracing():  # shapes are traced values here: keep the graph length-generic with conv1d
        return F.conv1d(x.transpose(1, 2), weight, bias, stride=stride).transpose(1, 2)
    b, t, cin = x.shape
    cout, wcin, k = weight.shape
    if wcin != cin:
        raise ValueError(f"input has {cin} channels, the convolution expects {wcin}")
    s = int(stride)
    t_out = (t - k) // s + 1
    if t_out < 1:
        raise ValueError(f"input of {t} frames is shorter than the convolution kernel ({k})")
    if cin * k <= NARROW_CONV_WIDTH:  # the waveform layer
        return _narrow_conv_frames(x, weight, bias, s, 0, t_out)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):  # cast once here instead of inside every product
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device_type, enabled=False):
            return _TimeMajorConv.apply(x.contiguous(), weight, bias, s)
    return _TimeMajorConv.apply(x.contiguous(), weight, bias, s)


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
        """x: B x T x C_in (time-major) -> (B x T_out x C_out, output lengths or None)."""
        conv = self.conv
        norm = self.norm
        if lengths is not None:
            lengths = conv_out_length(lengths, conv.kernel_size[0], conv.stride[0])
        if (isinstance(norm, nn.GroupNorm) and conv.in_channels * conv.kernel_size[0] <= NARROW_CONV_WIDTH
                and x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.jit.is_tracing()):
            return waveform_block_no_grad(x, lengths, conv, norm), lengths  # (GPU: fewer, larger kernels win)
        x = conv1d_time_major(x, conv.weight, conv.bias, conv.stride[0])
        if norm is not None:
            if isinstance(norm, nn.GroupNorm):
                x = masked_group_norm(x, lengths, norm, fp32=True, time_dim=1)  # statistics in float32
            else:  # "layer_norm" mode: Sequential(TransposeLast, LayerNorm, TransposeLast); time-major needs no transposes
                x = norm[1](x)
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

    def forward_time_major(
        self, waveforms: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """waveforms: B x L; lengths: B valid samples or None (no padding). Returns (B x T x E, frame lengths)."""
        x = waveforms.unsqueeze(-1)
        frame_lengths = lengths if (lengths is not None and self.mask_padding) else None
        for block in self.conv_layers:
            x, frame_lengths = block(x, frame_lengths)
        if lengths is not None and frame_lengths is None:
            frame_lengths = self.output_lengths(lengths)
        return x, frame_lengths

    def forward(
        self, waveforms: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """waveforms: B x L; lengths: B valid samples or None (no padding). Returns (B x E x T, frame lengths);
        the features are a transposed view of :meth:`forward_time_major`'s."""
        x, frame_lengths = self.forward_time_major(waveforms, lengths)
        return x.transpose(1, 2), frame_lengths
