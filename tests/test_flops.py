"""The shape-based FLOP counts (wav2vec2/flops.py) against torch's own FLOP counter on the real forward/backward.

Forward-only counts run the training-mode forward without its backward: in eval mode the CPU computes the
positional convolution as an FFT, the same result by another algorithm, which no counter sees. Without autograd the
CPU also computes the first convolution twice, in cache-sized chunks (statistics, then output): work the model FLOPs
do not count, added to the expectation (``recomputed``).

Two known gaps of ``torch.utils.flop_counter`` are worked around so that it can serve as the oracle: attention runs
on SDPA's math backend (the fused CPU kernel is not counted), and a grouped convolution's backward is replaced by
its two products (input and weight gradient, each the forward's cost), since the counter charges the weight gradient
as if the convolution were ungrouped. The contrastive similarities are computed here as one matmul of every masked
frame against every target of its utterance, so the tests use ``num_negatives = masked frames - 1``, where that is
exactly the 1 + negatives products per row that the model FLOPs count.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from wav2vec2.config import preset
from wav2vec2.flops import ctc_flops, extractor_frames, pretraining_flops
from wav2vec2.model import Wav2Vec2ForCTC, Wav2Vec2Model

NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
               dropout_input=0.0, dropout_features=0.0)
B, L = 2, 8400  # 26 frames: not a multiple of the Hourglass factors 3 and 4


def counted(fn) -> float:
    """FLOPs torch counts for ``fn()``, with the grouped-convolution backward charged as two forward products."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    ops = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    total = fc.get_total_flops()
    if "aten.convolution_backward" in ops:  # only the positional convolution is an aten convolution
        total += 2 * ops["aten.convolution"] - ops["aten.convolution_backward"]
    return float(total)


def recomputed(cfg, frozen_extractor: bool) -> float:
    """The CPU's no-grad first convolution (GroupNorm extractor) computes its product a second time."""
    if not frozen_extractor or cfg.extractor_mode != "default":
        return 0.0
    c_out, kernel, _ = cfg.conv_layers[0]
    return 2.0 * B * extractor_frames(cfg, L)[0] * kernel * c_out


def fixed_mask(cfg, m: int) -> torch.Tensor:
    t = extractor_frames(cfg, L)[-1]
    mask = torch.zeros(B, t, dtype=torch.bool)
    for b in range(B):
        mask[b, torch.randperm(t, generator=torch.Generator().manual_seed(b))[:m]] = True
    return mask


@pytest.mark.parametrize("overrides", [
    {},
    {"hourglass_transformer": "[1,(2,4),1]"},
    {"hourglass_transformer": "[1,(2,3),1]", "hourglass_resample": "linear"},
    {"quantizer_depth": 2, "target_glu": True, "feature_grad_mult": 0.1},
    {"feature_grad_mult": 0.0, "encoder_embed_dim": 128, "conv_pos": 31},  # no post_extract_proj, odd kernel
], ids=["plain", "hourglass", "hourglass-linear", "deep-quantizer", "frozen-extractor"])
def test_pretraining_step_flops_match_torch_counter(overrides):
    torch.manual_seed(0)
    m = 9
    cfg = preset("tiny", num_negatives=m - 1, **NO_DROP, **overrides)
    model = Wav2Vec2Model(cfg).train()
    x = torch.randn(B, L)
    mask = fixed_mask(cfg, m)

    def step():
        out = model(x, mask_indices=mask)
        (out.logits.float().logsumexp(-1).sum() + out.features_pen).backward()

    extra = recomputed(cfg, cfg.feature_grad_mult == 0)
    assert counted(step) == pytest.approx(pretraining_flops(cfg, B, L, B * m).total + extra, rel=1e-9)

    # forward only (validation)
    forward_only = counted(lambda: model(x, mask_indices=mask))
    assert forward_only == pytest.approx(pretraining_flops(cfg, B, L, B * m, training=False).total + extra, rel=1e-9)


@pytest.mark.parametrize("feature_grad_mult", [0.0, 1.0])
def test_ctc_step_flops_match_torch_counter(feature_grad_mult):
    torch.manual_seed(0)
    cfg = preset("tiny", hourglass_transformer="[1,(2,2),1]", feature_grad_mult=feature_grad_mult, mask_prob=0.0,
                 **NO_DROP)
    model = Wav2Vec2ForCTC(cfg, vocab_size=32).train()
    x = torch.randn(B, L)
    lengths = torch.tensor([L, L - 1000])

    def step():
        logits, _ = model(x, lengths)
        logits.float().logsumexp(-1).sum().backward()

    extra = recomputed(cfg, feature_grad_mult == 0)
    assert counted(step) == pytest.approx(ctc_flops(cfg, B, L, 32).total + extra, rel=1e-9)
    assert counted(lambda: model(x, lengths)) == pytest.approx(ctc_flops(cfg, B, L, 32, training=False).total + extra,
                                                                   rel=1e-9)


def test_ctc_frozen_encoder_costs_its_forward_and_the_projections_weight_gradient():
    """Before --freeze_finetune_updates the encoder runs without autograd (its CPU paths then differ from the
    counted algorithms), and only the output projection learns: one more product of its size."""
    cfg = preset("tiny")
    t = extractor_frames(cfg, L)[-1]
    frozen = ctc_flops(cfg, B, L, 32, encoder_frozen=True)
    assert frozen.forward == ctc_flops(cfg, B, L, 32, training=False).forward
    assert frozen.backward == 2.0 * B * t * cfg.encoder_embed_dim * 32


def test_layerdrop_counted_at_its_rate_in_training_mode():
    """LayerDrop draws the kept layers per update: averaged over 200 updates, torch's count of the training forward
    approaches the expected count; in eval mode every layer runs. A frozen CTC encoder is still in training mode,
    so its layers are dropped too."""
    torch.manual_seed(0)
    m = 4
    cfg = preset("tiny", num_negatives=m - 1, **dict(NO_DROP, encoder_layerdrop=0.5))
    model = Wav2Vec2Model(cfg).train()
    x = torch.randn(1, 4000)
    t = extractor_frames(cfg, 4000)[-1]
    mask = torch.zeros(1, t, dtype=torch.bool)
    mask[0, :m] = True
    counts = []
    for update in range(1, 201):
        model.set_num_updates(update)  # reseeds the LayerDrop stream
        counts.append(counted(lambda: model(x, mask_indices=mask)))
    expected = pretraining_flops(cfg, 1, 4000, m).forward
    every_layer = pretraining_flops(cfg, 1, 4000, m, training=False).forward
    assert expected < every_layer
    assert sum(counts) / len(counts) == pytest.approx(expected, rel=0.05)
    assert min(counts) < expected < max(counts) <= every_layer
    ctc_cfg = preset("tiny", encoder_layerdrop=0.5, freeze_finetune_updates=10)
    frozen = ctc_flops(ctc_cfg, B, L, 32, encoder_frozen=True).forward
    assert frozen == ctc_flops(ctc_cfg, B, L, 32).forward < ctc_flops(ctc_cfg, B, L, 32, training=False).forward


def test_base_step_order_of_magnitude():
    """Base on 15.6 s: about 95 M parameters x 2 x 49 k frames... the familiar 6 N per token rule gives the same
    magnitude (the extractor's convolutions, which reuse weights across 50 frames per second, add to it)."""
    cfg = preset("base", hourglass_transformer=None, encoder_layerdrop=0.0)
    t = extractor_frames(cfg, 250_000)[-1]
    step = pretraining_flops(cfg, 1, 250_000, masked_frames=int(0.5 * t))
    transformer_params = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert 6 * transformer_params * t < step.total < 3 * 6 * transformer_params * t
    assert step.backward == pytest.approx(2 * step.forward, rel=0.1)


def test_tasks_log_the_flops_of_their_batch():
    """The trainer's tasks log each step's model FLOPs: forward and backward in training (with the encoder frozen
    before --freeze_finetune_updates), forward only in validation; the masked-frame count is the step's own."""
    from wav2vec2.criterion import ContrastiveCriterion, CtcCriterion
    from wav2vec2.tasks import FinetuneTask, PretrainTask

    torch.manual_seed(0)
    cfg = preset("tiny", **NO_DROP)
    gen = torch.Generator().manual_seed(0)
    batch = {"source": torch.randn(B, L), "lengths": torch.tensor([L, L]), "padded": False}
    model = Wav2Vec2Model(cfg).train()
    task = PretrainTask(ContrastiveCriterion())
    _, size, log = task.train_step(model, batch, gen)
    assert log["flops"] == pretraining_flops(cfg, B, L, int(size)).total
    model.eval()
    _, size, log = task.valid_step(model, batch, gen)
    assert log["flops"] == pretraining_flops(cfg, B, L, int(size), training=False).total

    ctc_cfg = preset("tiny", freeze_finetune_updates=3, mask_prob=0.0, **NO_DROP)
    ctc = Wav2Vec2ForCTC(ctc_cfg, vocab_size=32).train()
    target = torch.randint(4, 32, (B, 3))
    batch = dict(batch, target=target, target_lengths=torch.tensor([3, 3]))
    task = FinetuneTask(CtcCriterion(blank_index=0, pad_index=1, eos_index=2), symbols=[str(i) for i in range(32)])
    for update, frozen in ((2, True), (3, False)):
        ctc.set_num_updates(update)
        assert task.train_step(ctc, batch, gen)[2]["flops"] == ctc_flops(ctc_cfg, B, L, 32,
                                                                         encoder_frozen=frozen).total
    ctc.eval()
    assert task.valid_step(ctc, batch, gen)[2]["flops"] == ctc_flops(ctc_cfg, B, L, 32, training=False).total


def test_matmul_peak_is_measured_at_full_size_after_a_slow_first_product(monkeypatch):
    """The MFU denominator: the first product on a device also pays for library set-up (cuBLAS handles, kernel
    loading); a size search timed on it stopped at 256 x 256 products, whose rate says little about the device.
    Each size is warmed up before it is timed."""
    import common.peak_flops as peak

    sizes, syncs = [], []
    real_randn = torch.randn

    def recording_randn(*shape, **kw):
        sizes.append(shape[0])
        return real_randn(*shape, **kw)

    def slow_first_sync(device):
        syncs.append(device)
        if len(syncs) == 1:
            import time
            time.sleep(0.05)  # the set-up cost of the very first product

    monkeypatch.setattr(torch, "randn", recording_randn)
    monkeypatch.setattr(peak, "synchronize", slow_first_sync)
    rate = peak.matmul_flops(torch.device("cpu"), torch.float32, budget_s=1.0)
    assert max(sizes) == 1024 and rate > 0  # 256 -> 512 -> 1024 on any CPU that multiplies 256 x 256 in < 16 ms
    assert peak.matmul_dtype(bf16=True) == torch.bfloat16 and peak.matmul_dtype(fp16=True) == torch.float16
