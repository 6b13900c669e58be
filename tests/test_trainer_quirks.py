"""Trainer-level checks of reference quirks we reproduce or fix (REFERENCE-QUIRKS Q3, Q4, Q8, Q18; docs/DEVIATIONS.md).

Each test pins one fact against an independent oracle: hand-computed schedule and temperature values, torch's own
``clip_grad_norm_`` on an independent copy of the model, a fake clock advanced by known amounts, and the bits of
the float32 tensors in a checkpoint written by ``train.py`` itself.
"""

from __future__ import annotations

import contextlib
import math
import os
import random

import numpy as np
import pytest
import torch

from conftest import RecordingLogger
from test_trainer import _pretrain_args, _toy_trainer, _ToyLoader, _ToyTask

#: the model of ``conftest.MICRO_MODEL`` as a config (no dropout, no LayerDrop: only the tested effects remain)
MICRO = dict(
    conv_feature_layers="[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2", encoder_layers=2, encoder_embed_dim=32,
    encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=8, conv_pos_groups=4, final_dim=16,
    latent_vars=8, num_negatives=10, mask_prob=0.5, mask_length=4, dropout=0.0, attention_dropout=0.0,
    activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0, dropout_features=0.0,
)


def _per_update(logger):
    """The per-update ``train`` records (step tuples of length 3), in order."""
    return [d for step, d in logger.records if isinstance(step, tuple) and len(step) == 3]


class _WaveLoader(_ToyLoader):
    """The toy loader's protocol, yielding fixed random waveforms ``{"source": B x L}``."""

    def __init__(self, n, batch=2, length=6000):
        super().__init__(n)
        g = torch.Generator().manual_seed(11)
        self.waves = torch.randn(n, batch, length, generator=g) * 0.3

    def __iter__(self):
        start, self._resume = self._resume, 0
        for i in range(start, self.n):
            self.batch_in_epoch = i + 1
            yield {"source": self.waves[i]}


def _trainer(tmp_path, model, task, loader, precision_mode, lr_cfg, **cfg):
    """A Trainer around a real model, built like ``test_trainer._toy_trainer``."""
    from common.lr_schedules import LRScheduler
    from common.metrics import MetricsAggregator, MetricsSpec
    from common.optim import OptimizerConfig, build_optimizer
    from common.precision import PrecisionPolicy
    from common.trainer import Trainer, TrainerConfig

    opt = build_optimizer(model.parameters(), OptimizerConfig(lr=lr_cfg.lr))
    precision = PrecisionPolicy(mode=precision_mode, device="cpu")
    logger = RecordingLogger()
    trainer = Trainer(
        TrainerConfig(output_dir=str(tmp_path), **cfg), model=model, task=task, optimizer=opt,
        scheduler=LRScheduler(opt, lr_cfg), precision=precision,
        scaler=precision.make_loss_scaler(1, 1, init_scale=128.0), train_loader=loader, valid_loader=None,
        metrics=MetricsAggregator(MetricsSpec.pretrain()), valid_metrics=MetricsAggregator(MetricsSpec.pretrain()),
        logger=logger, print_fn=lambda *a: None,
    )
    return trainer, logger


def _spy_optimizer_steps(trainer):
    """Record the update numbers at which the optimizer really stepped, with the lr it stepped with."""
    stepped = []
    orig = trainer.optimizer.step

    def spy():
        stepped.append((trainer.state.step, trainer.optimizer.param_groups[0]["lr"]))
        orig()

    trainer.optimizer.step = spy
    return stepped


def _overflow_at(trainer, param, update):
    """Make ``param``'s gradient infinite in update ``update`` (a loss-scaler overflow, as in FP16 training)."""
    param.register_hook(lambda g: torch.full_like(g, float("inf")) if trainer.state.step == update else g)


@contextlib.contextmanager
def _in_process_run_state():
    """``train.main`` in this process seeds every RNG and sets the TF32 switches: give them back afterwards."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
            np.random.set_state(np_state)
            random.setstate(py_state)


# ---------------------------------------------------------------------------------------------------------------------
# Q8: mixed-precision checkpoints keep float32 weights, and a resume continues from them unrounded
# ---------------------------------------------------------------------------------------------------------------------


def test_q8_bf16_run_saves_fp32_weights_and_resumes_them_unrounded(tiny_corpus, tmp_path, monkeypatch):
    """Q8 fixed (DEVIATIONS "mixed precision"): the reference's AMP checkpoints hold the model cast to bf16/fp16 and no
    fp32 master copy, so a resume rounds the master weights. A ``train.py --bf16`` run of ours saves float32 model
    tensors that are NOT all bf16-representable (they are the masters), ``--ckpt`` restores exactly those bits into
    float32 parameters, and the resumed run ends bitwise equal to the uninterrupted one."""
    import train
    from common.trainer import Trainer

    loaded = []
    original_load = Trainer.load_state_dict

    def load_and_record(self, ckpt, source="checkpoint"):
        original_load(self, ckpt, source)
        loaded.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    monkeypatch.setattr(Trainer, "load_state_dict", load_and_record)
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    common = ["--bf16", "--max_update", "3", "--valid_subset", "", "--num_workers", "0"]
    with _in_process_run_state():
        assert train.main(_pretrain_args(tiny_corpus, full, *common, "--save_interval_updates", "2")) == 0
        saved2 = torch.load(os.path.join(full, "wav2vec2_update2.pt"), weights_only=True)
        weights2 = saved2["model"]
        floats = {k: v for k, v in weights2.items() if v.is_floating_point()}
        assert floats and all(v.dtype == torch.float32 for v in floats.values())
        # masters, not the bf16 compute copy: rounding to bf16 changes many of them
        changed = sum(int((v != v.to(torch.bfloat16).float()).sum()) for v in floats.values())
        assert changed > 0.5 * sum(v.numel() for v in floats.values())
        assert train.main(_pretrain_args(tiny_corpus, resumed, *common, "--ckpt",
                                         os.path.join(full, "wav2vec2_update2.pt"))) == 0
    assert len(loaded) == 1
    for k, v in weights2.items():
        assert loaded[0][k].dtype == v.dtype and torch.equal(loaded[0][k], v), k
    a = torch.load(os.path.join(full, "wav2vec2_update3.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(resumed, "wav2vec2_update3.pt"), weights_only=True)["model"]
    assert sorted(a) == sorted(b)
    for k in a:
        assert b[k].dtype == a[k].dtype and torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------------------------------
# Q18: the train timer includes fetching the update's first micro-batch
# ---------------------------------------------------------------------------------------------------------------------


class _FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_q18_train_timer_includes_fetching_every_micro_batch(tmp_path):
    """Q18 fixed (DEVIATIONS "train timer"): the reference starts an update's ``train`` timer after its first
    micro-batch was fetched. Ours starts before the fetch and stops after the metrics are accumulated, before
    logging. With a fake clock advanced 5 s by every batch fetch, 1 s by every forward and 100 s by every log call,
    2 micro-batches per update: ``train_took`` = 2 x (5 + 1) = 12 s per update (the reference: 7 s), and
    ``train_ntokens/s`` = 8 tokens / 12 s."""
    from common.metrics import MetricsAggregator, MetricsSpec

    fetch, compute, logging_cost = 5.0, 1.0, 100.0
    clock = _FakeClock()

    class _SlowLoader(_ToyLoader):
        def __iter__(self):
            for batch in super().__iter__():
                clock.now += fetch
                yield batch

    class _SlowTask(_ToyTask):
        def train_step(self, model, batch, generator):
            clock.now += compute
            return super().train_step(model, batch, generator)

    trainer, _, logger = _toy_trainer(tmp_path, _SlowTask(), max_update=3, update_freq=2, no_save=True,
                                      validate=False)
    trainer.train_loader = _SlowLoader(6)
    trainer.metrics = MetricsAggregator(MetricsSpec.pretrain(), clock=clock)
    log = logger.log

    def slow_log(step, data):
        clock.now += logging_cost
        log(step, data)

    logger.log = slow_log
    trainer.fit()
    records = _per_update(logger)
    assert len(records) == 3
    for d in records:
        assert d["train_took"] == 2 * (fetch + compute)
        assert d["train_ntokens/s"] == pytest.approx(8 / 12.0)


# ---------------------------------------------------------------------------------------------------------------------
# Q3: --clip_norm clips in FP32 too
# ---------------------------------------------------------------------------------------------------------------------


def test_q3_fp32_clip_norm_clips_the_gradient_the_optimizer_sees(tmp_path):
    """Q3 fixed (DEVIATIONS "clipping"): the reference ignores ``--clip_norm`` in FP32/TF32 runs. Ours clips in every
    precision: at ``optimizer.step`` of an FP32 update the gradient is torch's ``clip_grad_norm_`` of
    (sum of the micro-batches' SUM-loss gradients) / S, computed here on an independent copy of the model, its
    global norm is exactly ``clip_norm``, and the logged ``train_grad_norm`` is the norm before clipping (fairseq)."""
    clip = 1e-3
    trainer, model, logger = _toy_trainer(tmp_path, _ToyTask(), precision_mode="fp32", max_update=1, update_freq=2,
                                          clip_norm=clip, no_save=True, validate=False)
    assert not trainer.precision.mixed
    seen = {}
    orig = trainer.optimizer.step

    def spy():
        seen.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        orig()

    trainer.optimizer.step = spy
    trainer.fit()

    torch.manual_seed(0)
    ref = torch.nn.Linear(3, 2)  # the toy trainer's initial weights
    xs = torch.randn(6, 4, 3, generator=torch.Generator().manual_seed(1))  # the toy loader's epoch-1 batches
    (ref(xs[0]).pow(2).sum() + ref(xs[1]).pow(2).sum()).backward()
    for p in ref.parameters():
        p.grad /= 8.0  # S = 4 + 4 frames
    norm = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), clip))
    assert norm > 10 * clip  # the clip is active
    for n, p in ref.named_parameters():
        assert torch.allclose(seen[n], p.grad, rtol=1e-5, atol=1e-9), n
    assert math.sqrt(sum(float(g.pow(2).sum()) for g in seen.values())) == pytest.approx(clip, rel=1e-5)
    assert _per_update(logger)[0]["train_grad_norm"] == pytest.approx(norm, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Q4: an overflow-skipped update still advances the step, the LR schedule, the Gumbel temperature, the freeze counter
# ---------------------------------------------------------------------------------------------------------------------


class _Recording:
    """Wraps a task: records, for every micro-batch, the update number and what ``record(model)`` returns."""

    def __init__(self, task, trainer_ref, record):
        self.task, self.trainer_ref, self.record = task, trainer_ref, record
        self.mode = task.mode
        self.seen = []

    def train_step(self, model, batch, generator):
        self.seen.append((self.trainer_ref[0].state.step, self.record(model)))
        return self.task.train_step(model, batch, generator)

    valid_step = train_step


def test_q4_overflow_skipped_update_still_advances_lr_and_gumbel_temperature(tmp_path):
    """Q4 (reproduced; REFERENCE §5.2 f.vi): a BF16 update whose gradient overflows is skipped (the optimizer does
    not step, the loss scale halves) but still counts: the step reaches max_update, the schedule moves on, and
    ``set_num_updates`` anneals the Gumbel temperature. Hand values, poly warm-up over 4 updates at lr 0.01 with
    the one-update lag (Q2): update k runs with policy(max(1, k - 1)) = 0.0025, 0.0025, 0.005, 0.0075; temperature
    max(2 * 0.8**k, 0.1) = 1.6, 1.28, 1.024, 0.8192 at updates 1..4. Update 2 overflows."""
    from common.lr_schedules import LRScheduleConfig
    from wav2vec2 import Wav2Vec2Model, preset
    from wav2vec2.criterion import ContrastiveCriterion
    from wav2vec2.tasks import PretrainTask

    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny", latent_temp=(2.0, 0.1, 0.8), **MICRO))
    ref = [None]
    task = _Recording(PretrainTask(ContrastiveCriterion()), ref,
                      lambda m: (m.quantizer.curr_temp, ref[0].optimizer.param_groups[0]["lr"]))
    trainer, logger = _trainer(tmp_path, model, task, _WaveLoader(6), "bf16",
                               LRScheduleConfig(lr=0.01, max_update=100, warmup_updates=4), max_update=4,
                               no_save=True, validate=False)
    ref[0] = trainer
    _overflow_at(trainer, model.final_proj.weight, update=2)
    stepped = _spy_optimizer_steps(trainer)
    trainer.fit()

    assert trainer.state.step == 4 and [k for k, _ in stepped] == [1, 3, 4]
    temps = [0.8 * 2.0, 0.8**2 * 2.0, 0.8**3 * 2.0, 0.8**4 * 2.0]
    lrs = [0.0025, 0.0025, 0.005, 0.0075]
    assert [k for k, _ in task.seen] == [1, 2, 3, 4]
    for (k, (temp, lr)), want_temp, want_lr in zip(task.seen, temps, lrs):
        assert temp == pytest.approx(want_temp, rel=1e-12), k
        assert lr == pytest.approx(want_lr, rel=1e-12), k
    assert [lr for _, lr in stepped] == pytest.approx([lrs[0], lrs[2], lrs[3]], rel=1e-12)
    records = _per_update(logger)
    assert [d["train_loss_scale"] for d in records] == [128.0, 64.0, 64.0, 64.0]  # update 2 overflowed
    assert [d["train_lr"] for d in records] == pytest.approx(lrs, rel=1e-12)
    assert [d["train_temp"] for d in records] == pytest.approx(temps, rel=1e-9)


class _CtcToyTask:
    """A CTC model's forward with a simple SUM loss (the freeze logic lives in the model's forward)."""

    mode = "finetune"

    def train_step(self, model, batch, generator):
        logits, _ = model(batch["source"], None, generator=generator)
        loss = logits.float().logsumexp(-1).sum()
        b = batch["source"].shape[0]
        return loss, b, {"loss": loss.detach(), "ntokens": logits.shape[1] * b, "nsentences": b, "sample_size": b}

    valid_step = train_step


def test_q4_overflow_skipped_update_still_advances_the_freeze_counter(tmp_path):
    """Q4 (reproduced; REFERENCE §1.12, §5.2): with ``freeze_finetune_updates`` 3 the encoder runs without gradients
    while ``num_updates < 3``, i.e. at updates 1 and 2 (the trainer passes the 1-based update being computed). A
    skipped (overflowed) update 2 still counts, so update 3 trains the encoder: the encoder output needs a gradient
    exactly at updates 3 and 4, and ``num_updates`` equals the update number every time."""
    from common.lr_schedules import LRScheduleConfig
    from wav2vec2 import Wav2Vec2ForCTC, preset

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(preset("tiny", freeze_finetune_updates=3, apply_mask=False, feature_grad_mult=0.0,
                                  **MICRO), 8)
    needs_grad = []
    model.w2v_model.encoder.register_forward_hook(lambda mod, inp, out: needs_grad.append(out.requires_grad))
    ref = [None]
    task = _Recording(_CtcToyTask(), ref, lambda m: m.num_updates)
    trainer, logger = _trainer(tmp_path, model, task, _WaveLoader(6), "bf16",
                               LRScheduleConfig(lr=0.01, max_update=100, warmup_updates=4), max_update=4,
                               no_save=True, validate=False)
    ref[0] = trainer
    _overflow_at(trainer, model.w2v_encoder.proj.weight, update=2)
    stepped = _spy_optimizer_steps(trainer)
    trainer.fit()

    assert [k for k, _ in stepped] == [1, 3, 4]
    assert [d["train_loss_scale"] for d in _per_update(logger)] == [128.0, 64.0, 64.0, 64.0]
    assert task.seen == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert needs_grad == [False, False, True, True]
