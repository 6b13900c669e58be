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


def _gloo_threads() -> list[str]:
    """The names of this process's gloo threads (ProcessGroupGloo's ``pt_gloo_runloop`` workers, the transport's
    ``gloo_tcp_loop``)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # a thread that just ended
            pass
    return sorted(n for n in names if "gloo" in n)


def _shutdown_worker(rank: int, port: int, out_dir: str) -> None:
    """One rank as train.py runs it: common.distributed's set-up, an optimizer built after it, then shutdown."""
    import sys

    torch.set_num_threads(1)
    imported_before = "torch.distributed.nn.functional" in sys.modules
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    from common.distributed import init_distributed, shutdown
    from common.optim import OptimizerConfig, build_optimizer

    init_distributed(cpu=True)
    during = _gloo_threads()
    build_optimizer(torch.nn.Linear(3, 2).parameters(), OptimizerConfig(lr=0.01))  # torch.optim imports torch._dynamo
    shutdown(finished=True)
    after = _gloo_threads()
    torch.save({"imported_before": imported_before, "during": during, "after": after,
                "dynamo": "torch._dynamo" in sys.modules}, os.path.join(out_dir, f"threads{rank}.pt"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the thread names from /proc (Linux)")
def test_shutdown_ends_gloos_threads_although_an_optimizer_was_built_after_the_group(tmp_path):
    """torch.distributed.nn.functional captures ``group.WORLD`` as default arguments when first imported, and
    building a torch optimizer imports it (through torch._dynamo): imported after init_process_group, it held the
    process group past destroy_process_group, and gloo's threads ran on into interpreter finalisation, where a
    finished two-rank CPU run sometimes aborted ("terminate called without an active exception", status 134).
    init_distributed imports it first: shutdown ends every gloo thread."""
    mp.spawn(_shutdown_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"threads{rank}.pt", weights_only=True)
        assert not got["imported_before"], "the worker imported torch.distributed.nn.functional early: no test"
        assert got["during"] and got["dynamo"]  # (the group's threads were there; the optimizer imported dynamo)
        assert got["after"] == [], got


def _early_error_worker(rank: int, port: int, corpus: str, out_dir: str) -> None:
    """One rank of ``torchrun train.py`` (in-process) whose run fails after the process group was initialised."""
    import sys

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    import train
    from conftest import MICRO_MODEL

    # 16 utterances make a few batches per rank: fewer than --update_freq 64, an error found after set-up
    status = train.main(["pretrain", *MICRO_MODEL, "--data", corpus, "--output_dir", os.path.join(out_dir, "run"),
                         "--cpu", "--num_workers", "0", "--update_freq", "64"])
    torch.save({"status": status, "initialized": dist.is_initialized()}, os.path.join(out_dir, f"early{rank}.pt"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_a_run_that_fails_before_training_ends_its_process_group(tiny_corpus, tmp_path):
    """train.py's set-up errors after init_distributed (here too few batches for --update_freq) returned 2 with the
    process group still alive: gloo's threads then ran into interpreter finalisation (the abort at exit, status 134
    for torchrun instead of 2). main() now ends the group on every way out."""
    mp.spawn(_early_error_worker, args=(_free_port(), tiny_corpus, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"early{rank}.pt", weights_only=True)
        assert got == {"status": 2, "initialized": False}


def _inference_error_worker(rank: int, port: int, out_dir: str) -> None:
    """One rank of ``torchrun inference.py`` (in-process) whose run fails after the process group was initialised."""
    import sys

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    import inference

    status = inference.main(["--w2v_path", os.path.join(out_dir, "missing.pt"), "--data", out_dir, "--output_dir",
                             os.path.join(out_dir, "out"), "--cpu", "--batch_size", "1"])
    torch.save({"status": status, "initialized": dist.is_initialized()}, os.path.join(out_dir, f"inf{rank}.pt"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_an_inference_run_that_fails_after_set_up_ends_its_process_group(tmp_path):
    """As train.py: inference.py's errors after init_distributed (here a missing checkpoint) returned 2 with the
    process group still alive, gloo's threads left to interpreter finalisation."""
    mp.spawn(_inference_error_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"inf{rank}.pt", weights_only=True)
        assert got == {"status": 2, "initialized": False}
