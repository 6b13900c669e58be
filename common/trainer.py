"""The training loop, model-agnostic: accumulation, precision, gradient normalisation, clipping, health checks,
validation, checkpoints, exact resume and dllogger reporting.

One update (REFERENCE.md §5.2, with the departures listed in docs/DEVIATIONS.md)::

    step += 1; model.set_num_updates(step)
    for j in range(update_freq):                 # micro-batches; no communication
        seed the random streams from (seed, step, j * W + rank)
        loss, sample_size, log = task.train_step(model, batch, generator)   # SUM loss
        backward(loss * loss_scale)
    all-reduce gradients (sum) and the logs over ranks
    grads *= 1 / (S * loss_scale)                # S = global sample size: the reference's normalisation
    clip, overflow check (skip + back off), optimizer step, EMA, lr for the next update

Every random draw of an update is keyed by (seed, step, micro-batch), and the data position is saved with the
checkpoint, so a run resumed from any saved update repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol

import torch
from torch import nn

from common.checkpointing import Checkpointer, atomic_torch_save
from common.distributed import DistEnv, all_reduce_gradients, all_reduce_sum, first_of_ranks
from common.health import HealthMonitor
from common.lr_schedules import LRScheduler
from common.metrics import MetricsAggregator
from common.optim import (adam_state_from_reference, adapt_optimizer_state, clear_gradients, clip_grad_norm,
                          scale_gradients)
from common.precision import PrecisionPolicy
from common.progress import Progress, quietly

__all__ = ["TrainerConfig", "TrainingTask", "Trainer", "ExponentialMovingAverage", "micro_batch_seed", "HealthStop"]


class HealthStop(RuntimeError):
    """``--on_collapse stop`` (or ``--on_nonfinite_loss stop`` in validation): the sign persisted; the run was saved
    first (unless ``--no_save``)."""


class TrainingTask(Protocol):
    """What the trainer needs to know about a model family."""

    mode: str  # "pretrain" | "finetune"

    def train_step(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, float, dict]:
        ...

    def valid_step(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, float, dict]:
        ...


#: ``--on_nonfinite_loss skip`` gives up after this many consecutive skipped updates (the FP16 loss scaler, starting
#: at 128, would reach its 1e-4 floor after about 20 overflows in a row)
MAX_CONSECUTIVE_NONFINITE = 20


@dataclass
class TrainerConfig:
    """Loop settings (reference flag names)."""

    output_dir: str
    max_update: int
    update_freq: int = 1
    clip_norm: float = 0.0
    log_frequency: int = 1
    save_frequency: int = 1
    save_interval_updates: int = 0
    keep_milestones: tuple[int, ...] = (100, 200, 300, 400)
    no_save: bool = False
    seed: int = 1
    epochs_this_job: int = 0
    updates_this_job: int = 0  # stop (saving a resumable checkpoint) after this many updates in this job
    benchmark_epochs_num: int = 3
    ema: float = 0.0
    on_nonfinite_loss: str = "skip"  # skip | stop
    allow_data_plan_change: bool = False  # resume although the batch plan changed (world size, data, batch settings)
    best_metric: str = "loss"  # "loss" (pretraining) | "wer" (fine-tuning)
    validate: bool = True


def micro_batch_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit seed for micro-batch ``index`` of update ``step`` (same inputs -> same stream, any process)."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


class ExponentialMovingAverage:
    """EMA of the parameters (``--ema`` decay), kept in float32 on the model's device."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(self.decay).add_(v.detach().float(), alpha=1.0 - self.decay)
            else:
                s.copy_(v)

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})


class _BatchFetchError(Exception):
    """Fetching a training batch raised (its cause): the update was not applied and the state can be saved."""


def is_reference_training_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    """A checkpoint written by the reference recipe's trainer: its ``train_state`` names the optimizer class and it
    carries none of the state that ours adds (data position, RNG)."""
    ts = ckpt.get("train_state")
    return isinstance(ts, Mapping) and "optimizer_type" in ts and "data" not in ckpt and "rng" not in ckpt


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 1
    best_val_loss: float = math.inf
    best_val_wer: float = math.inf

    def as_dict(self) -> dict:
        return dict(step=self.step, epoch=self.epoch, best_val_loss=self.best_val_loss, best_val_wer=self.best_val_wer)


class Trainer:
    """Drives ``task`` over ``train_loader``. ``model`` must live on ``env.device`` already."""

    def __init__(
        self,
        cfg: TrainerConfig,
        model: nn.Module,
        task: TrainingTask,
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler,
        precision: PrecisionPolicy,
        scaler: Any,
        train_loader: Any,
        valid_loader: Optional[Any],
        metrics: MetricsAggregator,
        valid_metrics: MetricsAggregator,
        logger: Any,
        env: DistEnv = DistEnv(),
        tensorboard: Any = None,
        checkpoint_extra: Optional[Callable[[], dict]] = None,
        health: Optional[HealthMonitor] = None,
        print_fn: Callable[[str], None] = print,
        reference_layout: Optional[Callable[[Mapping[str, Any]], list]] = None,
    ):
        self.cfg = cfg
        self.model = model
        self.task = task
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.precision = precision
        self.scaler = scaler
        self.train_loader = train_loader
        self.valid_loader = valid_loader
        self.metrics = metrics
        self.valid_metrics = valid_metrics
        self.logger = logger
        self.env = env
        self.tensorboard = tensorboard
        self.checkpoint_extra = checkpoint_extra or (lambda: {})
        self.health = health
        # a reference checkpoint -> its parameter order as lists of our parameter names (the model family knows it)
        self.reference_layout = reference_layout
        # validation keeps its own streaks: train-scope logs (without WER keys) must not reset them
        self.val_health = copy.deepcopy(health) if health is not None else None
        # a closed console (| tee killed by Ctrl-C) must not stop a save
        self.print = quietly(print_fn) if env.is_main else (lambda *_: None)
        self.state = TrainState()
        self.ema = ExponentialMovingAverage(model, cfg.ema) if cfg.ema > 0 else None
        self.checkpointer = Checkpointer(cfg.output_dir, keep_milestones=cfg.keep_milestones, log=self.print)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.generator = torch.Generator(device=env.device)
        self.update_losses: list[float] = []  # per-update normalised training loss (tests, curves)
        self._stop = False  # stop after this update: decided identically on every rank
        self._stop_requested = False  # a signal reached this process; the ranks agree on it in the next update
        self._nonfinite_run = 0  # consecutive updates skipped for a non-finite loss
        self._last_val: dict = {}

    # ------------------------------------------------------------------------------------------------------------------
    # state
    def state_dict(self) -> dict:
        model = self.model
        state = {
            "model": {k: v.detach() for k, v in model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "train_state": self.state.as_dict(),
            "data": self.train_loader.state_dict(),
            "metrics": self.metrics.state_dict(),
            "health": self.health.state_dict() if self.health is not None else {},
            "val_health": self.val_health.state_dict() if self.val_health is not None else {},
            "ema_model": self.ema.state_dict() if self.ema is not None else None,
            "rng": {"torch": torch.get_rng_state()},
        }
        state.update(self.checkpoint_extra())
        return state

    def load_state_dict(self, ckpt: Mapping[str, Any], source: str = "checkpoint") -> None:
        args = ckpt.get("args")  # ours / NVIDIA: a dict or an argparse Namespace; fairseq: often None

        def saved(name: str) -> Any:
            return args.get(name) if isinstance(args, Mapping) else getattr(args, name, None)

        mode = saved("mode")
        if mode in ("pretrain", "finetune") and mode != self.task.mode:
            raise RuntimeError(f"{source} is a {mode} checkpoint and this is a {self.task.mode} run: another run's "
                               "output_dir? Give this run its own --output_dir (a pretrained model starts fine-tuning "
                               "through --w2v_path)")
        saved_max = saved("max_update")
        if isinstance(saved_max, int) and saved_max != self.cfg.max_update:
            self.print(f"Note: {source} was saved by a run with --max_update {saved_max}; this run has "
                       f"{self.cfg.max_update}, and the learning-rate schedule follows the new value")
        own = self.model.state_dict()
        other_shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in ckpt["model"].items()
                        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
        if other_shapes and all(k.startswith("w2v_encoder.proj.") for k, _, _ in other_shapes):
            _, theirs, ours = other_shapes[0]
            raise RuntimeError(f"{source} was trained with another dictionary: {theirs[0]} output symbols there, "
                               f"{ours[0]} here; fine-tune with the dictionary it was trained with (--labels and the "
                               "dict.<labels>.txt of --data), or give this run its own --output_dir")
        if other_shapes:
            key, theirs, ours = other_shapes[0]
            raise RuntimeError(f"{source} holds a model of another size: {len(other_shapes)} weight(s) differ in shape, "
                               f"e.g. {key} is {list(theirs)} there and {list(ours)} here; run with the architecture "
                               "flags (--preset, --encoder_layers, ...) it was trained with, or give this run its own "
                               "--output_dir")
        missing, unexpected = self.model.load_state_dict(ckpt["model"], strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{source}: model weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        if is_reference_training_checkpoint(ckpt):
            self._load_reference_optimizer(ckpt, source)
        else:
            if "optimizer" in ckpt:
                state, converted = adapt_optimizer_state(ckpt["optimizer"], self.optimizer)
                if converted:
                    self.print(f"{source}: optimizer state converted to {converted} (saved by the other Adam "
                               "implementation: NVIDIA apex installed or removed since)")
                self.optimizer.load_state_dict(state)
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("lr_scheduler"):
            self.scheduler.load_state_dict(ckpt["lr_scheduler"])
        ts = ckpt.get("train_state", {})
        self.state = TrainState(
            step=int(ts.get("step", 0)),
            epoch=int(ts.get("epoch", 1)),
            best_val_loss=float(ts.get("best_val_loss", math.inf)),
            best_val_wer=float(ts.get("best_val_wer", math.inf)),
        )
        if hasattr(self.model, "set_num_updates"):  # the Gumbel temperature and the freeze counter follow the step
            self.model.set_num_updates(self.state.step)
        if ckpt.get("data"):
            try:
                changed = self.train_loader.load_state_dict(ckpt["data"],
                                                            allow_plan_change=self.cfg.allow_data_plan_change)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
            if changed:
                self.print(f"{source}: {changed}")
            self._align_data_position(source)
        if ckpt.get("metrics"):
            self.metrics.load_state_dict(ckpt["metrics"])
        if self.health is not None and ckpt.get("health"):
            self.health.load_state_dict(ckpt["health"])
        if self.val_health is not None and ckpt.get("val_health"):
            self.val_health.load_state_dict(ckpt["val_health"])
        if self.ema is not None and ckpt.get("ema_model"):
            self.ema.load_state_dict(ckpt["ema_model"])
        if ckpt.get("rng", {}).get("torch") is not None:
            torch.set_rng_state(ckpt["rng"]["torch"])

    def _align_data_position(self, source: str) -> None:
        """Updates start at multiples of ``update_freq`` batches: a restored position between two (a changed plan
        or ``--update_freq``) moves back to the last update start, repeating fewer than ``update_freq`` batches."""
        loader, uf = self.train_loader, self.cfg.update_freq
        pos = loader.batch_in_epoch
        if pos % uf == 0:
            return
        state = dict(loader.state_dict(), batch_in_epoch=pos - pos % uf)
        loader.load_state_dict(state)
        self.print(f"{source}: data position {pos} is not a multiple of --update_freq {uf}: resuming at batch "
                   f"{pos - pos % uf}")

    def _load_reference_optimizer(self, ckpt: Mapping[str, Any], source: str) -> None:
        """The reference's optimizer layout (REFERENCE.md 2.2: one flat FP32 Adam state + ``loss_scale`` in mixed
        precision, per-parameter FusedAdam moments in FP32) converted to ours; its train_state starts a new epoch and
        it saves no data position, RNG or metrics, so those start fresh (the schedule is a function of the step)."""
        ref = ckpt.get("optimizer")
        if not isinstance(ref, Mapping):
            raise ValueError(f"{source}: reference checkpoint without an optimizer state")
        layout = None
        if self.reference_layout is not None:
            index = {id(p): i for i, p in enumerate(self.params)}
            by_name = {name: index[id(p)] for name, p in self.model.named_parameters() if id(p) in index}
            try:
                layout = [[by_name[name] for name in names] for names in self.reference_layout(ckpt)]
            except KeyError as exc:
                raise ValueError(f"{source}: the reference optimizer state names a parameter this model does not "
                                 f"have: {exc.args[0]}") from None
        try:
            converted = adam_state_from_reference(ref, self.params, self.optimizer, layout)  # torch AdamW's layout
            self.optimizer.load_state_dict(adapt_optimizer_state(converted, self.optimizer)[0])  # apex: its own
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{source}: the reference optimizer state does not fit this model: {exc}") from None
        if "loss_scale" in ref:
            self.scaler.load_state_dict({"loss_scale": float(ref["loss_scale"])})
        self.print(f"{source}: resuming a reference ({ckpt['train_state'].get('optimizer_type')}) checkpoint: "
                   "optimizer moments and loss scale converted; data position, RNG streams and metrics start afresh")

    def _save_before_data_failure(self, position: int) -> None:
        """Reading a batch of the update failed (the update was not applied): save the state after the previous
        update, with the data position at the failed update's first batch, so that a resume after the data is fixed
        repeats it instead of losing every update since the last checkpoint."""
        self.state.step -= 1
        self.train_loader.batch_in_epoch = position
        self.metrics.discard()
        clear_gradients(self.params)
        self._say_on_failure(f"Reading the data of update {self.state.step + 1} failed: saving the state after "
                             f"update {self.state.step}; fix the data, then --resume repeats the failed update")
        self.save(from_any_rank=True)

    def save(self, best: bool = False, from_any_rank: bool = False) -> None:
        """Rank 0 writes the checkpoint and applies the retention rule. ``from_any_rank`` (a failure on this rank,
        which the others cannot know about): any rank writes it, without retention, since the state is replicated."""
        if self.cfg.no_save or not (self.env.is_main or from_any_rank):
            return
        if self.env.is_main:
            self.checkpointer.save(self.state_dict(), self.state.step, best=best)
        else:
            path = self.checkpointer.path_for(self.state.step)
            print(f"[rank {self.env.rank}] Saving {path}...", flush=True)
            atomic_torch_save(self.state_dict(), path)

    def _say_on_failure(self, message: str) -> None:
        """A failure on this rank is reported by this rank (``self.print`` only speaks on rank 0)."""
        if self.env.is_main:
            self.print(message)
        else:
            print(f"[rank {self.env.rank}] {message}", flush=True)

    # ------------------------------------------------------------------------------------------------------------------
    # one update
    def _seed_micro_batch(self, index: int) -> None:
        s = micro_batch_seed(self.cfg.seed, self.state.step, index)
        torch.manual_seed(s)  # dropout (CPU and CUDA)
        self.generator.manual_seed(s ^ 0x5DEECE66D)  # masks, negatives, Gumbel noise

    def _to_device(self, batch: Mapping[str, Any]) -> dict:
        dev = self.env.device
        out = {}
        for k, v in batch.items():
            out[k] = v.to(dev, non_blocking=True) if torch.is_tensor(v) and k in ("source", "lengths") else v
        if torch.is_tensor(batch.get("lengths")):
            # the loader's copy stays too: length arithmetic on it needs no read back from the device
            out["host_lengths"] = batch["lengths"]
        return out

    def _update(self, batches: Iterator[Mapping[str, Any]]) -> None:
        cfg, env = self.cfg, self.env
        self.state.step += 1
        step = self.state.step
        if hasattr(self.model, "set_num_updates"):
            self.model.set_num_updates(step)
        lr = self.optimizer.param_groups[0]["lr"]
        loss_scale = float(getattr(self.scaler, "loss_scale", 1.0))
        sample_size = 0.0
        losses = []  # read once after the last micro-batch: no host synchronisation between micro-batches
        data_wait = 0.0  # seconds this rank waited for its batches (a loader that cannot keep up shows here)
        for j in range(cfg.update_freq):
            fetch_start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                raise
            except Exception as exc:  # an unreadable audio file, a worker that died, ...
                raise _BatchFetchError() from exc
            data_wait += time.perf_counter() - fetch_start
            self._seed_micro_batch(j * env.world_size + env.rank)
            with self.precision.autocast():
                loss, ss, log = self.task.train_step(self.model, self._to_device(batch), self.generator)
            (loss * loss_scale).backward()
            sample_size += float(ss)
            losses.append(loss.detach().double())
            self.metrics.log(log)
        loss_sum = float(torch.stack(losses).sum())  # a NaN/inf micro-batch loss makes the sum non-finite
        finite = math.isfinite(loss_sum)

        # reduce over ranks
        # (a stop signal joins the reduction: each rank may get it at a different moment, all stop after the same
        # update, so none waits alone in the next update's all-reduce)
        sample_size, loss_sum, nonfinite, stop_votes = all_reduce_sum(
            [sample_size, loss_sum, 0.0 if finite else 1.0, 1.0 if self._stop_requested else 0.0], env.device)
        if stop_votes:
            self._stop = True
        if nonfinite:
            self.metrics.discard()  # every rank knows: the skipped update's NaN/inf never reaches the logged averages
        else:
            self.metrics.all_reduce(env.world_size)
        all_reduce_gradients(self.params, env.world_size)

        skipped_reason = None
        grad_norm = float("nan")
        if nonfinite or sample_size <= 0:
            skipped_reason = "non-finite loss" if nonfinite else "empty update (sample size 0)"
            if nonfinite and cfg.on_nonfinite_loss == "stop":
                raise FloatingPointError(f"non-finite training loss at update {step}; stopping (--on_nonfinite_loss stop)")
            if nonfinite:
                self._nonfinite_run += 1
                if self._nonfinite_run >= MAX_CONSECUTIVE_NONFINITE:
                    raise FloatingPointError(
                        f"{self._nonfinite_run} consecutive updates (to update {step}) had a non-finite loss and were "
                        f"skipped: the weights (non-finite values in --w2v_path or the resumed checkpoint?) or the "
                        f"data are broken; stopping with nothing applied since update {step - self._nonfinite_run}")
        else:
            scale_gradients(self.params, 1.0 / (sample_size * loss_scale))
            grad_norm = clip_grad_norm(self.params, cfg.clip_norm)
            res = self.scaler.update(grad_norm, update=step)  # may raise MinimumLossScaleError
            if res.skipped:
                skipped_reason = res.reason
        if skipped_reason is None:
            self._nonfinite_run = 0
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self.print(f"Update {step} skipped: {skipped_reason}")
        clear_gradients(self.params)

        norm_loss = loss_sum / max(sample_size, 1e-12) / math.log(2)
        self.update_losses.append(norm_loss)
        self.metrics["lr"] = lr
        self.metrics["loss_scale"] = float(getattr(self.scaler, "loss_scale", 1.0))
        self.metrics["data_s"] = data_wait  # (rank 0's, as logged; the scopes turn it into a fraction of their time)
        if skipped_reason is None:  # a skipped update has no meaningful norm: leave it out of the averages
            self.metrics["grad_norm"] = grad_norm
        self.metrics.accumulate()
        self.scheduler.step(step)

    # ------------------------------------------------------------------------------------------------------------------
    # epochs
    def _log(self, scope: str, step: Any, results: Mapping[str, float], metrics: MetricsAggregator) -> None:
        data = dict(metrics.dllogger_data(scope, results))
        # ours: the global update, which the (epoch, iteration) step does not give once an epoch was cut short by
        # --max_update or a run was extended (plots use it as their x axis)
        data[f"{scope}_update"] = self.state.step
        self.logger.log(step, data)
        if self.tensorboard is not None:
            self.tensorboard.log_scalars(scope, self.state.step, results)

    def _check_health(self, results: Mapping[str, float], monitor: Optional[HealthMonitor] = None,
                      save: bool = True) -> None:
        """Report the monitor's issues; a ``stop`` ends the run with :class:`HealthStop`, after saving this update
        (``save``; a validation-time stop is saved by the epoch end instead, once the trained weights are back in
        place of the EMA weights and the epoch is complete). Every rank sees the same reduced figures, so all stop."""
        monitor = monitor or self.health
        if monitor is None:
            return
        for issue in monitor.check(results, self.state.step):
            self.print(f"HEALTH {issue.kind}: {issue.reason} (action: {issue.action})")  # (the reason names the update)
            if issue.action == "stop":
                if save:
                    self.save()
                flag = "--on_nonfinite_loss stop" if issue.kind == "non_finite_loss" else "--on_collapse stop"
                kept = ("nothing saved (--no_save)" if self.cfg.no_save else
                        f"update {self.state.step} saved (--resume continues from it)")
                raise HealthStop(f"{issue.kind}: {issue.reason}; stopped by {flag}, {kept}")

    def _install_signal_handlers(self) -> dict:
        """SIGTERM, SIGUSR1 and a first Ctrl-C (SIGINT) stop the run at the end of the current update, after saving
        it; a second Ctrl-C stops at once (KeyboardInterrupt), without saving. Returns the previous handlers."""
        main_pid = os.getpid()

        def handler(signum, frame):  # noqa: ARG001
            if os.getpid() != main_pid:  # a forked DataLoader worker (Ctrl-C reaches the whole process group)
                return
            if signum == signal.SIGINT and self._stop_requested:
                raise KeyboardInterrupt
            again = " (Ctrl-C again: stop at once, without saving)" if signum == signal.SIGINT else ""
            self.print(f"Signal {signum} received: saving at the end of this update and stopping{again}")
            self._stop_requested = True

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # not in the main thread
                pass
        return previous

    def fit(self) -> TrainState:
        """Train until ``max_update`` (or a job limit, or a stop signal); the process's signal handlers are restored
        afterwards."""
        previous = self._install_signal_handlers()
        try:
            return self._fit()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _fit(self) -> TrainState:
        cfg = self.cfg
        self.model.train()
        self.scheduler.begin(self.state.step + 1)
        start_epoch = self.state.epoch
        start_step = self.state.step
        loader = self.train_loader
        steps_per_epoch = len(loader) // cfg.update_freq
        if steps_per_epoch == 0:
            raise ValueError(
                f"the training set yields {len(loader)} batches per rank, fewer than update_freq={cfg.update_freq}"
            )
        ran_updates = False
        # a stop saved at the update that reached max_update part-way through an epoch left that epoch's end
        # (average, validation, save) to this job
        loader.set_epoch(self.state.epoch)
        epoch_end_left = self.state.step >= cfg.max_update and loader.batch_in_epoch > 0
        progress = (Progress(total=cfg.max_update - self.state.step, desc="train", unit="updates")
                    if self.env.is_main and not epoch_end_left else None)
        while self.state.step < cfg.max_update or epoch_end_left:
            epoch_end_left = False
            epoch = self.state.epoch
            loader.set_epoch(epoch)
            done_in_epoch = loader.batch_in_epoch // cfg.update_freq
            self.metrics.start_scope("train_avg", sync=True)
            self.metrics.start_scope("train", timer=False)
            # a job that continues an epoch part-way through carries on its epoch average and log window (a
            # checkpoint's scopes are used, or dropped, at the first epoch start after loading it)
            ran_in_epoch = self.metrics.resume_scopes(apply=loader.batch_in_epoch > 0)
            it = iter(loader)
            while done_in_epoch < steps_per_epoch and self.state.step < cfg.max_update:
                position = loader.batch_in_epoch
                self.metrics.start_timer("train")
                try:
                    self._update(it)
                except _BatchFetchError as failure:
                    self._save_before_data_failure(position)
                    raise failure.__cause__  # type: ignore[misc]
                self.metrics.stop_timer("train")
                ran_updates = ran_in_epoch = True
                done_in_epoch += 1
                if progress is not None:
                    progress.update(1)
                if self.state.step % cfg.log_frequency == 0:
                    res = self.metrics.finish_scope("train")
                    self._log("train", (epoch, done_in_epoch, steps_per_epoch), res, self.metrics)
                    self._check_health(res)
                    self.metrics.start_scope("train", timer=False)
                if (cfg.save_interval_updates and self.state.step % cfg.save_interval_updates == 0
                        and self.state.step < cfg.max_update):  # (the last update is saved after its validation)
                    self.save()
                if (cfg.updates_this_job and self.state.step - start_step >= cfg.updates_this_job
                        and self.state.step < cfg.max_update):  # (at max_update the run ends as usual: epoch
                    self._stop = True                          # average, validation, save, summary)
                if self._stop:
                    self.save()
                    self.print(f"Stopped at update {self.state.step}; resume with --resume")
                    return self.state
            del it
            if ran_in_epoch:  # (one resumed at the end of an epoch has one only if its checkpoint carried it)
                res = self.metrics.finish_scope("train_avg", sync=True)
                self._log("train_avg", (epoch,), res, self.metrics)
            best = False
            health_stop: Optional[HealthStop] = None
            if cfg.validate and self.valid_loader is not None:
                try:
                    best = self.validate()
                except HealthStop as stop:  # the epoch is complete and validated: end it as usual, save, then stop
                    health_stop = stop
                except Exception:
                    self._say_on_failure("Validation failed: saving the trained epoch first (a resume validates it "
                                         "again)")
                    self.save(from_any_rank=True)
                    raise
            self.state.epoch += 1
            loader.set_epoch(self.state.epoch)
            if epoch % cfg.save_frequency == 0 or best or self.state.step >= cfg.max_update or health_stop:
                self.save(best=best)
            if health_stop is not None:
                raise health_stop
            if 0 < cfg.epochs_this_job <= epoch + 1 - start_epoch:
                self.print(f"Reached {cfg.epochs_this_job} epochs in this run.")
                break
            if self.state.step >= cfg.max_update:
                self.print(f"Reached {self.state.step} total updates.")
        if progress is not None:
            progress.close()
        if ran_updates:
            self.logger.log((), self.metrics.benchmark())
            if self._last_val:
                self.logger.log((), self._last_val)
        self.logger.flush()
        self.print(f"Finished after reaching update {self.state.step}")
        return self.state

    # ------------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> bool:
        """One pass over the validation loader; returns True on a new best (loss in pretraining, WER in fine-tuning).
        With ``--ema`` it runs on the EMA weights; the trained weights and train mode come back even if it fails."""
        self.print("Validating...")
        model = self.model
        backup = None
        if self.ema is not None:
            backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.ema.copy_to(model)
        model.eval()
        try:
            res = self._validation_pass(model)
        finally:
            model.train()
            if backup is not None:
                model.load_state_dict(backup)
        if self.cfg.best_metric == "wer" and "wer" in res:
            best = res["wer"] < self.state.best_val_wer
            self.state.best_val_wer = min(self.state.best_val_wer, res["wer"])
        else:
            best = res.get("loss", math.inf) < self.state.best_val_loss
            self.state.best_val_loss = min(self.state.best_val_loss, res.get("loss", math.inf))
        return best

    def _validation_pass(self, model: nn.Module) -> dict:
        vm = self.valid_metrics
        vm.start_scope("val", sync=True)
        loader = self.valid_loader
        loader.set_epoch(1)
        progress = (Progress(total=len(loader), desc="validation", unit="batches")
                    if self.env.is_main and len(loader) > 1 else None)
        keys: Optional[list[str]] = None
        for i, batch in enumerate(loader):
            self._seed_micro_batch(10**6 + i)  # validation randomness (masks, negatives) is fixed per batch
            if batch:
                with self.precision.autocast():
                    _, _, log = self.task.valid_step(model, self._to_device(batch), self.generator)
                keys = keys or list(log)
                log = dict(log, ignore=0)
            if i == 0 and self.env.world_size > 1:  # a rank whose first batch is empty learns the keys to log
                keys = first_of_ranks(keys, self.env.world_size)
            if not batch:
                log = {k: 0.0 for k in (keys or [])}
                log["ignore"] = 1
            vm.log(log)
            vm.all_reduce(self.env.world_size)
            vm.accumulate()
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()
        res = vm.finish_scope("val", sync=True)
        self._log("val", (self.state.epoch,), res, vm)
        self._last_val = vm.dllogger_data("val", res)
        self._check_health(res, self.val_health, save=False)
        return res
