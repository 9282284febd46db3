"""Distributed data parallel helpers: process group from torchrun, cross-rank reductions.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a
single-process no-op, so the same code runs on a laptop and on many nodes. Backends: NCCL
on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


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
        return torch.device("cuda", local_rank)
    if name not in ("auto", "cpu"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


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
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown() -> None:
    if is_distributed():
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
