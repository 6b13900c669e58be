"""common.distributed.all_reduce_gradients on two gloo processes (one thread each)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from common.distributed import all_reduce_gradients

        # a: used on both ranks; b: only on rank 1 (LayerDrop kept it there); c: on no rank; d: frozen
        a, b, c, d = (torch.nn.Parameter(torch.zeros(3)) for _ in range(4))
        d.requires_grad_(False)
        a.grad = torch.full((3,), float(rank + 1))
        if rank == 1:
            b.grad = torch.tensor([1.0, 2.0, 3.0])
        all_reduce_gradients([a, b, c, d], world_size=2, bucket_mb=1e-6)  # tiny buckets: one flush per tensor
        torch.save({"a": a.grad, "b": b.grad, "c": c.grad, "d": d.grad}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_and_keeps_globally_unused_gradients_none(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert torch.equal(got["a"], torch.full((3,), 3.0))  # 1 + 2
        assert torch.equal(got["b"], torch.tensor([1.0, 2.0, 3.0]))  # rank 0 contributed zeros
        assert got["c"] is None  # unused everywhere: the optimizer must skip it, as on one rank
        assert got["d"] is None
