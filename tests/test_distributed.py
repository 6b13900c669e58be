"""common.distributed.all_reduce_gradients on two gloo processes (one thread each)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from conftest import gloo_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    with gloo_worker(rank, port):
        from common.distributed import all_reduce_gradients

        # a: used on both ranks; b: only on rank 1 (LayerDrop kept it there); c: on no rank; d: frozen
        a, b, c, d = (torch.nn.Parameter(torch.zeros(3)) for _ in range(4))
        d.requires_grad_(False)
        a.grad = torch.full((3,), float(rank + 1))
        if rank == 1:
            b.grad = torch.tensor([1.0, 2.0, 3.0])
        all_reduce_gradients([a, b, c, d], world_size=2, bucket_mb=1e-6)  # tiny buckets: one flush per tensor
        torch.save({"a": a.grad, "b": b.grad, "c": c.grad, "d": d.grad}, os.path.join(out_dir, f"{rank}.pt"))


def test_all_reduce_sums_and_keeps_globally_unused_gradients_none(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert torch.equal(got["a"], torch.full((3,), 3.0))  # 1 + 2
        assert torch.equal(got["b"], torch.tensor([1.0, 2.0, 3.0]))  # rank 0 contributed zeros
        assert got["c"] is None  # unused everywhere: the optimizer must skip it, as on one rank
        assert got["d"] is None


def _two_rank_toy_trainer(rank: int, out_dir: str, task, train_loader, valid_loader=None, **cfg):
    """The toy trainer of tests/test_trainer.py as one of two gloo ranks (the process group already initialised)."""
    from conftest import RecordingLogger

    from common.distributed import DistEnv
    from common.lr_schedules import LRScheduleConfig, LRScheduler
    from common.metrics import MetricsAggregator, MetricsSpec
    from common.optim import OptimizerConfig, build_optimizer
    from common.precision import PrecisionPolicy
    from common.trainer import Trainer, TrainerConfig

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), OptimizerConfig(lr=0.01))
    precision = PrecisionPolicy(mode="fp32", device="cpu")
    return Trainer(
        TrainerConfig(output_dir=os.path.join(out_dir, "run"), **cfg), model=model, task=task, optimizer=opt,
        scheduler=LRScheduler(opt, LRScheduleConfig(lr=0.01, max_update=100, warmup_updates=1)),
        precision=precision, scaler=precision.make_loss_scaler(2, 1), train_loader=train_loader,
        valid_loader=valid_loader, metrics=MetricsAggregator(MetricsSpec.pretrain()),
        valid_metrics=MetricsAggregator(MetricsSpec.pretrain()), logger=RecordingLogger(), print_fn=lambda *a: None,
        env=DistEnv(rank=rank, world_size=2),
    )


def _stop_worker(rank: int, port: int, out_dir: str) -> None:
    """Two ranks of the toy trainer; only rank 1 receives SIGTERM, during its third update."""
    import signal

    with gloo_worker(rank, port):
        from test_trainer import _ToyLoader, _ToyTask

        class _Signalled(_ToyTask):
            calls = 0

            def train_step(self, model, batch, generator):
                self.calls += 1
                if rank == 1 and self.calls == 3:
                    signal.raise_signal(signal.SIGTERM)
                return super().train_step(model, batch, generator)

        trainer = _two_rank_toy_trainer(rank, out_dir, _Signalled(), _ToyLoader(6), max_update=8, validate=False)
        state = trainer.fit()
        torch.save({"step": state.step}, os.path.join(out_dir, f"stopped{rank}.pt"))


def test_a_stop_signal_on_one_rank_stops_every_rank_after_the_same_update(tmp_path):
    """SIGTERM (or Ctrl-C) reaches ranks at different moments, here only rank 1: the ranks agree on it in the next
    update's all-reduce and all stop after that update, so no rank waits alone in an all-reduce (a hang)."""
    import time

    ctx = mp.start_processes(_stop_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.time() + 120
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError("the ranks did not stop together (hang)")
    steps = [torch.load(tmp_path / f"stopped{r}.pt", weights_only=True)["step"] for r in (0, 1)]
    assert steps == [3, 3]
    assert os.path.exists(tmp_path / "run" / "wav2vec2_update3.pt")


def test_device_selection_gives_each_rank_its_own_gpu(monkeypatch):
    """--device cuda means this rank's GPU (torch.cuda.set_device refuses an index-less device, so --device cuda
    used to fail at start-up); an explicit index under several ranks would put them all on one GPU and is refused;
    a local rank beyond the visible GPUs (NUM_GPUS=8 on a 4-GPU machine) is one error naming the cause. CUDA is
    faked: only the choice is tested."""
    import torch

    from common.distributed import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert select_device(device="cuda", local_rank=3, world_size=4) == torch.device("cuda", 3)
    assert select_device(local_rank=2, world_size=4) == torch.device("cuda", 2)
    assert select_device(device="cuda:1") == torch.device("cuda", 1)  # one process: any GPU it names
    assert select_device(cpu=True, local_rank=2, world_size=4) == torch.device("cpu")
    assert select_device(device="cpu", world_size=4) == torch.device("cpu")
    with pytest.raises(ValueError, match="puts all 8 ranks on one GPU"):
        select_device(device="cuda:1", local_rank=0, world_size=8)
    with pytest.raises(ValueError, match="GPU 5 requested .* only 4 visible: lower NUM_GPUS"):
        select_device(local_rank=5, world_size=8)


def _validation_worker(rank: int, port: int, out_dir: str) -> None:
    """Two ranks validate; rank 1's only batch is empty (fewer validation utterances than ranks)."""
    with gloo_worker(rank, port):
        from test_trainer import _ToyLoader, _ToyTask

        class _ValidLoader(_ToyLoader):
            def __iter__(self):
                for batch in super().__iter__():
                    yield batch if rank == 0 else {}

        trainer = _two_rank_toy_trainer(rank, out_dir, _ToyTask(), _ToyLoader(2), _ValidLoader(1), max_update=1,
                                        validate=True)
        res = trainer._validation_pass(trainer.model)
        torch.save({"loss": res["loss"], "ntokens": res["ntokens"]}, os.path.join(out_dir, f"val{rank}.pt"))


def test_validation_with_an_empty_first_batch_on_one_rank(tmp_path):
    """Fewer validation utterances than ranks: a rank whose first batch is empty did not know the metric keys and
    all-reduced a shorter list than the others (gloo: a wrong result or a crash; NCCL: a hang). It now learns them
    from the other ranks; both ranks report the same figures, those of rank 0's batch alone."""
    mp.spawn(_validation_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"val{r}.pt", weights_only=True) for r in (0, 1))
    assert a == b and a["ntokens"] == 4
