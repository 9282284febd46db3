"""MSN wiring end to end: anchors meet their own image's target, the target branch gives the
prototypes no gradient, and two DDP ranks compute the gradient of one process on the whole batch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader

from serving.devserver import free_port
from tests.helpers import chest_like_picture
from tests.training.pretrain_fixtures import CPU
from training.config import PretrainConfig, ViewsConfig, apply_overrides
from training.data.dataset import PretrainDataset
from training.distributed import DistInfo
from training.msn.msn_loss import anchor_log_probabilities, msn_loss, target_probabilities
from training.msn.views import MultiViewTransform
from training.train_step import TrainParts, anchor_inputs, build_parts, train_step

IMAGES, SIZE = 6, 64
# Every view is the whole image (scale 1, no flip), so the anchor views of an image equal its
# target view: with no masking, the anchor and target networks (copies at step 0) agree on them.
IDENTICAL_VIEWS = ViewsConfig(
    target_size=SIZE,
    target_scale=(1.0, 1.0),
    rand_views=2,
    rand_size=SIZE,
    rand_scale=(1.0, 1.0),
    focal_views=0,
    flip_p=0.0,
)
NANO = [
    "model.arch=vit_nano_patch8_64",
    "views.target_size=64",
    "views.rand_size=64",
    "views.rand_views=2",
    "views.focal_views=0",
    "mask.ratio=0",
    "loss.sinkhorn_iters=0",
    "loss.num_prototypes=4",
]


def _images() -> np.ndarray:
    return np.stack([chest_like_picture(SIZE, SIZE, seed=100 + i) for i in range(IMAGES)])


def _batch(ehr: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """One shuffled batch of 4 distinct images through the real data set and loader."""
    dataset = PretrainDataset(_images(), np.arange(IMAGES), MultiViewTransform(IDENTICAL_VIEWS), ehr)
    loader = DataLoader(dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    batch: dict[str, torch.Tensor] = next(iter(loader))
    return batch


def _parts(*overrides: str, ehr_dim: int = 0) -> TrainParts:
    config = apply_overrides(PretrainConfig(), [*NANO, *overrides])
    torch.manual_seed(0)
    return build_parts(config, ehr_dim=ehr_dim, steps_per_epoch=1, dist_info=CPU)


def test_each_anchor_is_paired_with_its_own_images_target_and_the_loss_shows_it() -> None:
    parts, batch = _parts(), _batch()
    assert batch["rand"].shape == (4, 2, 3, SIZE, SIZE)
    groups, keeps = anchor_inputs(batch, parts)
    anchors, _ = parts.model(groups, keeps, None)
    assert parts.target is not None
    targets = parts.target(batch["target"])
    per_view = anchors.view(2, 4, -1)  # view-major: row v * B + b is view v of image b
    for view in range(2):
        torch.testing.assert_close(per_view[view], targets, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(targets[0], targets[1], atol=1e-3)  # the images are distinct

    # One prototype per image, on its target: a correct pairing puts every anchor on its own.
    with torch.no_grad():
        parts.msn_anchor.prototypes.copy_(targets)
    stats = train_step(parts, batch, step=0)
    prototypes = targets.detach()
    cosines = F.normalize(prototypes, dim=1) @ F.normalize(prototypes, dim=1).T
    expected = -(torch.softmax(cosines / 0.025, 1) * torch.log_softmax(cosines / 0.1, 1)).sum(1).mean()
    assert stats["cross_entropy"] == pytest.approx(float(expected), abs=1e-4)
    assert stats["agreement"] == 1.0 and stats["distinct_targets"] == 4

    # The same anchors paired one image off: the loss and the agreement show the error.
    shifted = msn_loss(anchors.detach(), prototypes.roll(1, 0), prototypes, sinkhorn_iters=0)
    assert float(shifted.cross_entropy) > float(expected) + 1.0
    assert float((shifted.targets.argmax(1) == torch.arange(4).repeat(2)).float().mean()) == 0.0


def test_each_images_ehr_is_fused_into_its_own_anchor_views() -> None:
    ehr = np.stack([np.full(3, 10.0 * i) + np.arange(3) for i in range(IMAGES)]).astype(np.float32)
    parts, batch = _parts(ehr_dim=3), _batch(ehr)
    transform = MultiViewTransform(IDENTICAL_VIEWS)
    plain = [transform(image).target for image in _images()]
    for b in range(4):  # the data set keeps an image's EHR with its views
        (index,) = [i for i, view in enumerate(plain) if torch.equal(view, batch["target"][b])]
        assert torch.equal(batch["ehr"][b], torch.from_numpy(ehr[index]))
    fusion = parts.msn_anchor.fusion
    assert fusion is not None
    width = parts.msn_anchor.encoder.embed_dim
    mixing = torch.randn(width, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # g(cxr, ehr) = cxr + mixing @ f_ehr(ehr): the EHR part is visible
        fusion.g.weight.copy_(torch.cat([torch.eye(width), mixing], dim=1))
        fusion.g.bias.zero_()
    seen: dict[str, torch.Tensor] = {}

    def record(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        seen["cxr"], seen["fused"] = inputs[0].detach(), output.detach()

    handle = fusion.register_forward_hook(record)
    try:
        groups, keeps = anchor_inputs(batch, parts)
        parts.model(groups, keeps, batch["ehr"])
    finally:
        handle.remove()
    with torch.no_grad():
        expected = (fusion.f_ehr(batch["ehr"]) @ mixing.T).repeat(2, 1)  # view-major
    torch.testing.assert_close(seen["fused"] - seen["cxr"], expected, rtol=1e-4, atol=1e-4)


def test_prototypes_get_no_gradient_through_the_target_branch() -> None:
    generator = torch.Generator().manual_seed(0)
    anchors = torch.randn(6, 8, generator=generator)
    targets = torch.randn(3, 8, generator=generator)
    prototypes = torch.randn(5, 8, generator=generator, requires_grad=True)
    msn_loss(anchors, targets, prototypes).loss.backward()
    assert prototypes.grad is not None
    # The same loss with the target probabilities taken as constants from a detached copy.
    fixed = prototypes.detach().clone().requires_grad_(True)
    probabilities = target_probabilities(
        targets, prototypes.detach(), tau=0.1, sharpen=0.25, sinkhorn_iters=3
    )
    log_probs = anchor_log_probabilities(anchors, fixed, 0.1)
    mean = log_probs.exp().mean(0)
    anchor_only = -(probabilities.repeat(2, 1) * log_probs).sum(1).mean() + (mean * mean.log()).sum()
    anchor_only.backward()
    torch.testing.assert_close(prototypes.grad, fixed.grad)
    # Letting gradient through the target probabilities would have changed it.
    leaky = prototypes.detach().clone().requires_grad_(True)
    logits = F.normalize(targets, dim=1) @ F.normalize(leaky, dim=1).T
    leaking = torch.softmax(logits / 0.025, dim=1).repeat(2, 1)
    log_leaky = anchor_log_probabilities(anchors, leaky, 0.1)
    (
        -(leaking * log_leaky).sum(1).mean() + (log_leaky.exp().mean(0) * log_leaky.exp().mean(0).log()).sum()
    ).backward()
    assert leaky.grad is not None and not torch.allclose(leaky.grad, prototypes.grad, atol=1e-6)

    # In a real step the target network holds no gradient and prototypes are not in it.
    parts = _parts()
    train_step(parts, _batch(), step=0)
    assert parts.target is not None
    assert all(p.grad is None and not p.requires_grad for p in parts.target.parameters())
    assert "prototypes" not in dict(parts.target.named_parameters())


# Encoder gradients under DDP ---------------------------------------------------------------

DDP = [
    "model.arch=vit_nano_patch16_224",
    "views.target_size=32",
    "views.rand_size=32",
    "views.focal_size=16",
    "views.focal_views=2",
    "mask.ratio=0",  # masks are random per rank; the reduction is what is tested
    "loss.num_prototypes=8",
]


def _global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        "target": torch.randn(4, 3, 32, 32, generator=generator),
        "rand": torch.randn(4, 1, 3, 32, 32, generator=generator),
        "focal": torch.randn(4, 2, 3, 16, 16, generator=generator),
        "ehr": torch.rand(4, 3, generator=generator),
    }


def _step_gradients(dist_info: DistInfo, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    config = apply_overrides(PretrainConfig(), DDP)
    torch.manual_seed(0)
    parts = build_parts(config, ehr_dim=3, steps_per_epoch=1, dist_info=dist_info)
    # Per-rank BatchNorm statistics differ from the global batch's by design on a CPU (SyncBatchNorm
    # needs CUDA): running statistics isolate the loss's cross-rank reductions.
    parts.msn_anchor.head.eval()
    assert parts.target is not None
    parts.target.get_submodule("head").eval()
    stats = train_step(parts, batch, step=0)
    grads = {n: p.grad.detach().clone() for n, p in parts.msn_anchor.named_parameters() if p.grad is not None}
    return {"loss": stats["loss"], "grads": grads}


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        half = slice(rank * 2, rank * 2 + 2)
        shard = {name: tensor[half] for name, tensor in _global_batch().items()}
        result = _step_gradients(
            DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu")), shard
        )
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_encoder_gradients_of_two_ddp_ranks_equal_one_process_on_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _step_gradients(CPU, _global_batch())
    names = single["grads"].keys()
    assert {"encoder.cls_token", "encoder.blocks.0.attn.qkv.weight", "fusion.g.weight", "prototypes"} <= set(
        names
    )
    for result in ranks:
        assert result["grads"].keys() == names
        for name in names:  # DDP has averaged the ranks' gradients
            torch.testing.assert_close(result["grads"][name], single["grads"][name], rtol=1e-4, atol=1e-7)
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(single["loss"], abs=1e-5)
    # Half the batch alone gives another encoder gradient: the comparison has power.
    local = _step_gradients(CPU, {name: tensor[:2] for name, tensor in _global_batch().items()})
    name = "encoder.blocks.0.attn.qkv.weight"
    assert not torch.allclose(local["grads"][name], single["grads"][name], rtol=1e-3, atol=1e-6)
