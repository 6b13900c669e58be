"""Device placement of the accelerator code paths, checked without an accelerator.

The model takes different branches on a GPU than on the CPU (the positional convolution through ``F.conv1d`` instead
of the FFT, layer 0 in one chunk instead of cache-sized ones, no chunked no-grad waveform block). A tensor created
without ``device=`` in such a branch would land on the CPU and fail only on a GPU. Running the forward on the
``meta`` device takes the same non-CPU branches, and meta refuses to mix with CPU tensors (0-dim CPU scalars aside,
which CUDA accepts as well), so a forward that completes here has no stray host tensor.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from wav2vec2 import Wav2Vec2ForCTC, preset

NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
               dropout_input=0.0, dropout_features=0.0, final_dropout=0.0)


@pytest.fixture
def meta_autocast():
    """``torch.is_autocast_enabled('meta')`` raises (meta has no autocast); answer False for it as for a GPU
    without autocast."""
    original = torch.is_autocast_enabled

    def is_enabled(*args):
        return False if args and args[0] == "meta" else original(*args)

    with mock.patch.object(torch, "is_autocast_enabled", is_enabled):
        yield


def test_meta_rejects_host_tensors():
    """The oracle works: a full-size CPU tensor in a meta computation is an error."""
    with pytest.raises(RuntimeError, match="device"):
        torch.empty(3, device="meta") + torch.zeros(3)


@pytest.mark.parametrize("name", ["tiny", "base", "large"])
def test_inference_forward_stays_on_the_device(name, meta_autocast):
    model = Wav2Vec2ForCTC(preset(name, **NO_DROP), 32).eval().to("meta")
    model.w2v_model.feature_extractor.mask_padding = True
    x = torch.empty(2, 24000, device="meta")
    with torch.no_grad():
        logits, out_lengths = model(x, None)
        assert logits.device.type == "meta" and tuple(logits.shape) == (2, 74, 32) and out_lengths is None
        logits, out_lengths = model(x, torch.tensor([24000, 17000], device="meta"))
        assert logits.device.type == "meta" and out_lengths.device.type == "meta"


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_finetuning_forward_and_backward_stay_on_the_device(name, meta_autocast):
    """Training mode with time and channel masking drawn on the device, padded batch, then backward."""
    model = Wav2Vec2ForCTC(preset(name, mask_prob=0.5, mask_channel_prob=0.1), 32).train().to("meta")
    logits, out_lengths = model(torch.empty(2, 24000, device="meta"), torch.tensor([24000, 17000], device="meta"))
    assert logits.device.type == "meta" and out_lengths.device.type == "meta"
    logits.float().sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "w2v_encoder.proj.weight" in grads and any(n.startswith("w2v_encoder.w2v_model.encoder.") for n in grads)
    assert all(g.device.type == "meta" for g in grads.values())
