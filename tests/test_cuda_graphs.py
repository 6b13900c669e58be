"""CUDA-graph replay of the CTC forward (common/cuda_graphs.py).

On CPU: the bucketing arithmetic, the clear errors, and the property that makes graph capture possible at all: the
forward performs no host-device synchronisation. ``FakeTensorMode`` raises on exactly the operations that would
synchronise (``.item()``, ``bool(tensor)``, data-dependent shapes such as ``nonzero``), so a forward that completes
under it can be captured. On a CUDA machine: replayed logits equal eager ones, padding buckets share graphs, and
shapes beyond ``max_graphs`` run eagerly.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import inference
from common.cuda_graphs import GraphedInference, padded_length
from wav2vec2 import Wav2Vec2ForCTC, preset

NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
               dropout_input=0.0, dropout_features=0.0, final_dropout=0.0)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_padded_length():
    assert padded_length(1, 4000) == 4000
    assert padded_length(4000, 4000) == 4000
    assert padded_length(4001, 4000) == 8000
    assert padded_length(104000, 4000) == 104000
    assert padded_length(12345, 0) == 12345
    with pytest.raises(ValueError):
        padded_length(0, 4000)


def test_fake_tensor_mode_catches_host_syncs():
    """The oracle of the next test works: it rejects the operations that would break a capture."""
    with FakeTensorMode():
        t = torch.randn(3)
        from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

        with pytest.raises(DataDependentOutputException):
            bool(t.sum() > 0)
        with pytest.raises(DataDependentOutputException):
            t.max().item()
        with pytest.raises(DynamicOutputShapeException):
            t.nonzero()


@pytest.mark.parametrize("name", ["tiny", "base", "large"])
def test_ctc_forward_has_no_host_sync(name):
    """The inference forward (plain and padded-batch paths; Base with its default Hourglass encoder) runs
    end to end on fake tensors, so it has no data-dependent host synchronisation and CUDA graphs can capture it."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = Wav2Vec2ForCTC(preset(name, **NO_DROP), 32).eval()
        model.w2v_model.feature_extractor.mask_padding = True
        x = torch.randn(2, 24000)
        lengths = torch.tensor([24000, 17000])
        with torch.no_grad():
            logits, out_lengths = model(x, None)
            assert out_lengths is None and tuple(logits.shape) == (2, 74, 32)
            logits, out_lengths = model(x, lengths)
            assert tuple(logits.shape) == (2, 74, 32) and tuple(out_lengths.shape) == (2,)


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_bucket_padding_keeps_the_unpadded_result(name):
    """What --cuda_graph_pad relies on: an utterance zero-padded up to its bucket and run with its true length gives
    the logits of its unpadded forward on the valid frames (Base: with its default Hourglass encoder)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset(name, **NO_DROP), 32).eval()
    model.w2v_model.feature_extractor.mask_padding = True
    gen = torch.Generator().manual_seed(3)
    for n in (13000, 37123):
        x = 0.1 * torch.randn(1, n, generator=gen)
        with torch.no_grad():
            ref, _ = model(x, None)
            got, out_lengths = model(F.pad(x, (0, padded_length(n, 4000) - n)), torch.tensor([n]))
        frames = int(out_lengths[0])
        assert frames == ref.shape[1] and got.shape[1] > frames or padded_length(n, 4000) == n
        torch.testing.assert_close(got[:, :frames], ref, rtol=1e-4, atol=1e-4)


def test_graphs_need_a_cuda_model():
    model = Wav2Vec2ForCTC(preset("tiny", **NO_DROP), 8).eval()
    with pytest.raises(ValueError, match="CUDA device.*cpu"):
        GraphedInference(model)


def test_capture_graphs_plans_one_graph_per_batch_shape(monkeypatch):
    """inference.py captures, before its timed loop, one graph per (batch size, longest length, padded?) of its
    batches; batches whose utterances all have one length run without lengths (the unpadded fast path)."""
    calls = {}

    class Recorder:
        def __init__(self, model, pad_to):
            calls["pad_to"] = pad_to

        def prepare(self, shapes):
            calls["shapes"] = list(shapes)

        def summary(self):
            return "recorded"

    import common.cuda_graphs

    monkeypatch.setattr(common.cuda_graphs, "GraphedInference", Recorder)
    import contextlib

    inference.capture_graphs(object(), [[100], [100], [90], [100, 80], [100, 100], [120, 80]], 16,
                             contextlib.nullcontext, verbose=False)
    assert calls["pad_to"] == 16
    assert calls["shapes"] == [(1, 90, False), (1, 100, False), (2, 100, False), (2, 100, True), (2, 120, True)]


# ----------------------------------------------------------------------------------------------- on a GPU


def _cuda_model(name="tiny"):
    torch.backends.cudnn.allow_tf32 = False  # FP32 comparisons at 1e-4: no TF32 convolutions / matmuls
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset(name, **NO_DROP), 32).eval().cuda()
    model.w2v_model.feature_extractor.mask_padding = True
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@cuda
@pytest.mark.parametrize("name", ["tiny", "base"])
def test_replay_equals_eager(name):
    model = _cuda_model(name)
    graphed = GraphedInference(model)
    gen = torch.Generator().manual_seed(1)
    for n in (16000, 16000, 23000):
        x = (0.1 * torch.randn(1, n, generator=gen)).cuda()
        with torch.no_grad():
            ref, _ = model(x, None)
        got, out_lengths = graphed(x)
        assert out_lengths is None
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert graphed.num_graphs == 2 and graphed.replays == 3


@cuda
def test_padding_buckets_share_graphs_and_keep_results():
    model = _cuda_model()
    graphed = GraphedInference(model, pad_to=4000)
    gen = torch.Generator().manual_seed(2)
    for n in (13000, 14500, 15999, 16001):
        x = (0.1 * torch.randn(1, n, generator=gen)).cuda()
        with torch.no_grad():
            ref, _ = model(x, None)
        got, out_lengths = graphed(x)
        frames = int(out_lengths[0])
        assert frames == ref.shape[1]
        torch.testing.assert_close(got[:, :frames], ref, rtol=1e-4, atol=1e-4)
    assert graphed.num_graphs == 2  # 16000 and 20000 samples


@cuda
def test_forward_with_lengths_never_synchronises():
    """What capture needs, checked directly: no host-device synchronisation in the padded-batch forward."""
    model = _cuda_model()
    x = 0.1 * torch.randn(2, 20000, device="cuda")
    lengths = torch.tensor([20000, 13000], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            model(x, lengths)
            model(x, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
def test_graphs_refuse_parameters_that_require_grad():
    model = _cuda_model()
    next(model.parameters()).requires_grad_(True)
    with pytest.raises(ValueError, match="requires_grad"):
        GraphedInference(model)


@cuda
def test_beyond_max_graphs_runs_eagerly():
    model = _cuda_model()
    graphed = GraphedInference(model, max_graphs=1)
    for n in (16000, 20000, 16000):
        graphed(0.1 * torch.randn(1, n, device="cuda"))
    assert graphed.num_graphs == 1 and graphed.eager_calls == 1 and graphed.replays == 2
