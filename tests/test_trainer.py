"""train.py / common.trainer: exact resume, DDP == accumulation, overflow skipping, reporting."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import MICRO_MODEL, RecordingLogger

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


def _val_loss_per_update(out_dir: str) -> dict[int, float]:
    """``val_loss`` by ``val_update`` from a run's dllogger log."""
    losses: dict[int, float] = {}
    with open(os.path.join(out_dir, "nvlog.json")) as f:
        for line in f:
            if line.startswith("DLLL "):
                data = json.loads(line[5:]).get("data", {})
                if "val_loss" in data and "val_update" in data:
                    losses[data["val_update"]] = data["val_loss"]
    return losses


def _epoch_averages(out_dir: str) -> dict[int, dict[str, float]]:
    """The train_avg records by epoch, without their timing (the last record of an epoch wins)."""
    avgs: dict[int, dict[str, float]] = {}
    with open(os.path.join(out_dir, "nvlog.json")) as f:
        for line in f:
            if line.startswith("DLLL "):
                rec = json.loads(line[5:])
                step, data = rec.get("step"), rec.get("data", {})
                if isinstance(step, list) and len(step) == 1 and "train_avg_loss" in data:
                    avgs[step[0]] = {k: v for k, v in data.items()
                                     if not k.endswith(("took", "ntokens/s", "tflop/s", "mfu", "data_wait"))}
    return avgs


def test_kill_and_resume_equals_uninterrupted(tiny_corpus, tmp_path):
    """FP32 on CPU, with dropout, LayerDrop, masks, negatives and Gumbel noise: bitwise identical per-update losses,
    and identical validation losses. A positional convolution of 32 taps validates through the CPU FFT path, whose
    cached weight spectrum once outlived the optimizer's steps: the straight run's second validation used the
    first one's weights, where the resumed job (a fresh process) used the current ones."""
    conv_pos = ("--conv_pos", "32", "--max_tokens", "80000")  # 5 updates per epoch: validations at 5 and 8
    full = str(tmp_path / "full")
    _run_train(_pretrain_args(tiny_corpus, full, *conv_pos))
    cut = str(tmp_path / "cut")
    # stop after 3 updates (mid-epoch), then after 3 more (validating epoch 1 on the way), then finish
    _run_train(_pretrain_args(tiny_corpus, cut, *conv_pos, "--updates_this_job", "3"))
    _run_train(_pretrain_args(tiny_corpus, cut, *conv_pos, "--updates_this_job", "3", "--resume"))
    _run_train(_pretrain_args(tiny_corpus, cut, *conv_pos, "--resume"))
    a, b = _train_loss_per_update(full), _train_loss_per_update(cut)
    assert sorted(a) == list(range(1, 9))
    assert a == b  # exact equality of every update's loss
    val_a, val_b = _val_loss_per_update(full), _val_loss_per_update(cut)
    assert len(val_a) >= 2 and val_a == val_b
    # epoch averages: a job that continued an epoch part-way through averages the whole epoch, as the straight run
    avg_a, avg_b = _epoch_averages(full), _epoch_averages(cut)
    assert sorted(avg_a) == [1, 2] and avg_a == avg_b
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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
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
    _run_train(_pretrain_args(tiny_corpus, pre, "--max_update", "4", "--peak_tflops", "0.001"))
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
    # --resume alone continues it: the model is built from the checkpoint's own configuration
    resumed = [a for a in args[:] if a not in ("--w2v_path", os.path.join(pre, "wav2vec2_update4.pt"))]
    resumed[resumed.index("--max_update") + 1] = "5"
    res = _run_train([*resumed, "--resume"])
    assert "Resuming from" in res.stdout and os.path.exists(os.path.join(ft, "wav2vec2_update5.pt"))
    with open(os.path.join(ft, "nvlog.json")) as f:
        text = f.read()
    assert '"val_wer"' in text and '"train_lr"' in text
    # model FLOPs throughput in every train record; MFU against the measured (fine-tuning) or given (pretraining) peak
    for out_dir, given_peak in ((pre, 1e-3), (ft, None)):
        with open(os.path.join(out_dir, "nvlog.json")) as f:
            records = [json.loads(line[5:]).get("data", {}) for line in f if line.startswith("DLLL ")]
        train = [r for r in records if "train_loss" in r]
        assert train and all(r["train_tflop/s"] > 0 and r["train_mfu"] > 0 for r in train)
        if given_peak is not None:
            assert all(r["train_mfu"] == pytest.approx(r["train_tflop/s"] / given_peak) for r in train)
        assert any("train_avg_mfu" in r for r in records)


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
    res = subprocess.run([sys.executable, "train.py", "finetune", "--w2v_path", str(tmp_path / "nope.pt"),
                          "--data", tiny_corpus, "--labels", "wrd", "--output_dir", str(tmp_path / "o3"), "--cpu"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode == 2 and "dictionary not found" in res.stderr and "--labels wrd" in res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    # --resume without --w2v_path and nothing to resume; a schedule longer than the run
    res = subprocess.run([sys.executable, "train.py", "finetune", "--resume", "--data", tiny_corpus,
                          "--output_dir", str(tmp_path / "o4"), "--cpu"], capture_output=True, text=True, cwd=ROOT,
                         env=env)
    assert res.returncode == 2 and "--w2v_path" in res.stderr and "o4" in res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    res = subprocess.run([sys.executable, "train.py", "pretrain", *MICRO_MODEL, "--data", tiny_corpus,
                          "--train_subset", "train", "--valid_subset", "valid", "--output_dir", str(tmp_path / "o5"),
                          "--cpu", "--lr_policy", "exp", "--final_lr_scale", "0.05", "--max_update", "2",
                          "--warmup_updates", "1", "--hold_updates", "1", "--update_freq", "1", "--max_tokens", "60000",
                          "--required_batch_size_multiple", "1"], capture_output=True, text=True, cwd=ROOT,
                         env=env)
    assert res.returncode == 2 and res.stderr.startswith("error: --lr_policy exp needs max_update"), res.stderr


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

    def load_state_dict(self, s, allow_plan_change=False):
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


def _toy_trainer(tmp_path, task, precision_mode="fp32", print_fn=lambda *a: None, model=None, trainer_kw=None,
                 **cfg):
    from common.lr_schedules import LRScheduleConfig, LRScheduler
    from common.metrics import MetricsAggregator, MetricsSpec
    from common.optim import OptimizerConfig, build_optimizer
    from common.precision import PrecisionPolicy
    from common.trainer import Trainer, TrainerConfig

    torch.manual_seed(0)
    model = model if model is not None else torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), OptimizerConfig(lr=0.01))
    sched = LRScheduler(opt, LRScheduleConfig(lr=0.01, max_update=100, warmup_updates=1))
    precision = PrecisionPolicy(mode=precision_mode, device="cpu")

    logger = RecordingLogger()
    trainer = Trainer(
        TrainerConfig(output_dir=str(tmp_path), **cfg), model=model, task=task, optimizer=opt, scheduler=sched,
        precision=precision, scaler=precision.make_loss_scaler(1, 1, init_scale=128.0),
        **dict(dict(train_loader=_ToyLoader(6), valid_loader=None, metrics=MetricsAggregator(MetricsSpec.pretrain()),
                    valid_metrics=MetricsAggregator(MetricsSpec.pretrain()), logger=logger, print_fn=print_fn),
               **(trainer_kw or {})),
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
    trainer.fit()
    assert 2 not in weights  # the optimizer never stepped on update 2
    scales = [d["train_loss_scale"] for step, d in logger.records if isinstance(step, tuple) and len(step) == 3]
    assert scales[0] == 128.0 and scales[1] == 64.0 and scales[3] == 64.0


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
    xs = torch.randn(6, 4, 3, generator=torch.Generator().manual_seed(1))  # the toy loader's epoch-1 batches
    trainer.fit()
    torch.manual_seed(0)
    ref2 = torch.nn.Linear(3, 2)  # same init as the trainer's model
    loss = ref2(xs[0]).pow(2).sum() + ref2(xs[1]).pow(2).sum()
    loss.backward()
    assert torch.allclose(captured["g"], ref2.weight.grad / 8.0, atol=1e-6)
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


class _NanTask(_ToyTask):
    """The toy task whose loss is NaN on the updates in ``bad``."""

    def __init__(self, trainer_ref, bad):
        super().__init__()
        self.trainer_ref, self.bad = trainer_ref, bad

    def train_step(self, model, batch, generator):
        loss = model(batch["x"]).pow(2).sum()
        if self.trainer_ref[0].state.step in self.bad:
            loss = loss * float("nan")
        return loss, 4, {"loss": float(loss.detach()), "ntokens": 4, "nsentences": 4, "sample_size": 4}


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nonfinite_loss_policy_with_the_runs_health_monitor(tmp_path, policy):
    """--on_nonfinite_loss skip (the default): the NaN update is skipped, training goes on, and no NaN reaches the
    logged train averages (the health monitor that train.py builds would otherwise stop the run at the next log).
    stop: the run raises at that update."""
    import train
    from common.health import HealthMonitor

    ref = [None]
    task = _NanTask(ref, bad={2})
    trainer, model, logger = _toy_trainer(tmp_path, task, max_update=4, no_save=True, on_nonfinite_loss=policy)
    ref[0] = trainer
    args = train.build_parser("pretrain").parse_args(
        ["pretrain", "--data", "d", "--output_dir", str(tmp_path), "--on_nonfinite_loss", policy])
    trainer.health = HealthMonitor("pretrain", train.health_config(args, latent_groups=2))
    printed = []
    trainer.print = printed.append
    stepped = []
    orig_step = trainer.optimizer.step

    def spy():
        stepped.append(trainer.state.step)
        orig_step()

    trainer.optimizer.step = spy
    if policy == "stop":
        with pytest.raises(FloatingPointError, match="update 2"):
            trainer.fit()
        assert stepped == [1]
        return
    trainer.fit()
    assert stepped == [1, 3, 4] and any("Update 2 skipped" in p for p in printed)
    losses = [d["train_loss"] for step, d in logger.records
              if isinstance(step, tuple) and len(step) == 3 and "train_loss" in d]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert all(math.isfinite(float(p.detach().sum())) for p in model.parameters())


def test_data_wait_is_the_fraction_of_update_time_spent_fetching_batches(tmp_path):
    """PITFALLS #3: a loader that cannot keep up shows in every train record as data_wait, the fraction of the
    scope's time spent waiting for batches (here each batch takes 50 ms to come, the update itself ~1 ms)."""
    import time

    class _SlowLoader(_ToyLoader):
        def __iter__(self):
            for batch in super().__iter__():
                time.sleep(0.05)
                yield batch

    trainer, _, logger = _toy_trainer(tmp_path, _ToyTask(), max_update=4, log_frequency=1, no_save=True,
                                      trainer_kw={"train_loader": _SlowLoader(6)})
    trainer.fit()
    waits = [data["train_data_wait"] for _, data in logger.records if "train_data_wait" in data]
    assert len(waits) == 4 and all(0.5 < w <= 1.0 for w in waits), waits


@pytest.mark.parametrize("where", ["train", "val"])
def test_on_collapse_stop_saves_the_stopping_update(tmp_path, where):
    """--on_collapse stop: the update at which the sign persisted is saved with the trained weights (with EMA on,
    validation runs on the EMA copy: not those), then one HealthStop (train.py prints it as one error line, status
    2); a validation-time stop completes its epoch first (a resume starts the next one) and is not reported as a
    failed validation."""
    from common.health import HealthConfig, HealthMonitor
    from common.trainer import HealthStop

    class _Collapsed(_ToyTask):
        def train_step(self, model, batch, generator):
            loss, size, log = super().train_step(model, batch, generator)
            if where == "train" or not model.training:
                log["code_perplexity"] = 2.0  # at the floor of G = 2 groups (threshold 1.5 x 2)
            return loss, size, log

        valid_step = train_step

    health = HealthMonitor("pretrain", HealthConfig(patience=2, on_collapse="stop"))
    printed = []
    trainer, model, _ = _toy_trainer(tmp_path, _Collapsed(), print_fn=printed.append, max_update=20, log_frequency=1,
                                     ema=0.5, save_frequency=10,
                                     trainer_kw={"health": health, "valid_loader": _ToyLoader(2)})
    with pytest.raises(HealthStop, match=r"collapse_perplexity: .*stopped by --on_collapse stop, update (\d+) saved"
                       ) as stop:
        trainer.fit()
    update = int(re.search(r"update (\d+) saved", str(stop.value)).group(1))
    assert update == (2 if where == "train" else 12)  # the second sighting: per update, or per epoch of 6 updates
    saved = torch.load(tmp_path / f"wav2vec2_update{update}.pt", weights_only=False)
    for name, value in model.state_dict().items():
        assert torch.equal(saved["model"][name], value), name  # the trained weights, not the EMA's
    assert saved["train_state"]["epoch"] == (1 if where == "train" else 3)  # a validated epoch is complete
    assert not any("Validation failed" in p for p in printed)


def test_skipping_gives_up_after_twenty_consecutive_non_finite_updates(tmp_path):
    """--on_nonfinite_loss skip with weights or data that give NaN at every update (a checkpoint with NaN weights
    once ran all its updates skipped and ended with exit 0, having trained nothing): isolated NaN updates are skipped,
    20 in a row stop the run, naming the last applied update."""
    from common.trainer import MAX_CONSECUTIVE_NONFINITE

    assert MAX_CONSECUTIVE_NONFINITE == 20
    ref = [None]
    # update 2 alone is NaN (skipped, the count restarts at update 3); from update 5 on every update is NaN
    task = _NanTask(ref, bad={2} | set(range(5, 100)))
    trainer, model, logger = _toy_trainer(tmp_path, task, max_update=60, no_save=True)
    ref[0] = trainer
    trainer.print = lambda *a, **k: None
    with pytest.raises(FloatingPointError, match=r"20 consecutive updates \(to update 24\).*since update 4"):
        trainer.fit()


@pytest.mark.parametrize("layout", ["mixed_precision", "fp32_fused_adam"])
def test_resume_from_a_reference_training_checkpoint(tmp_path, layout):
    """A checkpoint in the reference trainer's layout (REFERENCE.md 2.2), written by hand from a run of ours: the
    resumed trainer has the run's Adam moments, step counts, lr, loss scale and update/epoch counters."""
    task = _ToyTask()
    run, model, _ = _toy_trainer(tmp_path / "a", task, precision_mode="bf16", max_update=3, no_save=True)
    run.fit()
    run.scaler.loss_scale = 32.0
    params = [p for p in model.parameters() if p.requires_grad]
    ours = run.optimizer.state_dict()
    moments = [ours["state"][i] for i in range(len(params))]
    group = {k: v for k, v in ours["param_groups"][0].items() if k != "params"}
    if layout == "mixed_precision":  # FP16Optimizer: one flat fp32 Adam state + loss_scale
        ref_opt = {"state": {0: {"step": 3, "exp_avg": torch.cat([m["exp_avg"].reshape(-1) for m in moments]),
                                 "exp_avg_sq": torch.cat([m["exp_avg_sq"].reshape(-1) for m in moments])}},
                   "param_groups": [dict(group, params=[0])], "loss_scale": 32.0}
        opt_type = "FP16Optimizer"
    else:  # apex FusedAdam V2: per-parameter moments, step in the group
        ref_opt = {"state": {i: {"exp_avg": m["exp_avg"].clone(), "exp_avg_sq": m["exp_avg_sq"].clone()}
                             for i, m in enumerate(moments)},
                   "param_groups": [dict(group, params=list(range(len(params))), step=3)]}
        opt_type = "FusedAdamV2"
    ckpt = {"args": {"mode": "pretrain"}, "model": model.state_dict(), "ema_model": None, "optimizer": ref_opt,
            "scaler": {}, "train_state": {"step": 3, "epoch": 2, "best_val_loss": 1.5, "best_val_wer": math.inf,
                                          "optimizer_type": opt_type, "scaler_type": "GradScaler"}}

    resumed, model2, _ = _toy_trainer(tmp_path / "b", _ToyTask(), precision_mode="bf16", max_update=5, no_save=True)
    printed = []
    resumed.print = printed.append
    resumed.load_state_dict(ckpt, source="ref.pt")
    assert any("reference (" + opt_type in p for p in printed)
    assert (resumed.state.step, resumed.state.epoch, resumed.state.best_val_loss) == (3, 2, 1.5)
    got = resumed.optimizer.state_dict()
    for i, m in enumerate(moments):
        assert torch.equal(got["state"][i]["exp_avg"], m["exp_avg"])
        assert torch.equal(got["state"][i]["exp_avg_sq"], m["exp_avg_sq"])
        assert float(got["state"][i]["step"]) == 3.0
    assert got["param_groups"][0]["lr"] == group["lr"]
    if layout == "mixed_precision":
        assert resumed.scaler.loss_scale == 32.0
    assert all(torch.equal(a, b) for a, b in zip(model2.state_dict().values(), model.state_dict().values()))
    resumed.fit()  # and it trains on
    assert resumed.state.step == 5


def _reference_live_parameters(model, mha: str) -> list[tuple[str, list[str]]]:
    """The reference model's parameters in its ``model.parameters()`` order, written out by hand from its module
    registration (REFERENCE.md 1.9, 2.6; fairseq's Wav2Vec2Model): mask_emb, extractor, post_extract_proj, quantizer
    (vars, weight_proj), project_q, encoder (positional conv: bias, weight_g, weight_v; per layer the attention,
    with --mha pyt one packed qkv of rows q, k, v, else fairseq's k, v, q order; its norms and fc1/fc2), the
    encoder's and the extractor's layer norms, final_proj; the CTC model nests it and adds the output projection.
    Each entry: (the reference's name, the names of ours it concatenates). torch lists a module's own parameters
    (``mask_emb``) before its children's."""
    ctc = hasattr(model, "w2v_encoder")
    pre = "w2v_encoder.w2v_model." if ctc else ""
    ours = [n for n, _ in model.named_parameters()]
    live = [(pre + "mask_emb", [pre + "mask_emb"])]  # the model's own parameter: listed before its children's
    live += [(n, [n]) for n in ours if n.startswith(pre + "feature_extractor.")]
    live += [(pre + f"post_extract_proj.{w}", [pre + f"post_extract_proj.{w}"]) for w in ("weight", "bias")]
    if not ctc:
        live += [(n, [n]) for n in ("quantizer.vars", "quantizer.weight_proj.weight", "quantizer.weight_proj.bias",
                                    "project_q.weight", "project_q.bias")]
    live += [(pre + f"encoder.pos_conv.0.{w}", [pre + f"encoder.pos_conv.0.{w}"]) for w in ("bias", "weight_g", "weight_v")]
    layers = sorted({n.split(".self_attn.")[0] for n in ours if ".self_attn." in n})
    for layer in layers:
        a = layer + ".self_attn."
        if mha == "pyt":
            live += [(a + "qkv.weight", [a + f"{x}_proj.weight" for x in "qkv"]),
                     (a + "qkv.bias", [a + f"{x}_proj.bias" for x in "qkv"])]
            live += [(a + f"out_proj.{w}", [a + f"out_proj.{w}"]) for w in ("weight", "bias")]
        else:
            live += [(a + f"{x}.{w}", [a + f"{x}.{w}"]) for x in ("k_proj", "v_proj", "q_proj", "out_proj")
                     for w in ("weight", "bias")]
        live += [(f"{layer}.{m}.{w}", [f"{layer}.{m}.{w}"]) for m in ("self_attn_layer_norm", "fc1", "fc2",
                                                                      "final_layer_norm") for w in ("weight", "bias")]
    live += [(n, [n]) for n in (pre + "encoder.layer_norm.weight", pre + "encoder.layer_norm.bias",
                                pre + "layer_norm.weight", pre + "layer_norm.bias")]
    live += [(n, [n]) for n in (("w2v_encoder.proj.weight", "w2v_encoder.proj.bias") if ctc
                                else ("final_proj.weight", "final_proj.bias"))]
    return live


@pytest.mark.parametrize("kind,mha,layout", [("pretrain", "pyt", "mixed_precision"), ("ctc", "pyt", "fp32_fused_adam"),
                                             ("ctc", "fairseq", "mixed_precision")])
def test_reference_optimizer_moments_land_on_their_parameters(tmp_path, kind, mha, layout):
    """The reference lays its Adam state out in its own model.parameters() order (one flat tensor in mixed
    precision, one entry per parameter in FP32), which is not ours: the quantizer and project_q come before the
    encoder there, the recipes' attention is one packed qkv, fairseq's is k, v, q, and the positional conv holds
    bias, weight_g, weight_v. Every parameter of ours must get its own moments back."""
    from wav2vec2.checkpoint import reference_parameter_layout
    from wav2vec2.config import preset
    from wav2vec2.model import Wav2Vec2ForCTC, Wav2Vec2Model

    cfg = preset("tiny", encoder_layers=2)
    model = Wav2Vec2Model(cfg) if kind == "pretrain" else Wav2Vec2ForCTC(cfg, vocab_size=8)
    params = dict(model.named_parameters())
    live = _reference_live_parameters(model, mha)
    assert sorted(n for _, names in live for n in names) == sorted(params)  # the hand-written order is complete
    gen = torch.Generator().manual_seed(0)
    moments = {n: (torch.randn(p.shape, generator=gen), torch.rand(p.shape, generator=gen)) for n, p in params.items()}
    packed = [[torch.cat([moments[n][k].reshape(-1) for n in names]) for k in (0, 1)] for _, names in live]
    group = {"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01}
    if layout == "mixed_precision":
        ref_opt = {"state": {0: {"step": 7, "exp_avg": torch.cat([m for m, _ in packed]),
                                 "exp_avg_sq": torch.cat([v for _, v in packed])}},
                   "param_groups": [dict(group, params=[0])], "loss_scale": 64.0}
    else:  # apex keeps state only for parameters that had a gradient: none for the frozen extractor
        ref_opt = {"state": {j: {"exp_avg": m, "exp_avg_sq": v} for j, (m, v) in enumerate(packed)
                             if ".feature_extractor." not in "." + live[j][0]},
                   "param_groups": [dict(group, params=list(range(len(packed))), step=7)]}
    # the saved model: split attention keys (the reference's state_dict override), out_proj first to show that
    # the order inside an attention block is not read from the file
    state = model.state_dict()
    saved = {}
    for ref_name, names in live:
        if ".self_attn." in ref_name and ".out_proj." not in ref_name:
            continue
        if ref_name.endswith("out_proj.weight"):
            a = ref_name[: -len("out_proj.weight")]
            for n in [a + "out_proj.weight", a + "out_proj.bias"] + [a + f"{x}_proj.{w}" for x in "qkv"
                                                                     for w in ("weight", "bias")]:
                saved[n] = state[n]
        elif not ref_name.endswith("out_proj.bias"):
            saved.update({n: state[n] for n in names})
    ckpt = {"args": {"mode": "pretrain", "mha": mha}, "model": saved, "ema_model": None, "optimizer": ref_opt,
            "scaler": {}, "train_state": {"step": 7, "epoch": 2, "best_val_loss": 1.5, "best_val_wer": math.inf,
                                          "optimizer_type": "FP16Optimizer" if layout == "mixed_precision"
                                          else "FusedAdamV2", "scaler_type": "GradScaler"}}
    trainer, _, _ = _toy_trainer(tmp_path, _ToyTask(), model=model, no_save=True, max_update=10,
                                 trainer_kw={"reference_layout": reference_parameter_layout})
    trainer.load_state_dict(ckpt, source="ref.pt")
    got = trainer.optimizer.state_dict()["state"]
    for i, (name, _) in enumerate(model.named_parameters()):
        if layout == "fp32_fused_adam" and "feature_extractor." in name:
            assert i not in got, name  # no moments there: Adam starts it afresh
            continue
        assert torch.equal(got[i]["exp_avg"], moments[name][0]), name
        assert torch.equal(got[i]["exp_avg_sq"], moments[name][1]), name


def test_ema_weights_validation_and_resume(tmp_path):
    """--ema d: shadow = d * shadow + (1 - d) * weights after every applied update (hand-computed from the weights
    seen after each optimizer step), validation runs on the shadow and the trained weights come back afterwards,
    and the shadow is saved and restored with the checkpoint."""
    task = _ToyTask()
    trainer, model, _ = _toy_trainer(tmp_path, task, max_update=3, no_save=True, ema=0.5)
    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
    orig_step = trainer.optimizer.step

    def step_then_track():
        orig_step()
        for k, v in model.state_dict().items():
            expected[k] = 0.5 * expected[k] + 0.5 * v.detach()

    trainer.optimizer.step = step_then_track
    seen_in_validation = []

    def valid_step(m, batch, generator):
        seen_in_validation.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return _ToyTask.train_step(task, m, batch, generator)

    task.valid_step = valid_step
    trainer.valid_loader = _ToyLoader(2)
    trainer.fit()  # 3 updates stop mid-epoch 1, whose end validates
    assert len(seen_in_validation) == 2
    for k, v in expected.items():
        assert torch.allclose(trainer.ema.shadow[k], v, atol=1e-7), k
        assert torch.allclose(seen_in_validation[0][k], v, atol=1e-7), k
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert not all(torch.allclose(trained[k], expected[k]) for k in trained)  # the shadow differs from the weights
    state = trainer.state_dict()
    other, model2, _ = _toy_trainer(tmp_path / "b", _ToyTask(), max_update=3, no_save=True, ema=0.5)
    other.load_state_dict(state)
    assert all(torch.equal(other.ema.shadow[k], trainer.ema.shadow[k]) for k in expected)
    assert all(torch.equal(model2.state_dict()[k], trained[k]) for k in trained)


def test_last_update_is_saved_when_max_update_ends_mid_epoch(tmp_path):
    """Q21: the reference saves only at epoch ends that are multiples of save_frequency (or a new best), so a run
    stopping at max_update mid-epoch could end without its last checkpoint; ours always saves it."""
    trainer, _, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=4, save_frequency=10, validate=False)
    trainer.fit()
    assert os.path.exists(tmp_path / "wav2vec2_update4.pt")
    assert torch.load(tmp_path / "wav2vec2_update4.pt", weights_only=True)["train_state"]["step"] == 4


def test_validation_randomness_is_fixed_per_batch(tmp_path):
    """Q10 fixed: pretraining validation draws masks and negatives (the task's generator) and dropout-like noise (the
    global RNG); both are re-seeded per validation batch, so two validations of the same weights agree exactly
    whatever the random state before them."""
    task = _ToyTask()

    def noisy_valid_step(model, batch, generator):
        loss = model(batch["x"]).pow(2).sum() + torch.rand((), generator=generator) + torch.rand(())
        return loss, 4, {"loss": float(loss), "ntokens": 4, "nsentences": 4, "sample_size": 4}

    task.valid_step = noisy_valid_step
    trainer, _, _ = _toy_trainer(tmp_path, task, max_update=1, no_save=True)
    trainer.valid_loader = _ToyLoader(3)
    results = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        trainer.generator.manual_seed(seed)
        trainer.validate()
        results.append({k: v for k, v in trainer._last_val.items() if k not in ("val_took", "val_ntokens/s")})
    assert results[0] == results[1] and "val_loss" in results[0]


def test_resume_with_changed_batch_settings(tiny_corpus, tmp_path):
    """Q16 fixed: a resume whose batch plan no longer matches the saved position is refused with a message that
    names the setting and the way out; --allow_data_plan_change continues the epoch proportionally."""
    out = str(tmp_path / "run")
    _run_train(_pretrain_args(tiny_corpus, out, "--max_update", "6", "--updates_this_job", "2"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    changed = _pretrain_args(tiny_corpus, out, "--max_update", "6", "--resume", "--max_tokens", "30000")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *changed], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "batch plan changed" in res.stderr and "--allow_data_plan_change" in res.stderr
    assert "Traceback" not in res.stderr
    res = _run_train([*changed, "--allow_data_plan_change"])
    assert "data plan changed" in res.stdout
    assert os.path.exists(os.path.join(out, "wav2vec2_update6.pt"))


class _FailingLoader(_ToyLoader):
    """The toy loader whose batch ``bad`` of epoch 1 cannot be read (until ``fixed``)."""

    def __init__(self, n, bad):
        super().__init__(n)
        self.bad, self.fixed = bad, False

    def __iter__(self):
        for i, batch in zip(range(self._resume, self.n), super().__iter__()):
            if i == self.bad and self.epoch == 1 and not self.fixed:
                from common.data.errors import DataError

                raise DataError(f"audio file utt{i}.flac (listed at train.tsv:{i + 2}) cannot be decoded")
            yield batch


def test_a_data_error_mid_update_saves_the_last_applied_update(tmp_path):
    """Batch 3 (the second micro-batch of update 2) cannot be read: the error propagates, and update 1's state is on
    disk with the data position at update 2's first batch; after the fix, --resume repeats update 2 and the run ends
    with the uninterrupted run's weights."""
    from common.data.errors import DataError

    ref, ref_model, _ = _toy_trainer(tmp_path / "ref", _ToyTask(), max_update=3, update_freq=2, no_save=True)
    ref.fit()
    run, _, _ = _toy_trainer(tmp_path / "run", _ToyTask(), max_update=3, update_freq=2, validate=False)
    run.train_loader = _FailingLoader(6, bad=3)
    with pytest.raises(DataError, match="utt3.flac"):
        run.fit()
    saved = torch.load(tmp_path / "run" / "wav2vec2_update1.pt", weights_only=True)
    assert saved["train_state"]["step"] == 1 and saved["data"]["batch_in_epoch"] == 2
    assert not (tmp_path / "run" / "wav2vec2_update2.pt").exists()
    resumed, model, _ = _toy_trainer(tmp_path / "resumed", _ToyTask(), max_update=3, update_freq=2, no_save=True)
    resumed.load_state_dict(saved)
    resumed.fit()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()))


def test_a_failing_validation_saves_the_trained_epoch_first(tmp_path):
    """A validation file that cannot be read must not cost the epoch just trained (with --ema the trained weights,
    not the EMA ones, are what is saved)."""
    from common.data.errors import DataError

    trainer, model, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=3, validate=True, ema=0.5)
    trainer.valid_loader = _FailingLoader(3, bad=1)
    trained = {}
    orig_validate = trainer.validate

    def validate():
        trained.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return orig_validate()

    trainer.validate = validate
    with pytest.raises(DataError, match="utt1.flac"):
        trainer.fit()
    saved = torch.load(tmp_path / "wav2vec2_update3.pt", weights_only=True)
    assert saved["train_state"]["step"] == 3
    assert all(torch.equal(saved["model"][k], trained[k]) for k in trained)
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained) and model.training


def test_cli_bad_validation_audio_and_unreadable_checkpoints(tmp_path):
    """train.py end to end: an 8 kHz file in the validation split stops the run with one error line naming it (no
    traceback) after the trained epoch was saved; then --resume with every checkpoint truncated refuses to restart
    from update 0 over them."""
    import soundfile as sf

    from conftest import make_corpus

    corpus = make_corpus(str(tmp_path / "corpus"), n_train=8, n_valid=3)
    bad = os.path.join(corpus, "valid", "utt001.flac")
    wave, _ = sf.read(bad)
    sf.write(bad, wave[::2], 8000)
    out = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    args = [sys.executable, os.path.join(ROOT, "train.py"), *_pretrain_args(corpus, out, "--max_update", "50")]
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "utt001.flac" in res.stderr and "8000 Hz" in res.stderr
    assert "valid.tsv:3" in res.stderr  # the filelist line
    saved = [f for f in os.listdir(out) if f.startswith("wav2vec2_update")]
    assert len(saved) == 1, os.listdir(out)  # the epoch trained before validation failed
    path = os.path.join(out, saved[0])
    with open(path, "rb") as fh:
        head = fh.read(200)
    with open(path, "wb") as fh:
        fh.write(head)
    res = subprocess.run([*args, "--resume"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "none of the 1 checkpoints" in res.stderr and saved[0] in res.stderr


def test_a_data_error_on_another_rank_is_saved_by_that_rank(tmp_path, capsys):
    """Ranks hold the same replicated state, and only the failing rank knows about its failure: rank 1 writes the
    checkpoint itself (rank 0 would otherwise wait in the next all-reduce and be killed by torchrun unsaved)."""
    from common.data.errors import DataError
    from common.distributed import DistEnv

    trainer, _, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=3, update_freq=2, validate=False)
    trainer.env = DistEnv(rank=1, world_size=2)
    trainer.train_loader = _FailingLoader(6, bad=1)  # inside update 1, before any communication
    with pytest.raises(DataError):
        trainer.fit()
    saved = torch.load(tmp_path / "wav2vec2_update0.pt", weights_only=True)
    assert saved["train_state"]["step"] == 0 and saved["data"]["batch_in_epoch"] == 0
    assert "[rank 1] Saving" in capsys.readouterr().out


def test_resume_between_two_update_starts_moves_back_to_one(tmp_path):
    """A restored data position that is not a multiple of update_freq (a changed plan or --update_freq) moves back
    to the last update start instead of running past the end of the epoch."""
    trainer, _, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=3, update_freq=2, no_save=True)
    printed = []
    trainer.print = printed.append
    trainer.load_state_dict({"model": trainer.model.state_dict(), "train_state": {"step": 1, "epoch": 1},
                             "data": {"epoch": 1, "batch_in_epoch": 3}})
    assert trainer.train_loader.batch_in_epoch == 2 and any("resuming at batch 2" in p for p in printed)
    trainer.fit()
    assert trainer.state.step == 3


def test_skipped_updates_log_no_gradient_norm_and_resumed_epoch_ends_log_no_average(tmp_path):
    """An overflow-skipped update has no gradient norm to log (a 0 would read as a vanishing gradient); a job that
    resumes exactly at an epoch's end (after a failed validation) validates that epoch again but does not log a
    second, empty train_avg for it."""
    from common.data.errors import DataError

    task = _ToyTask()
    trainer, model, logger = _toy_trainer(tmp_path, task, precision_mode="bf16", max_update=6, validate=True)
    trainer.train_loader = _ToyLoader(3)  # epochs of 3 updates
    model.weight.register_hook(lambda g: torch.full_like(g, float("inf")) if trainer.state.step == 2 else g)
    trainer.valid_loader = _FailingLoader(2, bad=0)
    with pytest.raises(DataError):
        trainer.fit()
    per_update = {step[1]: d for step, d in logger.records if isinstance(step, tuple) and len(step) == 3}
    assert "train_grad_norm" in per_update[1] and "train_grad_norm" not in per_update[2]
    assert sum(1 for step, d in logger.records if step == (1,) and "train_avg_loss" in d) == 1
    saved = torch.load(tmp_path / "wav2vec2_update3.pt", weights_only=True)
    assert saved["data"]["batch_in_epoch"] == 3 and saved["train_state"]["epoch"] == 1
    again, _, logger2 = _toy_trainer(tmp_path / "again", _ToyTask(), max_update=6, validate=True, no_save=True)
    again.train_loader = _ToyLoader(3)
    again.valid_loader = _ToyLoader(2)
    again.load_state_dict(saved)
    again.fit()
    assert not any(step == (1,) and any(k.startswith("train_avg_") for k in d) for step, d in logger2.records)
    assert any(step == (1,) and "val_loss" in d for step, d in logger2.records)  # epoch 1 validated again
    assert any(step == (2,) and "train_avg_loss" in d for step, d in logger2.records)


def test_plots_place_every_record_at_its_global_update(tmp_path):
    """An epoch cut short by --max_update (4 of its 6 batches): the (epoch, iteration) step would place the epoch's
    average at update 6; the records carry the global update, so the curves put it at update 4."""
    from common.plotting import collect_series

    trainer, _, logger = _toy_trainer(tmp_path, _ToyTask(), max_update=4, log_frequency=1, validate=False)
    trainer.fit()
    records = [{"type": "LOG", "step": list(step), "data": data} for step, data in logger.records if step]
    assert [r["data"]["train_update"] for r in records if len(r["step"]) == 3] == [1, 2, 3, 4]
    series, xlabel = collect_series(records)
    assert xlabel == "update" and [x for x, _ in series["train_loss"]] == [1.0, 2.0, 3.0, 4.0]
    assert [x for x, _ in series["train_avg_loss"]] == [4.0] and "train_update" not in series


class _CtrlCTask(_ToyTask):
    """Presses Ctrl-C (SIGINT to this process) during the given micro-batches."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = set(at), 0

    def train_step(self, model, batch, generator):
        self.calls += 1
        if self.calls in self.at:
            signal.raise_signal(signal.SIGINT)
        return super().train_step(model, batch, generator)


def test_ctrl_c_saves_the_update_and_stops_a_second_one_aborts(tmp_path):
    """A first Ctrl-C is a SIGTERM: the update finishes, is saved, the run stops (resumable). A second one stops at
    once with KeyboardInterrupt and saves nothing more. Either way the caller's SIGINT handler is back afterwards."""
    before = signal.getsignal(signal.SIGINT)
    trainer, _, _ = _toy_trainer(tmp_path / "once", _CtrlCTask(at={3}), max_update=10, validate=False)
    assert trainer.fit().step == 3
    assert sorted(os.listdir(tmp_path / "once")) == ["wav2vec2_update3.pt"]
    assert signal.getsignal(signal.SIGINT) is before
    trainer, _, _ = _toy_trainer(tmp_path / "twice", _CtrlCTask(at={3, 4}), max_update=10, update_freq=2,
                                 validate=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert not (tmp_path / "twice").exists() or os.listdir(tmp_path / "twice") == []
    assert signal.getsignal(signal.SIGINT) is before


def test_resuming_another_kind_of_run_names_the_mismatch(tmp_path):
    """--resume in a fine-tuning run whose output_dir holds a pretraining run's checkpoints: one sentence that says
    so, not a list of missing and unexpected weight names."""
    trainer, _, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=2, validate=False)
    ckpt = dict(trainer.state_dict(), args={"mode": "pretrain"})
    finetune_task = _ToyTask()
    finetune_task.mode = "finetune"
    other, _, _ = _toy_trainer(tmp_path / "ft", finetune_task, max_update=2, validate=False)
    with pytest.raises(RuntimeError, match="is a pretrain checkpoint and this is a finetune run"):
        other.load_state_dict(ckpt, source="wav2vec2_update2.pt")
    trainer.load_state_dict(ckpt)  # the same kind loads


def test_resuming_with_another_max_update_says_the_schedule_follows_it(tmp_path):
    trainer, _, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=5, validate=False)
    ckpt = dict(trainer.state_dict(), args={"mode": "pretrain", "max_update": 5})
    longer, _, _ = _toy_trainer(tmp_path / "b", _ToyTask(), max_update=10, validate=False)
    said = []
    longer.print = said.append
    longer.load_state_dict(ckpt, source="wav2vec2_update5.pt")
    assert any("--max_update 5" in s and "10" in s and "schedule" in s for s in said)
    said.clear()
    trainer.print = said.append
    trainer.load_state_dict(ckpt)
    assert not any("max_update" in s for s in said)


def test_ctrl_c_saves_even_when_the_console_pipe_is_gone(tmp_path, monkeypatch):
    """``train.py ... | tee log``: Ctrl-C also kills tee, so every later write to stdout fails (EPIPE). The notice,
    the 'Saving' line and the progress lines are dropped; the save still happens and the run stops normally."""
    import io

    class _ClosedPipe(io.TextIOBase):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    monkeypatch.setattr(sys, "stderr", _ClosedPipe())
    trainer, _, _ = _toy_trainer(tmp_path, _CtrlCTask(at={3}), print_fn=print, max_update=10, validate=False)
    assert trainer.fit().step == 3
    assert sorted(os.listdir(tmp_path)) == ["wav2vec2_update3.pt"]


@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_validation_groups_batches_like_training(tiny_corpus, tmp_path, mode):
    """--num_concat_batches n groups validation batches too, as the reference does (its val_* figures are per group
    of n batches: Base pretraining 8, vox fine-tuning 3), keeping the trailing smaller group instead of dropping it
    (Q6): every validation utterance is seen once."""
    import train
    from common.data.dictionary import Dictionary
    from common.distributed import DistEnv

    extra = ["--labels", "ltr", "--w2v_path", "unused.pt"] if mode == "finetune" else []
    args = train.parse_args([mode, "--data", tiny_corpus, "--train_subset", "train", "--valid_subset", "valid",
                             "--output_dir", str(tmp_path), "--cpu", "--num_workers", "0", "--max_tokens", "40000",
                             "--max_tokens_valid", "30000", "--batch_size_valid", "1",
                             "--required_batch_size_multiple", "1", "--num_concat_batches", "3", *extra])
    dictionary = Dictionary.load(os.path.join(tiny_corpus, "dict.ltr.txt")) if mode == "finetune" else None
    from wav2vec2 import preset

    cfg = preset("tiny")
    _, valid = train.build_loaders(args, cfg, dictionary, DistEnv())
    groups = [batch["sub_batch_sizes"].tolist() for batch in valid]
    # 8 validation utterances, one per batch (--batch_size_valid 1): groups of 3, 3 and the trailing 2
    assert groups == [[1, 1, 1], [1, 1, 1], [1, 1]]
    assert sorted(i for batch in valid for i in batch["id"].tolist()) == list(range(8))


def test_sigterm_to_the_whole_process_group_saves_with_dataloader_workers(tiny_corpus, tmp_path):
    """A scheduler's stop (Slurm, Kubernetes: SIGTERM to every process of the job) with --num_workers 2: the workers
    must survive it until the trainer has finished the update and saved (torch's workers died of it, and the run
    ended with a DataLoader error and nothing saved)."""
    out = str(tmp_path / "run")
    args = _pretrain_args(tiny_corpus, out, "--num_workers", "2", "--max_update", "1000")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "iter" in line and "loss" in line:  # training (and its workers) are running
                os.killpg(proc.pid, signal.SIGTERM)
                break
        lines.extend(proc.stdout)
        assert proc.wait(timeout=120) == 0, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines)
    assert "Signal 15 received" in text
    saved = [f for f in os.listdir(out) if f.startswith("wav2vec2_update")]
    assert len(saved) == 1, (saved, text[-2000:])


def test_resume_states_what_changed_and_refuses_another_model_size_in_one_line(tmp_path):
    """Resuming: a checkpoint of another model size is one sentence naming a differing weight (it was torch's
    73-line size-mismatch dump); the model's update counter (Gumbel temperature, freeze counter) is set to the
    saved step at once, so a validation before the first new update logs the right temperature; changed training
    flags are listed, job-control ones are not."""
    import argparse

    import train

    trainer, model, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=3, validate=False)
    trainer.fit()
    ckpt = trainer.state_dict()
    wider, _, _ = _toy_trainer(tmp_path / "b", _ToyTask(), max_update=5, validate=False)
    wider.model = torch.nn.Linear(3, 4)
    with pytest.raises(RuntimeError) as err:
        wider.load_state_dict(ckpt, source="wav2vec2_update3.pt")
    assert str(err.value).count("\n") == 0
    assert "wav2vec2_update3.pt holds a model of another size: 2 weight(s)" in str(err.value)
    assert "weight is [2, 3] there and [4, 3] here" in str(err.value)
    ctc = dict(ckpt, model={"w2v_encoder.proj.weight": torch.zeros(32, 3), "w2v_encoder.proj.bias": torch.zeros(32)})
    wider.model = torch.nn.Module()
    wider.model.w2v_encoder = torch.nn.Module()
    wider.model.w2v_encoder.proj = torch.nn.Linear(3, 30)
    with pytest.raises(RuntimeError, match="another dictionary: 32 output symbols there, 30 here"):
        wider.load_state_dict(ctc, source="ft.pt")

    seen = []
    same, _, _ = _toy_trainer(tmp_path / "c", _ToyTask(), max_update=5, validate=False)
    same.model.set_num_updates = seen.append
    same.load_state_dict(ckpt)
    assert seen == [3]

    saved = {"lr": [0.0005], "mask_prob": 0.65, "seed": 1, "num_workers": 6, "output_dir": "a", "max_update": 10}
    now = argparse.Namespace(lr=[0.001], mask_prob=0.65, seed=1, num_workers=2, output_dir="b", max_update=20,
                             torch_compile=False)
    assert train.changed_flags(saved, now) == ["--lr [0.0005] -> [0.001]"]
    assert train.changed_flags(argparse.Namespace(**saved), now) == ["--lr [0.0005] -> [0.001]"]
    assert train.changed_flags(None, now) == []


def test_trainer_runs_and_resumes_with_an_apex_like_fused_adam(tmp_path):
    """The Docker image's optimizer on CUDA is NVIDIA apex's FusedAdam, whose zero_grad() takes no set_to_none (the
    trainer's call raised TypeError after the first update), and whose state keeps one step count in the group: a
    checkpoint written under it resumes under torch's AdamW, with a note saying the state was converted."""
    from test_optim import _ApexLikeFusedAdam

    trainer, model, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=3, validate=False)
    apex = _ApexLikeFusedAdam(model.parameters(), lr=0.01)
    trainer.optimizer = trainer.scheduler.optimizer = apex
    assert trainer.fit().step == 3 and apex.param_groups[0]["step"] == 3
    ckpt = trainer.state_dict()
    again, _, _ = _toy_trainer(tmp_path / "b", _ToyTask(), max_update=5, validate=False)
    said = []
    again.print = said.append
    again.load_state_dict(ckpt, source="wav2vec2_update3.pt")
    assert any("converted to torch AdamW's layout" in s for s in said)
    assert {float(st["step"]) for st in again.optimizer.state.values()} == {3.0}
    again.fit()


def test_a_job_limit_that_lands_on_max_update_ends_the_run_as_usual(tmp_path):
    """--updates_this_job reaching --max_update mid-epoch: the run finishes as an uninterrupted one does (epoch
    average, validation, the final save), instead of stopping 'to be resumed' with nothing left for the resume."""
    printed = []
    trainer, _, logger = _toy_trainer(tmp_path, _ToyTask(), print_fn=printed.append, max_update=4, log_frequency=1,
                                      updates_this_job=4, trainer_kw={"valid_loader": _ToyLoader(2)})
    state = trainer.fit()
    assert state.step == 4
    assert any("val_loss" in data for _, data in logger.records)
    assert any("train_avg_loss" in data for _, data in logger.records)
    assert not any("Stopped at update" in p for p in printed) and any("Reached 4 total updates" in p for p in printed)
    assert os.path.exists(tmp_path / "wav2vec2_update4.pt")


def test_a_stop_signal_at_max_update_leaves_the_epoch_end_to_the_resume(tmp_path):
    """A stop signal during the update that reaches --max_update mid-epoch saves that update and stops (a grace
    period may be too short for the validation); the resume then has no update left to run, and does the epoch
    end the stop left out (epoch average, validation, the final save) instead of finishing with nothing done."""
    trainer, _, _ = _toy_trainer(tmp_path, _CtrlCTask(at={4}), max_update=4, log_frequency=1,
                                 trainer_kw={"valid_loader": _ToyLoader(2)})
    assert trainer.fit().step == 4
    assert sorted(os.listdir(tmp_path)) == ["wav2vec2_update4.pt"]
    printed = []
    again, _, logger = _toy_trainer(tmp_path, _ToyTask(), print_fn=printed.append, max_update=4, log_frequency=1,
                                    trainer_kw={"valid_loader": _ToyLoader(2)})
    again.load_state_dict(torch.load(tmp_path / "wav2vec2_update4.pt", weights_only=False))
    state = again.fit()
    assert state.step == 4 and state.epoch == 2
    assert any("val_loss" in data for _, data in logger.records)
    assert any("train_avg_loss" in data for _, data in logger.records)
    assert any("Reached 4 total updates" in p for p in printed)
    saved = torch.load(tmp_path / "wav2vec2_update4.pt", weights_only=False)
    assert saved["train_state"]["epoch"] == 2
    # a run that ended at max_update at an epoch end has nothing left: a further resume validates nothing again
    third, _, logger3 = _toy_trainer(tmp_path, _ToyTask(), max_update=4, trainer_kw={"valid_loader": _ToyLoader(2)})
    third.load_state_dict(saved)
    assert third.fit().step == 4
    assert not any("val_loss" in data for _, data in logger3.records)
