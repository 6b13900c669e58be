"""train.py / common.trainer: exact resume, DDP == accumulation, overflow skipping, reporting."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import MICRO_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_loss_per_update(out_dir: str) -> dict[int, float]:
    """Per-update `train_loss` from the job-unique dllogger logs (nvlog.json.<n>) of a run."""
    losses: dict[int, float] = {}
    with open(os.path.join(out_dir, "nvlog.json")) as f:
        for line in f:
            if not line.startswith("DLLL "):
                continue
            rec = json.loads(line[5:])
            step, data = rec.get("step"), rec.get("data", {})
            if isinstance(step, list) and len(step) == 3 and "train_loss" in data:
                epoch, it, per_epoch = step
                losses[(epoch - 1) * per_epoch + it] = data["train_loss"]
    return losses


def _pretrain_args(corpus, out, *extra):
    return [
        "pretrain", *MICRO_MODEL, "--data", corpus, "--train_subset", "train", "--valid_subset", "valid",
        "--output_dir", out, "--cpu", "--max_tokens", "40000", "--max_sample_size", "30000",
        "--required_batch_size_multiple", "1", "--num_workers", "0", "--max_update", "8", "--warmup_updates", "2",
        "--lr", "0.002", "--log_frequency", "1", "--save_frequency", "1", "--clip_norm", "25",
        "--dropout", "0.1", "--encoder_layerdrop", "0.2", "--update_freq", "1", *extra,
    ]


def _run_train(args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.update(env_extra or {})
    res = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_kill_and_resume_equals_uninterrupted(tiny_corpus, tmp_path):
    """FP32 on CPU, with dropout, LayerDrop, masks, negatives and Gumbel noise: bitwise identical per-update losses."""
    full = str(tmp_path / "full")
    _run_train(_pretrain_args(tiny_corpus, full))
    cut = str(tmp_path / "cut")
    # stop after 3 updates (mid-epoch), then after 2 more, then finish
    _run_train(_pretrain_args(tiny_corpus, cut, "--updates_this_job", "3"))
    _run_train(_pretrain_args(tiny_corpus, cut, "--updates_this_job", "2", "--resume"))
    _run_train(_pretrain_args(tiny_corpus, cut, "--resume"))
    a, b = _train_loss_per_update(full), _train_loss_per_update(cut)
    assert sorted(a) == list(range(1, 9))
    assert a == b  # exact equality of every update's loss
    wa = torch.load(os.path.join(full, "wav2vec2_update8.pt"), weights_only=True)["model"]
    wb = torch.load(os.path.join(cut, "wav2vec2_update8.pt"), weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_two_rank_ddp_equals_one_rank_accumulation(tiny_corpus, tmp_path):
    """2 gloo processes x 1 micro-batch == 1 process x update_freq 2, same data, after 3 updates."""
    common = ["--max_update", "3", "--batch_size", "1", "--encoder_layerdrop", "0"]
    one = str(tmp_path / "one")
    _run_train(_pretrain_args(tiny_corpus, one, *common, "--update_freq", "2", "--updates_this_job", "3"))
    two = str(tmp_path / "two")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           os.path.join(ROOT, "train.py"),
           *_pretrain_args(tiny_corpus, two, *common, "--update_freq", "1", "--updates_this_job", "3")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    la, lb = _train_loss_per_update(one), _train_loss_per_update(two)
    assert sorted(la) == [1, 2, 3] and sorted(lb) == [1, 2, 3]
    for k in la:
        assert abs(la[k] - lb[k]) < 1e-5 * max(1.0, abs(la[k])), (k, la[k], lb[k])
    wa = torch.load(os.path.join(one, "wav2vec2_update3.pt"), weights_only=True)["model"]
    wb = torch.load(os.path.join(two, "wav2vec2_update3.pt"), weights_only=True)["model"]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k


def test_pretrain_then_finetune_then_load(tiny_corpus, tmp_path):
    pre = str(tmp_path / "pre")
    _run_train(_pretrain_args(tiny_corpus, pre, "--max_update", "4"))
    ft = str(tmp_path / "ft")
    args = [
        "finetune", "--w2v_path", os.path.join(pre, "wav2vec2_update4.pt"), "--data", tiny_corpus,
        "--train_subset", "train", "--valid_subset", "valid", "--output_dir", ft, "--cpu", "--max_tokens", "60000",
        "--required_batch_size_multiple", "1", "--num_workers", "0", "--max_update", "4", "--lr", "0.001",
        "--update_freq", "1",
        "--lr_policy", "exp", "--warmup_updates", "1", "--hold_updates", "1", "--initial_lr_scale", "0.01",
        "--final_lr_scale", "0.05", "--apply_mask", "--mask_prob", "0.3", "--mask_length", "4",
        "--freeze_finetune_updates", "2", "--feature_grad_mult", "0", "--log_frequency", "1", "--save_frequency", "1",
    ]
    _run_train(args)
    from wav2vec2.checkpoint import load_checkpoint

    loaded = load_checkpoint(os.path.join(ft, "wav2vec2_update4.pt"))
    assert loaded.kind == "ctc" and loaded.labels is not None
    with open(os.path.join(ft, "nvlog.json")) as f:
        text = f.read()
    assert '"val_wer"' in text and '"train_lr"' in text


def test_missing_w2v_path_and_bad_data_give_clear_errors(tiny_corpus, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "train.py", "finetune", "--w2v_path", str(tmp_path / "nope.pt"),
                          "--data", tiny_corpus, "--output_dir", str(tmp_path / "o"), "--cpu"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode == 2 and "nope.pt" in res.stderr
    res = subprocess.run([sys.executable, "train.py", "pretrain", *MICRO_MODEL, "--data", str(tmp_path / "nodata"),
                          "--output_dir", str(tmp_path / "o2"), "--cpu"], capture_output=True, text=True, cwd=ROOT,
                         env=env)
    assert res.returncode == 2 and "nodata" in res.stderr


# ---- the loop itself, on a toy model (no audio) -------------------------------------------------------------------


class _ToyLoader:
    def __init__(self, n):
        self.n = n
        self.epoch = 1
        self.batch_in_epoch = 0
        self._resume = 0

    def __len__(self):
        return self.n

    def set_epoch(self, e):
        if e != self.epoch:
            self._resume = 0
        self.epoch = e
        self.batch_in_epoch = self._resume

    def __iter__(self):
        start, self._resume = self._resume, 0
        g = torch.Generator().manual_seed(self.epoch)
        xs = torch.randn(self.n, 4, 3, generator=g)
        for i in range(start, self.n):
            self.batch_in_epoch = i + 1
            yield {"x": xs[i]}

    def state_dict(self):
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, s):
        self.epoch, self._resume, self.batch_in_epoch = s["epoch"], s["batch_in_epoch"], s["batch_in_epoch"]


class _ToyTask:
    mode = "pretrain"

    def __init__(self):
        self.poison_update = None
        self.step = 0

    def train_step(self, model, batch, generator):
        loss = model(batch["x"]).pow(2).sum()
        return loss, 4, {"loss": float(loss.detach()), "ntokens": 4, "nsentences": 4, "sample_size": 4}

    valid_step = train_step


def _toy_trainer(tmp_path, task, precision_mode="fp32", **cfg):
    from common.lr_schedules import LRScheduleConfig, LRScheduler
    from common.metrics import MetricsAggregator, MetricsSpec
    from common.optim import OptimizerConfig, build_optimizer
    from common.precision import PrecisionPolicy
    from common.trainer import Trainer, TrainerConfig

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), OptimizerConfig(lr=0.01))
    sched = LRScheduler(opt, LRScheduleConfig(lr=0.01, max_update=100, warmup_updates=1))
    precision = PrecisionPolicy(mode=precision_mode, device="cpu")

    class _Log:
        def __init__(self):
            self.records = []

        def log(self, step, data):
            self.records.append((step, dict(data)))

        def flush(self):
            pass

    logger = _Log()
    trainer = Trainer(
        TrainerConfig(output_dir=str(tmp_path), **cfg), model=model, task=task, optimizer=opt, scheduler=sched,
        precision=precision, scaler=precision.make_loss_scaler(1, 1, init_scale=128.0), train_loader=_ToyLoader(6),
        valid_loader=None, metrics=MetricsAggregator(MetricsSpec.pretrain()),
        valid_metrics=MetricsAggregator(MetricsSpec.pretrain()), logger=logger, print_fn=lambda *a: None,
    )
    return trainer, model, logger


def test_overflow_is_skipped_and_scale_backs_off(tmp_path):
    task = _ToyTask()
    trainer, model, logger = _toy_trainer(tmp_path, task, precision_mode="bf16", max_update=4, no_save=True)
    weights = {}

    def poison(grad):
        if trainer.state.step == 2:
            return torch.full_like(grad, float("inf"))
        return grad

    model.weight.register_hook(poison)
    orig_step = trainer.optimizer.step

    def spy():
        weights[trainer.state.step] = model.weight.detach().clone()
        orig_step()

    trainer.optimizer.step = spy
    before = {}
    trainer.fit()
    assert 2 not in weights  # the optimizer never stepped on update 2
    scales = [d["train_loss_scale"] for step, d in logger.records if isinstance(step, tuple) and len(step) == 3]
    assert scales[0] == 128.0 and scales[1] == 64.0 and scales[3] == 64.0
    del before


def test_update_freq_normalises_by_total_sample_size(tmp_path):
    """Two micro-batches of one update: gradient = sum of both SUM-losses' gradients / total sample size."""
    task = _ToyTask()
    trainer, model, _ = _toy_trainer(tmp_path, task, max_update=1, update_freq=2, no_save=True)
    w0 = model.weight.detach().clone()
    captured = {}
    orig = trainer.optimizer.step

    def spy():
        captured["g"] = model.weight.grad.detach().clone()
        orig()

    trainer.optimizer.step = spy
    loader = trainer.train_loader
    xs = torch.randn(6, 4, 3, generator=torch.Generator().manual_seed(1))
    trainer.fit()
    ref = torch.nn.Linear(3, 2)
    with torch.no_grad():
        ref.weight.copy_(w0)
        ref.bias.copy_(torch.zeros(2))
    torch.manual_seed(0)
    ref2 = torch.nn.Linear(3, 2)  # same init as the trainer's model
    loss = ref2(xs[0]).pow(2).sum() + ref2(xs[1]).pow(2).sum()
    loss.backward()
    assert torch.allclose(captured["g"], ref2.weight.grad / 8.0, atol=1e-6)
    del loader
    assert math.isfinite(float(captured["g"].sum()))


def _series(out_dir: str, key: str) -> list[float]:
    vals = []
    with open(os.path.join(out_dir, "nvlog.json")) as f:
        for line in f:
            if line.startswith("DLLL "):
                data = json.loads(line[5:]).get("data", {})
                if key in data:
                    vals.append(data[key])
    return vals


@pytest.mark.slow
def test_pretraining_and_finetuning_learn(tiny_corpus, tmp_path):
    """A few hundred updates on the tone corpus: pretraining loss falls and accuracy rises; fine-tuning loss and
    the character error rate fall, and the model leaves blank-only output.

    Measured spread (seeds 1-3, with and without a packed q/k/v projection, i.e. different float rounding): final
    dev UER 41-71 % (blank-only output is 100 %), train CTC loss down to 1-2 % of its start. The WER of the 16
    valid words is too coarse to test on: it ended at 81-100 % in those same learning runs. Pretraining at lr 2e-3
    instead of 1e-3 left fine-tuning blank-only in some of them (the collapse of docs/RESULTS.md)."""
    pre = str(tmp_path / "pre")
    _run_train(_pretrain_args(tiny_corpus, pre, "--max_update", "300", "--warmup_updates", "30", "--lr", "0.001",
                              "--latent_temp", "2.0", "0.5", "0.99", "--log_frequency", "10", "--dropout", "0.0",
                              "--encoder_layerdrop", "0.0"))
    loss, acc = _series(pre, "train_loss"), _series(pre, "train_accuracy")
    assert sum(loss[-3:]) / 3 < 0.8 * sum(loss[:3]) / 3
    assert sum(acc[-3:]) / 3 > 2 * sum(acc[:3]) / 3
    ft = str(tmp_path / "ft")
    _run_train([
        "finetune", "--w2v_path", os.path.join(pre, "wav2vec2_update300.pt"), "--data", tiny_corpus,
        "--train_subset", "train", "--valid_subset", "valid", "--output_dir", ft, "--cpu", "--max_tokens", "60000",
        "--required_batch_size_multiple", "1", "--num_workers", "0", "--max_update", "600", "--lr", "0.002",
        "--update_freq", "1", "--lr_policy", "exp", "--warmup_updates", "60", "--hold_updates", "240",
        "--initial_lr_scale", "0.01", "--final_lr_scale", "0.05", "--feature_grad_mult", "1.0",
        "--log_frequency", "10", "--save_frequency", "10",
    ])
    ctc, uer = _series(ft, "train_loss"), _series(ft, "val_uer")
    assert sum(ctc[-3:]) / 3 < 0.5 * sum(ctc[:3]) / 3
    assert uer[-1] < uer[0] and uer[-1] < 85.0, uer


def test_blank_only_validation_is_reported_despite_train_logs(tmp_path):
    """Validation health streaks are kept apart from the train-scope checks (which carry no WER keys)."""
    from common.health import HealthConfig, HealthMonitor

    task = _ToyTask()
    trainer, _, _ = _toy_trainer(tmp_path, task, max_update=2, no_save=True)
    trainer.health = HealthMonitor("finetune", HealthConfig(patience=2))
    trainer.val_health = HealthMonitor("finetune", HealthConfig(patience=2))
    printed = []
    trainer.print = printed.append
    val = {"empty_preds": 4.0, "nsentences": 4.0, "loss": 1.0}
    trainer._check_health(val, trainer.val_health)
    trainer._check_health({"loss": 1.0, "nsentences": 4.0})  # a train-scope log in between
    trainer._check_health(val, trainer.val_health)
    assert any("blank_only" in p for p in printed)


@pytest.mark.slow
def test_torch_compile_training_matches_eager(tiny_corpus, tmp_path):
    """train.py --torch_compile (each transformer layer compiled in place, dynamic shapes) gives the eager run's
    per-update losses to float tolerance, and its checkpoint has the eager keys (no ``_orig_mod.`` prefixes)."""
    common = ["--max_update", "4", "--dropout", "0", "--attention_dropout", "0", "--activation_dropout", "0",
              "--encoder_layerdrop", "0"]
    eager, compiled = str(tmp_path / "eager"), str(tmp_path / "compiled")
    _run_train(_pretrain_args(tiny_corpus, eager, *common))
    res = _run_train(_pretrain_args(tiny_corpus, compiled, *common, "--torch_compile"))
    assert "torch.compile: " in res.stdout
    la, lb = _train_loss_per_update(eager), _train_loss_per_update(compiled)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4]
    for k in la:
        assert abs(la[k] - lb[k]) < 1e-3 * max(1.0, abs(la[k])), (k, la[k], lb[k])
    wa = torch.load(os.path.join(eager, "wav2vec2_update4.pt"), weights_only=True)["model"]
    wb = torch.load(os.path.join(compiled, "wav2vec2_update4.pt"), weights_only=True)["model"]
    assert sorted(wa) == sorted(wb)
