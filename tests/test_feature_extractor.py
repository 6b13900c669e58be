"""The time-major split-GEMM convolution against torch's own conv1d (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from wav2vec2.feature_extractor import conv1d_time_major


@pytest.mark.parametrize("cin,cout,k,s,t,b,bias", [
    (1, 8, 10, 5, 203, 2, False),   # waveform layer (unfolded path)
    (16, 12, 3, 2, 41, 3, True),    # k = s + 1
    (16, 12, 2, 2, 40, 1, False),   # k = s
    (16, 12, 7, 3, 50, 2, True),    # k = 2s + 1
    (16, 12, 5, 2, 33, 2, False),   # k = 2s + 1, odd length
    (16, 12, 3, 3, 30, 2, True),    # k = s, t an exact multiple
    (16, 12, 4, 1, 12, 2, False),   # stride 1
])
def test_conv1d_time_major_matches_conv1d(cin, cout, k, s, t, b, bias):
    g = torch.Generator().manual_seed(k * 100 + s)
    x = torch.randn(b, cin, t, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, cin, k, generator=g, dtype=torch.float64, requires_grad=True)
    bb = torch.randn(cout, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    ref = F.conv1d(x, w, bb, stride=s)
    xt = x.detach().transpose(1, 2).contiguous().requires_grad_(True)
    got = conv1d_time_major(xt, w, bb, s)
    torch.testing.assert_close(got, ref.transpose(1, 2), rtol=1e-12, atol=1e-12)
    go = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    params = [w] + ([bb] if bias else [])
    ref_grads = torch.autograd.grad(ref, [x] + params, go)
    got_grads = torch.autograd.grad(got, [xt] + params, go.transpose(1, 2))
    torch.testing.assert_close(got_grads[0], ref_grads[0].transpose(1, 2), rtol=1e-12, atol=1e-12)
    for a, c in zip(got_grads[1:], ref_grads[1:]):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_conv1d_time_major_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 4, generator=g, dtype=torch.float64, requires_grad=True)  # B x T x C
    w = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    # C_in * k = 12 <= 64 takes the unfolded path; widen to hit the split-GEMM path too
    x2 = torch.randn(2, 9, 24, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 24, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, d: conv1d_time_major(a, c, d, 2), (x, w, b))
    assert torch.autograd.gradcheck(lambda a, c, d: conv1d_time_major(a, c, d, 2), (x2, w2, b))


def test_conv1d_time_major_bf16_autocast_close_to_fp32():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 101, 64, generator=g)
    w = torch.randn(32, 64, 3, generator=g) * 0.1
    ref = conv1d_time_major(x, w, None, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv1d_time_major(x, w, None, 2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=0.05, atol=0.05)


def test_conv1d_time_major_errors():
    with pytest.raises(ValueError, match="shorter than the convolution kernel"):
        conv1d_time_major(torch.zeros(1, 2, 8), torch.zeros(4, 8, 3), None, 2)
    with pytest.raises(ValueError, match="channels"):
        conv1d_time_major(torch.zeros(1, 20, 8), torch.zeros(4, 6, 3), None, 2)


@pytest.mark.parametrize("lengths", [None, [50, 37, 2]])
def test_time_major_masked_group_norm_matches_group_norm_per_utterance(lengths):
    from wav2vec2.feature_extractor import masked_group_norm

    g = torch.Generator().manual_seed(2)
    norm = torch.nn.GroupNorm(6, 6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.5, 0.5, generator=g)
    x = torch.randn(3, 50, 6, generator=g, dtype=torch.float64) * 3 + 5  # B x T x C, a large mean
    lens = torch.tensor(lengths) if lengths is not None else None
    got = masked_group_norm(x, lens, norm, fp32=False, time_dim=1)
    for i in range(3):
        n = 50 if lengths is None else lengths[i]
        ref = norm(x[i: i + 1, :n].transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(got[i: i + 1, :n], ref, rtol=1e-10, atol=1e-10)
    # small chunks exercise the chunk loop
    from wav2vec2.feature_extractor import _time_major_channel_stats
    m1, v1 = _time_major_channel_stats(x, lens, chunk=7)
    m2, v2 = _time_major_channel_stats(x, lens, chunk=1024)
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(v1, v2)


# --- the waveform layer without autograd (chunked: conv computed twice, the big output written once) ----------------


def _waveform_layer(bias: bool, seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv1d(1, 16, 10, stride=5, bias=bias)
    norm = torch.nn.GroupNorm(16, 16)
    with torch.no_grad():
        conv.weight.normal_(0.0, 0.5, generator=g)
        if bias:
            conv.bias.normal_(0.0, 1.0, generator=g)
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.5, 0.5, generator=g)
    return conv, norm


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lengths", [None, [1000, 637, 27]])
@pytest.mark.parametrize("chunk", [7, 64, 1024])
def test_waveform_block_no_grad_matches_conv_group_norm_gelu(bias, lengths, chunk):
    """Oracle: channel-first F.conv1d -> F.group_norm over each utterance's valid frames -> GELU, in float64."""
    from wav2vec2.feature_extractor import waveform_block_no_grad

    conv, norm = _waveform_layer(bias)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1000, generator=g) * 0.3 + 0.05  # a DC offset: the statistics see a non-zero mean
    lens = torch.tensor(lengths) if lengths is not None else None
    frames = None if lens is None else (lens - 10) // 5 + 1
    with torch.no_grad():
        got = waveform_block_no_grad(x.unsqueeze(-1), frames, conv, norm, chunk=chunk)
    assert got.shape == (3, 199, 16)
    conv64, norm64 = conv.double(), norm.double()
    for i in range(3):
        n = 1000 if lengths is None else lengths[i]
        y = F.conv1d(x[i: i + 1, None, :n].double(), conv64.weight, conv64.bias, stride=5)
        ref = F.gelu(F.group_norm(y, 16, norm64.weight, norm64.bias, norm.eps)).transpose(1, 2)
        torch.testing.assert_close(got[i: i + 1, : ref.shape[1]].double(), ref, rtol=1e-5, atol=1e-5)


def test_conv_block_takes_the_chunked_path_without_autograd_only():
    """The layer-0 block gives the same result with and without autograd (chunked path vs conv + masked norm),
    gradients flow on the autograd path, and under BF16 autocast both paths return BF16 close to each other."""
    from wav2vec2.feature_extractor import ConvBlock

    conv, norm = _waveform_layer(False)
    block = ConvBlock(conv, norm)
    x = (torch.randn(2, 800, generator=torch.Generator().manual_seed(6)) * 0.2).unsqueeze(-1)
    lens = torch.tensor([800, 500])
    with torch.no_grad():
        fast, fl = block(x, lens)
    slow, sl = block(x, lens)
    assert slow.requires_grad and not fast.requires_grad
    assert torch.equal(fl, sl)
    for i, n in enumerate(sl.tolist()):
        torch.testing.assert_close(fast[i, :n], slow[i, :n].detach(), rtol=1e-5, atol=1e-5)
    slow.sum().backward()
    assert conv.weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            fast16, _ = block(x, None)
        slow16, _ = block(x, None)
    assert fast16.dtype == slow16.dtype == torch.bfloat16
    torch.testing.assert_close(fast16.float(), slow16.detach().float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("lengths", [None, [2100, 1500, 3]])
def test_time_major_group_norm_backward_matches_autograd_of_the_formula(lengths):
    """The hand-written backward of the time-major channel norm (chunked, no full-size temporaries) against autograd
    through the textbook masked formula in float64; 2100 frames span three 1024-frame chunks; padded frames get
    outputs (and so gradients) too; gradcheck on a small case."""
    from wav2vec2.feature_extractor import masked_group_norm

    g = torch.Generator().manual_seed(7)
    norm = torch.nn.GroupNorm(5, 5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.5, 0.5, generator=g)
    x = (torch.randn(3, 2100, 5, generator=g, dtype=torch.float64) * 2 + 3).requires_grad_(True)
    dy = torch.randn(3, 2100, 5, generator=g, dtype=torch.float64)
    lens = torch.tensor(lengths) if lengths is not None else None
    got = masked_group_norm(x, lens, norm, fp32=False, time_dim=1)
    gx, gw, gb = torch.autograd.grad(got, (x, norm.weight, norm.bias), dy)

    valid = torch.ones(3, 2100, 1, dtype=torch.float64) if lens is None else \
        (torch.arange(2100)[None, :] < lens[:, None]).double().unsqueeze(-1)
    n = valid.sum(1, keepdim=True)
    mean = (x * valid).sum(1, keepdim=True) / n
    var = ((x - mean).square() * valid).sum(1, keepdim=True) / n
    ref = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    rx, rw, rb = torch.autograd.grad(ref, (x, norm.weight, norm.bias), dy)
    torch.testing.assert_close(gx, rx, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gw, rw, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gb, rb, rtol=1e-9, atol=1e-9)

    small = torch.randn(2, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.rand(3, generator=g, dtype=torch.float64, requires_grad=True)
    from wav2vec2.feature_extractor import _TimeMajorChannelNorm

    small_lens = None if lengths is None else torch.tensor([9, 4])
    assert torch.autograd.gradcheck(lambda a, ww, bb: _TimeMajorChannelNorm.apply(a, small_lens, ww, bb, 1e-5),
                                    (small, w, b))
