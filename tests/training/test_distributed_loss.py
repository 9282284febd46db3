"""Under DDP the Sinkhorn sums and the mean anchor probability are reduced across ranks.

Two real gloo processes each hold half of a batch; the loss they report (averaged) and the
prototype gradient (averaged, as DDP does) must equal one process holding the whole batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from serving.devserver import free_port
from training.msn.msn_loss import msn_loss, sinkhorn

BATCH, VIEWS, WIDTH, PROTOTYPES = 4, 3, 8, 6


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randn(BATCH, WIDTH, generator=generator)
    anchors = torch.randn(VIEWS, BATCH, WIDTH, generator=generator)  # [view, image, width]
    prototypes = torch.randn(PROTOTYPES, WIDTH, generator=generator)
    return anchors, targets, prototypes


def _shard(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    anchors, targets, prototypes = _inputs()
    half = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    return anchors[:, half].reshape(-1, WIDTH), targets[half], prototypes


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        anchors, targets, prototypes = _shard(rank, world)
        prototypes.requires_grad_(True)
        out_loss = msn_loss(anchors, targets, prototypes, sinkhorn_iters=3)
        out_loss.loss.backward()
        grad = prototypes.grad
        assert grad is not None
        dist.all_reduce(grad)  # what DDP does with parameter gradients: the mean
        loss = out_loss.loss.detach().clone()
        dist.all_reduce(loss)
        balanced = sinkhorn(torch.softmax(targets * 4, dim=1)[:, :PROTOTYPES], iterations=3)
        torch.save(
            {
                "loss": loss / world,
                "grad": grad / world,
                "balanced": balanced,
                "entropy": out_loss.mean_entropy,
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    anchors, targets, prototypes = _shard(0, 1)
    prototypes.requires_grad_(True)
    single = msn_loss(anchors, targets, prototypes, sinkhorn_iters=3)
    single.loss.backward()
    assert prototypes.grad is not None
    balanced = sinkhorn(torch.softmax(targets * 4, dim=1)[:, :PROTOTYPES], iterations=3)

    for result in ranks:
        assert torch.allclose(result["loss"], single.loss.detach(), atol=1e-5)
        assert torch.allclose(result["grad"], prototypes.grad, atol=1e-6)
        assert torch.allclose(result["entropy"], single.mean_entropy.detach(), atol=1e-6)
    assert torch.allclose(torch.cat([r["balanced"] for r in ranks]), balanced, atol=1e-6)
    # The local-batch loss would differ: the reduction is doing something.
    local = msn_loss(*_shard(0, 2), sinkhorn_iters=3)
    assert not torch.allclose(local.mean_entropy, single.mean_entropy, atol=1e-4)
