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


@pytest.mark.parametrize("padded", [True, False])
def test_finetuning_ctc_loss_gets_host_frame_lengths(padded, meta_autocast):
    """torch's ``ctc_loss`` copies its length tensors to the host; lengths computed on the device would make that
    copy wait for the whole forward. The batch as the trainer hands it over (``Trainer._to_device``: source and
    lengths on the device, the loader's lengths kept as ``host_lengths``) reaches ``ctc_loss`` with device
    log-probabilities and host frame lengths, padded or not. (meta has no CTC kernel, so the call is recorded.)"""
    from types import SimpleNamespace

    from common.trainer import Trainer
    from wav2vec2.criterion import CtcCriterion
    from wav2vec2.tasks import FinetuneTask

    model = Wav2Vec2ForCTC(preset("tiny", mask_prob=0.0, mask_channel_prob=0.0), 32).train().to("meta")
    lengths = torch.tensor([24000, 17000 if padded else 24000])
    batch = {"source": torch.zeros(2, 24000), "lengths": lengths, "padded": padded,
             "target": torch.tensor([[4, 5, 6], [7, 8, 1]]), "target_lengths": torch.tensor([3, 2])}
    batch = Trainer._to_device(SimpleNamespace(env=SimpleNamespace(device=torch.device("meta"))), batch)
    assert batch["source"].device.type == "meta" and batch["host_lengths"].device.type == "cpu"
    calls = []

    def ctc_loss(log_probs, targets, input_lengths, target_lengths, **kw):
        calls.append((log_probs.device.type, input_lengths.device.type, input_lengths.tolist()))
        return log_probs.sum()

    task = FinetuneTask(CtcCriterion(), symbols=[str(i) for i in range(32)], frame_lengths=model.w2v_model.output_lengths)
    with mock.patch("wav2vec2.criterion.F.ctc_loss", ctc_loss):
        task.train_step(model, batch, None)
    assert calls == [("meta", "cpu", [74, 52] if padded else [74, 74])]
