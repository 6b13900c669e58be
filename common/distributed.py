"""Process-group set-up for ``torchrun`` (nccl on GPU, gloo on CPU) and gradient all-reduce.

Gradients are summed across ranks explicitly after the last micro-batch of an update (no DDP module wrapper):
parameters that a rank did not use (LayerDrop, a frozen encoder, ``feature_grad_mult 0``) contribute zeros, so no
``find_unused_parameters`` pass is ever needed and accumulation never communicates. A parameter that NO rank used
keeps ``grad = None``, as on one rank (and as DDP leaves globally unused parameters), so the optimizer skips it:
no weight decay or momentum step for a layer that LayerDrop dropped everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "init_distributed", "all_reduce_gradients", "all_reduce_sum", "barrier", "shutdown"]


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(cpu: bool = False, device: Optional[str] = None, local_rank: int = 0) -> torch.device:
    if device:
        return torch.device(device)
    if not cpu and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): before reading a clock around device work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu" and hasattr(torch, "xpu"):
        torch.xpu.synchronize(device)


def init_distributed(cpu: bool = False, device: Optional[str] = None) -> DistEnv:
    """Read torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK) and initialise the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(cpu, device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], world_size: int, bucket_mb: float = 32.0) -> None:
    """Sum every parameter's gradient over ranks in flat buckets. A gradient missing on some ranks counts as zeros
    there; one missing on every rank stays None."""
    if world_size <= 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(used, op=dist.ReduceOp.SUM)
    globally_used = used.cpu().tolist()
    for p, n in zip(params, globally_used):
        if n == 0:
            p.grad = None
        elif p.grad is None:
            p.grad = torch.zeros_like(p)
    params = [p for p in params if p.grad is not None]
    limit = int(bucket_mb * 2**20)
    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in bucket:
            by_dtype.setdefault(g.dtype, []).append(g)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in grads:
                n = g.numel()
                g.copy_(flat[offset : offset + n].view_as(g))
                offset += n
        bucket, size = [], 0

    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= limit:
            flush()
    flush()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of Python numbers over ranks (float64)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
