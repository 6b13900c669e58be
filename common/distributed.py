"""Process-group set-up for ``torchrun`` (nccl on GPU, gloo on CPU) and gradient all-reduce.

Gradients are summed across ranks explicitly after the last micro-batch of an update (no DDP module wrapper):
parameters that a rank did not use (LayerDrop, a frozen encoder, ``feature_grad_mult 0``) contribute zeros, so no
``find_unused_parameters`` pass is ever needed and accumulation never communicates. A parameter that NO rank used
keeps ``grad = None``, as on one rank (and as DDP leaves globally unused parameters), so the optimizer skips it:
no weight decay or momentum step for a layer that LayerDrop dropped everywhere.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "init_distributed", "all_reduce_gradients", "all_reduce_sum", "barrier", "shutdown"]


#: how long a collective may wait for a lagging rank before the run is aborted (see init_distributed)
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


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


def select_device(cpu: bool = False, device: Optional[str] = None, local_rank: int = 0,
                  world_size: int = 1) -> torch.device:
    """``--device`` (``cuda`` means this rank's GPU, ``cuda:<local_rank>``), else this rank's GPU when CUDA is
    available and ``--cpu`` is not given, else the CPU. One GPU per rank: an explicit index is refused under
    torchrun with several ranks (every rank would use that one GPU), and a local rank beyond the visible GPUs is an
    error naming NUM_GPUS / --nproc_per_node."""
    if device:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
        elif dev.type == "cuda" and world_size > 1:
            raise ValueError(f"--device {device} puts all {world_size} ranks on one GPU: give --device cuda (each "
                             "rank takes the GPU of its LOCAL_RANK) or restrict the GPUs with CUDA_VISIBLE_DEVICES")
    elif not cpu and torch.cuda.is_available():
        dev = torch.device("cuda", local_rank)
    else:
        return torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available() and dev.index >= torch.cuda.device_count():
        raise ValueError(f"GPU {dev.index} requested (local rank {local_rank}) but only {torch.cuda.device_count()} "
                         "visible: lower NUM_GPUS / torchrun --nproc_per_node, or check CUDA_VISIBLE_DEVICES")
    return dev


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
    dev = select_device(cpu, device, local, world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        _import_group_capturing_modules()
        # 30 min instead of NCCL's 10 before a collective is declared hung: rank 0 writing a Large checkpoint (twice
        # for a new best), every rank reading one at a resume, or torch.compile's first graphs can keep ranks apart
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://",
                                timeout=COLLECTIVE_TIMEOUT)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def _import_group_capturing_modules() -> None:
    """Import, before the process group exists, the torch modules that capture ``group.WORLD`` at import time.

    ``torch.distributed.nn.functional`` has ten functions whose default argument is ``group=group.WORLD``, evaluated
    when the module is first imported; ``torch._dynamo`` imports it, and ``torch.optim``'s optimizers import
    ``torch._dynamo`` when the first one is built, i.e. after ``init_process_group``. Those defaults then hold the
    default ProcessGroup for the life of the interpreter: ``destroy_process_group`` cannot free it, and gloo's worker
    and transport threads ran on into interpreter finalisation, where a two-rank CPU run sometimes aborted after
    its work was done ("terminate called without an active exception", exit status 134 for torchrun). Imported
    first, the defaults are None (= the default group at call time) and the group ends with
    ``destroy_process_group``. (A few milliseconds: the module does not import torch._dynamo.)"""
    try:
        import torch.distributed.nn.functional  # noqa: F401
    except Exception:  # an unusual torch build (e.g. without RPC): nothing to pin then
        pass


def first_of_ranks(value: Any, world_size: int) -> Any:
    """The first rank's ``value`` that is not None (every rank must call it), e.g. the metric keys of a validation
    batch, which a rank with an empty batch does not have but must all-reduce in the same order."""
    if world_size <= 1 or not dist.is_initialized():
        return value
    values: list = [None] * world_size
    dist.all_gather_object(values, value)
    return next((v for v in values if v is not None), None)


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


def shutdown(finished: bool = False) -> None:
    """Destroy the process group. ``finished``: every rank got here the normal way (they stop after the same update),
    so they first wait for each other: no rank tears its connections down while another still writes a checkpoint.
    After an error no barrier: the other ranks may never arrive. (The gloo abort at exit, "terminate called without
    an active exception", came from a group kept alive after this call: see _import_group_capturing_modules.)"""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
