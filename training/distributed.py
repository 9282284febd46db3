"""Distributed data parallel helpers: process group from torchrun, cross-rank reductions.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a
single-process no-op, so the same code runs on a laptop and on many nodes. Backends: NCCL
on CUDA, gloo on CPU.

A process that sees one GPU (``CUDA_VISIBLE_DEVICES`` set per task, as Slurm's
``--gpus-per-task`` does) uses ``cuda:0`` whatever its LOCAL_RANK. The process group is
bound to the device (``device_id``), waits up to ``TIMEOUT`` in a collective (a first
image-cache build on one node can keep the others waiting for hours; override with
CXR_MSN_DIST_TIMEOUT_S) and is destroyed at exit.
"""

from __future__ import annotations

import atexit
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

TIMEOUT = timedelta(hours=24)  # as long as pretrain_data's WAIT_S for an image cache


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but CUDA is not available")
        return torch.device("cuda", cuda_index(local_rank, torch.cuda.device_count()))
    if name not in ("auto", "cpu"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def cuda_index(local_rank: int, visible: int) -> int:
    """The CUDA device of local rank ``local_rank`` when ``visible`` devices are visible: its
    own index on a machine-wide view, 0 when the process sees exactly one GPU."""
    if 0 <= local_rank < visible:
        return local_rank
    if visible == 1:
        return 0
    raise ValueError(
        f"LOCAL_RANK {local_rank} but this process sees {visible} CUDA devices: give each "
        "process one GPU (CUDA_VISIBLE_DEVICES per task) or every GPU of the machine"
    )


def dist_timeout() -> timedelta:
    seconds = os.environ.get("CXR_MSN_DIST_TIMEOUT_S", "")
    return timedelta(seconds=float(seconds)) if seconds else TIMEOUT


def init_distributed(device_name: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=dist_timeout(),
            device_id=device if device.type == "cuda" else None,
        )
        atexit.register(shutdown)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown() -> None:
    """Destroy the process group (registered at exit by ``init_distributed``; idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (no gradient); identity in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class _AllReduceMean(torch.autograd.Function):
    """Forward: mean over ranks. Backward: the incoming gradient unchanged.

    With DDP averaging parameter gradients over ranks afterwards, this gives the exact
    gradient of a term computed on the global mean (original MSN's ``AllReduce``).
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        reduced = tensor.detach().clone() / dist.get_world_size()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, differentiable (see ``_AllReduceMean``); identity in a single process."""
    if not is_distributed():
        return tensor
    result: torch.Tensor = _AllReduceMean.apply(tensor)
    return result


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def wait_for_file(path: Path, *, timeout_s: float, what: str) -> None:
    """Poll until ``path`` exists: how ranks hand over slow work (an image cache, the EHR
    imputer) without a collective call that a long build could time out."""
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} ({path}) did not appear within {timeout_s:.0f} s")
        time.sleep(1.0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(value: Any) -> list[Any]:
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
