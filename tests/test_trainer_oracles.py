"""Trainer loop checked against independent oracles (hand-computed expectations, plain torch recomputation,
REFERENCE.md formulas), on the toy trainer of test_trainer.py. Each test pins behaviour that a plausible mutation of
common/trainer.py changed without any other test noticing."""

from __future__ import annotations

import math
import os

import pytest
import torch

from test_trainer import _NanTask, _ToyLoader, _ToyTask, _toy_trainer


def _epoch_batches(epoch: int, n: int = 6) -> torch.Tensor:
    """The toy loader's batches of ``epoch`` (same generator as _ToyLoader)."""
    return torch.randn(n, 4, 3, generator=torch.Generator().manual_seed(epoch))


def _spy_steps(trainer, model, record):
    """Record (update, weight grad) whenever the optimizer steps."""
    orig = trainer.optimizer.step

    def spy():
        record.append((trainer.state.step, model.weight.grad.detach().clone()))
        orig()

    trainer.optimizer.step = spy


def _spy_saves(trainer):
    saves = []
    orig = trainer.checkpointer.save

    def spy(state, step, best=False):
        saves.append((step, best))
        return orig(state, step, best=best)

    trainer.checkpointer.save = spy
    return saves


# ---- gradient normalisation ------------------------------------------------------------------------------------------


def test_loss_scaled_gradients_reach_the_optimizer_unscaled(tmp_path):
    """REFERENCE §5.3: target gradient g = sum of grad(summed loss) / S in every mode; with the dynamic loss scaler
    (bf16: init scale 128) the optimizer must see g, not 128 * g. Oracle: plain fp32 torch gradient / 4."""
    trainer, model, _ = _toy_trainer(tmp_path, _ToyTask(), precision_mode="bf16", max_update=1, no_save=True,
                                     validate=False)
    assert float(trainer.scaler.loss_scale) == 128.0
    seen = []
    _spy_steps(trainer, model, seen)
    trainer.fit()
    torch.manual_seed(0)
    ref = torch.nn.Linear(3, 2)
    ref(_epoch_batches(1)[0]).pow(2).sum().backward()
    expected = ref.weight.grad / 4.0
    assert len(seen) == 1
    # bf16 autocast: a few percent of noise at most, far from a factor of 128
    assert torch.allclose(seen[0][1], expected, rtol=0.05, atol=0.05 * float(expected.abs().max()))


def test_update_losses_are_per_sample_losses_in_bits(tmp_path):
    """The recorded per-update loss is loss_sum / S / ln 2 (REFERENCE §3: losses logged in base 2). Oracle: the toy
    loss recomputed with plain torch on the loader's batch and the initial weights."""
    trainer, model, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=1, no_save=True, validate=False)
    w = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.fit()
    x = _epoch_batches(1)[0]
    expected = float((x @ w["weight"].T + w["bias"]).pow(2).sum()) / 4 / math.log(2)
    assert trainer.update_losses == pytest.approx([expected], rel=1e-6)


def test_an_empty_update_is_skipped_not_divided_by_zero(tmp_path):
    """An update whose global sample size is 0 has nothing to normalise by: it is skipped (no optimizer step), the
    run goes on."""

    class _EmptySecond(_ToyTask):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def train_step(self, model, batch, generator):
            self.calls += 1
            loss, ss, log = super().train_step(model, batch, generator)
            if self.calls == 2:
                return loss * 0.0, 0, dict(log, sample_size=0)
            return loss, ss, log

    trainer, model, _ = _toy_trainer(tmp_path, _EmptySecond(), max_update=3, no_save=True, validate=False)
    trainer.print = lambda *a, **k: None
    seen = []
    _spy_steps(trainer, model, seen)
    state = trainer.fit()
    assert state.step == 3 and [s for s, _ in seen] == [1, 3]


# ---- cross-rank agreement (single process; the reductions are simulated) ---------------------------------------------


def test_a_non_finite_loss_on_another_rank_skips_the_update_here_too(tmp_path, monkeypatch):
    """The skip decision follows the all-reduced non-finite flag: a NaN on another rank must skip the update on
    every rank (else the ranks' weights diverge). The other rank is simulated by adding its contribution
    [sample size 4, loss NaN, non-finite 1, stop 0] in the all-reduce at update 2."""
    import common.trainer as ct

    trainer, model, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=3, no_save=True, validate=False)
    trainer.print = lambda *a, **k: None
    real = ct.all_reduce_sum

    def other_rank_nan(values, device):
        out = real(values, device)
        if trainer.state.step == 2:
            return [out[0] + 4.0, float("nan"), out[2] + 1.0, out[3]]
        return [out[0] + 4.0, out[1], out[2], out[3]]

    monkeypatch.setattr(ct, "all_reduce_sum", other_rank_nan)
    seen = []
    _spy_steps(trainer, model, seen)
    trainer.fit()
    assert [s for s, _ in seen] == [1, 3]


def test_micro_batch_streams_of_two_ranks_equal_one_rank_accumulating_all(tmp_path, monkeypatch):
    """W ranks x U micro-batches must draw the same W*U random streams as 1 rank x W*U micro-batches (so that
    DDP == accumulation) and no two micro-batches of an update may share a stream. Recorded: torch.initial_seed()
    in every train_step; gradient/metric reductions are stubbed out (no process group)."""
    import common.trainer as ct
    from common.distributed import DistEnv

    monkeypatch.setattr(ct, "all_reduce_gradients", lambda params, world_size: None)

    class _Seeds(_ToyTask):
        def __init__(self):
            super().__init__()
            self.seeds = []

        def train_step(self, model, batch, generator):
            self.seeds.append(torch.initial_seed())
            return super().train_step(model, batch, generator)

    def streams(world_size, rank, update_freq):
        task = _Seeds()
        trainer, _, _ = _toy_trainer(tmp_path / f"{world_size}_{rank}", task, max_update=1, no_save=True,
                                     validate=False, update_freq=update_freq,
                                     trainer_kw={"env": DistEnv(rank=rank, world_size=world_size),
                                                 "train_loader": _ToyLoader(8)})
        trainer.metrics.all_reduce = lambda world_size: None
        trainer.print = lambda *a, **k: None
        trainer.fit()
        return task.seeds

    one = streams(1, 0, 4)
    two = streams(2, 0, 2) + streams(2, 1, 2)
    assert len(set(one)) == 4 and len(set(two)) == 4
    assert set(one) == set(two)


# ---- EMA ---------------------------------------------------------------------------------------------------------


def _ema_by_hand(trainer, model, decay):
    """The EMA oracle: ``decay * shadow + (1 - decay) * weights`` applied by hand after each optimizer step that
    happens (the trainer's optimizer is wrapped); returns the dictionary it keeps up to date."""
    expected = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    orig = trainer.optimizer.step

    def step_then_track():
        orig()
        for k, v in model.state_dict().items():
            expected[k] = decay * expected[k] + (1 - decay) * v.detach().float()

    trainer.optimizer.step = step_then_track
    return expected


def test_ema_decay_weights_the_shadow_not_the_new_weights(tmp_path):
    """--ema d: shadow <- d * shadow + (1 - d) * weights after each applied update (d = 0.9, where swapping d and
    1 - d is visible, unlike d = 0.5). Oracle: the formula applied by hand to the weights after each step."""
    trainer, model, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=3, no_save=True, validate=False, ema=0.9)
    expected = _ema_by_hand(trainer, model, 0.9)
    trainer.fit()
    for k, v in expected.items():
        assert torch.allclose(trainer.ema.shadow[k], v, atol=1e-7), k


def test_ema_does_not_move_on_a_skipped_update(tmp_path):
    """A skipped (non-finite) update applies nothing: the EMA shadow must not average in the unchanged weights
    once more. Oracle: the EMA formula applied only after the optimizer steps that happened."""
    ref = [None]
    trainer, model, _ = _toy_trainer(tmp_path, _NanTask(ref, bad={2}), max_update=3, no_save=True, validate=False,
                                     ema=0.9)
    ref[0] = trainer
    trainer.print = lambda *a, **k: None
    expected = _ema_by_hand(trainer, model, 0.9)
    trainer.fit()
    for k, v in expected.items():
        assert torch.allclose(trainer.ema.shadow[k], v, atol=1e-7), k


# ---- loop bookkeeping: logging, saving, job limits ------------------------------------------------------------------


def test_log_frequency_logs_every_nth_global_update(tmp_path):
    """--log_frequency 2 over 6 updates: train records at updates 2, 4, 6 (step % log_frequency == 0,
    REFERENCE §5.2 x)."""
    trainer, _, logger = _toy_trainer(tmp_path, _ToyTask(), max_update=6, log_frequency=2, no_save=True,
                                      validate=False)
    trainer.fit()
    logged = [d["train_update"] for step, d in logger.records if isinstance(step, tuple) and len(step) == 3]
    assert logged == [2, 4, 6]


def test_save_interval_updates_counts_global_updates(tmp_path):
    """--save_interval_updates 4 with epochs of 6 updates and max_update 10: saves at updates 4 and 8 (global
    multiples, across the epoch boundary), and the final one at 10; no epoch-end save at 6 (save_frequency 100)."""
    trainer, _, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=10, save_interval_updates=4, save_frequency=100,
                                 validate=False)
    saves = _spy_saves(trainer)
    trainer.fit()
    assert saves == [(4, False), (8, False), (10, False)]


def test_save_frequency_saves_at_epochs_that_are_its_multiples(tmp_path):
    """--save_frequency 2, epochs of 6 updates, 4 epochs: epoch-end saves after epochs 2 and 4 (updates 12, 24),
    none after epochs 1 and 3 (REFERENCE §2.1, Q19)."""
    trainer, _, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=24, save_frequency=2, validate=False)
    saves = _spy_saves(trainer)
    trainer.fit()
    assert saves == [(12, False), (24, False)]


def test_epochs_this_job_stops_after_that_many_epochs_of_this_job(tmp_path):
    """--epochs_this_job 1 (REFERENCE §5.2 step 7): stop after one epoch of this job (6 updates), and a job resumed
    from it also runs exactly one more epoch."""
    trainer, _, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=100, epochs_this_job=1, validate=False,
                                 no_save=True)
    assert trainer.fit().step == 6
    state = trainer.state_dict()
    again, _, _ = _toy_trainer(tmp_path / "b", _ToyTask(), max_update=100, epochs_this_job=1, validate=False,
                               no_save=True)
    again.load_state_dict(state)
    st = again.fit()
    assert (st.step, st.epoch) == (12, 3)


def test_updates_this_job_counts_the_updates_of_this_job(tmp_path):
    """--updates_this_job 3: the first job stops after update 3, a job resumed from it after update 6 (3 more),
    each saving its last update."""
    trainer, _, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=100, updates_this_job=3, validate=False)
    trainer.print = lambda *a, **k: None
    assert trainer.fit().step == 3
    again, _, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=100, updates_this_job=3, validate=False)
    again.print = lambda *a, **k: None
    again.load_state_dict(torch.load(tmp_path / "wav2vec2_update3.pt", weights_only=False))
    assert again.fit().step == 6


class _ScheduledValLoss(_ToyTask):
    """Validation loss (per sample, before the ln 2 of logging) taken from ``values`` one epoch at a time."""

    def __init__(self, values):
        super().__init__()
        self.values, self.trainer = list(values), None

    def valid_step(self, model, batch, generator):
        v = self.values[self.trainer.state.epoch - 1]
        loss = torch.tensor(v * 4.0)
        return loss, 4, {"loss": float(loss), "ntokens": 4, "nsentences": 4, "sample_size": 4}


def test_best_checkpoint_follows_the_lowest_validation_loss(tmp_path):
    """Validation losses 3, 5, 2 at epochs 1-3 (save_frequency 100, so only best/final saves): new bests at epochs
    1 and 3 only -> saves (6, best) and (18, best); best_val_loss ends at the minimum of the logged val losses."""
    task = _ScheduledValLoss([3.0, 5.0, 2.0])
    trainer, _, logger = _toy_trainer(tmp_path, task, max_update=18, save_frequency=100,
                                      trainer_kw={"valid_loader": _ToyLoader(2)})
    task.trainer = trainer
    saves = _spy_saves(trainer)
    trainer.fit()
    assert saves == [(6, True), (18, True)]
    logged = [d["val_loss"] for step, d in logger.records if len(step) == 1 and "val_loss" in d]  # (per epoch)
    assert logged == pytest.approx([v / math.log(2) for v in (3.0, 5.0, 2.0)])
    assert trainer.state.best_val_loss == pytest.approx(min(logged))
    assert (tmp_path / "wav2vec2_best.pt").exists()


def test_gradients_are_normalised_by_the_global_sample_size_of_all_ranks(tmp_path, monkeypatch):
    """REFERENCE §5.2 f.ii / §5.3: g = (sum over ranks and micro-batches of grad(summed loss)) / S, S the
    all-reduced sample size. Rank 0 of 2 is simulated: the other rank contributes the same batch (its gradient and
    sample size 4 added by the stubbed reductions), so g = 2 * grad / 8 = plain torch grad / 4."""
    import common.trainer as ct
    from common.distributed import DistEnv

    def sum_grads(params, world_size):
        for p in params:
            if p.grad is not None:
                p.grad.mul_(2.0)

    real = ct.all_reduce_sum
    monkeypatch.setattr(ct, "all_reduce_gradients", sum_grads)
    monkeypatch.setattr(ct, "all_reduce_sum", lambda v, d: [a + b for a, b in zip(real(v, d), [v[0], v[1], 0, 0])])
    trainer, model, _ = _toy_trainer(tmp_path, _ToyTask(), max_update=1, no_save=True, validate=False,
                                     trainer_kw={"env": DistEnv(rank=0, world_size=2)})
    trainer.metrics.all_reduce = lambda world_size: None
    seen = []
    _spy_steps(trainer, model, seen)
    trainer.fit()
    torch.manual_seed(0)
    ref = torch.nn.Linear(3, 2)
    ref(_epoch_batches(1)[0]).pow(2).sum().backward()
    assert torch.allclose(seen[0][1], ref.weight.grad / 4.0, atol=1e-6)


def test_an_epoch_is_the_whole_updates_that_fit_in_it(tmp_path):
    """REFERENCE §5.2 step 3: an epoch runs the first steps_per_epoch * U micro-batches, steps_per_epoch =
    floor(batches / U): 5 batches with U = 2 give 2 updates per epoch (the fifth batch is left out), so 4 updates
    end epoch 2 and the run is in epoch 3."""
    trainer, _, logger = _toy_trainer(tmp_path, _ToyTask(), max_update=4, update_freq=2, no_save=True,
                                      validate=False, trainer_kw={"train_loader": _ToyLoader(5)})
    st = trainer.fit()
    assert (st.step, st.epoch) == (4, 3)
    assert [s for s, d in logger.records if isinstance(s, tuple) and len(s) == 3] == [(1, 1, 2), (1, 2, 2),
                                                                                   (2, 1, 2), (2, 2, 2)]


def test_the_loss_scale_is_restored_on_resume(tmp_path):
    """bf16 dynamic loss scaler, init 128 (REFERENCE §5.3): one overflow (update 2) halves it to 64; a trainer
    resumed from the state continues with 64, not a fresh 128."""
    trainer, model, _ = _toy_trainer(tmp_path, _ToyTask(), precision_mode="bf16", max_update=3, no_save=True,
                                     validate=False)
    trainer.print = lambda *a, **k: None
    model.weight.register_hook(lambda g: torch.full_like(g, float("inf")) if trainer.state.step == 2 else g)
    trainer.fit()
    assert float(trainer.scaler.loss_scale) == 64.0
    again, _, _ = _toy_trainer(tmp_path / "b", _ToyTask(), precision_mode="bf16", max_update=3, no_save=True,
                               validate=False)
    assert float(again.scaler.loss_scale) == 128.0
    again.load_state_dict(trainer.state_dict())
    assert float(again.scaler.loss_scale) == 64.0


@pytest.mark.parametrize("where", ["train", "val"])
def test_a_health_streak_carries_over_a_resume(tmp_path, where):
    """--on_collapse stop with patience 2: an uninterrupted run stops at the second sighting (update 2 per training
    log, or the epoch-2 validation at update 12; test_trainer.test_on_collapse_stop_saves_the_stopping_update).
    Cut after the first sighting and resumed, the streak must continue: the same update stops the run."""
    from common.health import HealthConfig, HealthMonitor
    from common.trainer import HealthStop

    class _Collapsed(_ToyTask):
        def train_step(self, model, batch, generator):
            loss, size, log = super().train_step(model, batch, generator)
            if where == "train" or not model.training:
                log["code_perplexity"] = 2.0
            return loss, size, log

        valid_step = train_step

    def make(out, **cfg):
        health = HealthMonitor("pretrain", HealthConfig(patience=2, on_collapse="stop"))
        t, _, _ = _toy_trainer(out, _Collapsed(), max_update=20, log_frequency=1, save_frequency=1,
                               trainer_kw={"health": health, "valid_loader": _ToyLoader(2)}, **cfg)
        t.print = lambda *a, **k: None
        return t

    first = make(tmp_path, **({"updates_this_job": 1} if where == "train" else {"epochs_this_job": 1}))
    first.fit()
    cut = 1 if where == "train" else 6
    assert first.state.step == cut
    again = make(tmp_path)
    again.load_state_dict(torch.load(tmp_path / f"wav2vec2_update{cut}.pt", weights_only=False))
    with pytest.raises(HealthStop, match=f"update {2 if where == 'train' else 12} saved"):
        again.fit()


def test_a_failed_fetch_leaves_no_trace_in_the_resumed_epoch_average(tmp_path):
    """Batch 3 (second micro-batch of update 2, U = 2) cannot be read: the saved state is the one after update 1,
    so the partial logs of update 2's first micro-batch must not be in it. Oracle: the uninterrupted run's records
    (per-update losses and the epoch average) equal those of the failed-then-resumed run."""
    from common.data.errors import DataError
    from test_trainer import _FailingLoader

    def records(logger):
        return {tuple(s): {k: v for k, v in d.items() if k.endswith(("_loss", "_update"))}
                for s, d in logger.records if isinstance(s, tuple) and len(s) in (1, 3)}

    ref, _, ref_log = _toy_trainer(tmp_path / "ref", _ToyTask(), max_update=3, update_freq=2, no_save=True,
                                   validate=False)
    ref.fit()
    run, _, _ = _toy_trainer(tmp_path / "run", _ToyTask(), max_update=3, update_freq=2, validate=False)
    run.print = lambda *a, **k: None
    run.train_loader = _FailingLoader(6, bad=3)
    with pytest.raises(DataError):
        run.fit()
    resumed, _, log = _toy_trainer(tmp_path / "resumed", _ToyTask(), max_update=3, update_freq=2, no_save=True,
                                   validate=False)
    resumed.load_state_dict(torch.load(tmp_path / "run" / "wav2vec2_update1.pt", weights_only=False))
    resumed.fit()
    want, got = records(ref_log), records(log)
    assert (1,) in want and got[(1,)] == pytest.approx(want[(1,)])
    assert got[(1, 2, 3)] == pytest.approx(want[(1, 2, 3)])


def test_an_equal_wer_is_not_a_new_best(tmp_path):
    """Fine-tuning (best_metric wer): dev WER 50, 50, 25 % at epochs 1-3: new bests at epochs 1 and 3 only (a tie
    does not replace wav2vec2_best.pt, strict '<' as for the loss)."""
    from common.metrics import MetricsAggregator, MetricsSpec

    wers = [(1, 2), (1, 2), (1, 4)]  # (word errors, words) per validation batch, per epoch

    class _Ctc(_ToyTask):
        mode = "finetune"

        def valid_step(self, model, batch, generator):
            loss, ss, log = _ToyTask.train_step(self, model, batch, generator)
            e, n = wers[self.trainer.state.epoch - 1]
            return loss, ss, dict(log, w_errs=e, w_len=n, wv_errs=e, c_errs=e, c_len=n)

    task = _Ctc()
    trainer, _, logger = _toy_trainer(tmp_path, task, max_update=18, save_frequency=100, best_metric="wer",
                                      trainer_kw={"valid_loader": _ToyLoader(2),
                                                  "metrics": MetricsAggregator(MetricsSpec.finetune()),
                                                  "valid_metrics": MetricsAggregator(MetricsSpec.finetune())})
    task.trainer = trainer
    saves = _spy_saves(trainer)
    trainer.fit()
    logged = [d["val_wer"] for s, d in logger.records if len(s) == 1 and "val_wer" in d]
    assert logged == pytest.approx([50.0, 50.0, 25.0])
    assert saves == [(6, True), (18, True)]
    assert trainer.state.best_val_wer == 25.0


def _metrics_worker(rank: int, port: int, out_dir: str) -> None:
    """One of two gloo ranks of the toy trainer; rank r's summed loss is (r + 1) x the toy loss of the same batch."""
    from conftest import gloo_worker

    with gloo_worker(rank, port):
        from test_distributed import _two_rank_toy_trainer

        class _Weighted(_ToyTask):
            def train_step(self, model, batch, generator):
                loss = model(batch["x"]).pow(2).sum() * (rank + 1)
                return loss, 4, {"loss": float(loss.detach()), "ntokens": 4, "nsentences": 4, "sample_size": 4}

        trainer = _two_rank_toy_trainer(rank, out_dir, _Weighted(), _ToyLoader(2), max_update=1, validate=False,
                                        no_save=True)
        trainer.fit()
        rec = [d for s, d in trainer.logger.records if isinstance(s, tuple) and len(s) == 3][0]
        torch.save({"loss": rec["train_loss"], "ntokens": rec["train_ntokens"]},
                   os.path.join(out_dir, f"m{rank}.pt"))


def test_two_ranks_log_the_global_per_token_loss(tmp_path):
    """REFERENCE §5.2 f.i / §3.3: the logged train loss is sum of both ranks' summed losses / sum of their tokens
    / ln 2, on every rank. Rank 1's loss is twice rank 0's (same batch): (L + 2L) / 8 / ln 2, with L recomputed by
    plain torch from the initial weights."""
    import torch.multiprocessing as mp
    from test_distributed import _free_port

    mp.spawn(_metrics_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    ref = torch.nn.Linear(3, 2)
    with torch.no_grad():
        L = float(ref(_epoch_batches(1, 2)[0]).pow(2).sum())
    for r in (0, 1):
        got = torch.load(tmp_path / f"m{r}.pt", weights_only=True)
        assert got["ntokens"] == 8
        assert got["loss"] == pytest.approx(3 * L / 8 / math.log(2), rel=1e-6)
