"""One pretraining step: what moves, what does not, masks by config, the optimiser groups."""

from __future__ import annotations

import pytest
import torch

from tests.training.pretrain_fixtures import CPU, STEP_SMALL
from training.benchmark import benchmark, synthetic_batch
from training.config import PretrainConfig, apply_overrides
from training.train_step import TrainParts, anchor_inputs, build_parts, train_step


def _parts(*overrides: str, ehr_dim: int = 3) -> tuple[TrainParts, dict[str, torch.Tensor]]:
    config = apply_overrides(PretrainConfig(), [*STEP_SMALL, *overrides])
    torch.manual_seed(0)
    parts = build_parts(config, ehr_dim=ehr_dim, steps_per_epoch=4, dist_info=CPU)
    return parts, synthetic_batch(config, 4, ehr_dim)


def test_a_step_trains_the_anchor_and_prototypes_and_moves_the_target_by_ema() -> None:
    parts, batch = _parts()
    assert parts.target is not None
    anchor_before = {k: v.clone() for k, v in parts.anchor.named_parameters()}
    target_before = {k: v.clone() for k, v in parts.target.named_parameters()}
    stats = train_step(parts, batch, step=0)
    assert set(stats) >= {"loss", "cross_entropy", "mean_entropy", "lr", "momentum"}
    assert stats["lr"] == pytest.approx(1e-4) and stats["momentum"] == 0.996
    for name in (
        "prototypes",
        "fusion.f_ehr.weight",
        "fusion.g.weight",
        "head.layers.0.weight",
        "encoder.cls_token",
    ):
        assert not torch.equal(dict(parts.anchor.named_parameters())[name], anchor_before[name]), name
    anchor_now = dict(parts.anchor.named_parameters())
    for name, value in parts.target.named_parameters():
        expected = 0.996 * target_before[name] + 0.004 * anchor_now[name]
        assert torch.allclose(value, expected, atol=1e-6), name


def test_prototypes_biases_and_norms_get_no_weight_decay() -> None:
    parts, _ = _parts()
    decay, no_decay = parts.optimizer.param_groups
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    assert any(p is parts.anchor.prototypes for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"]) and all(
        p is not parts.anchor.prototypes for p in decay["params"]
    )


def test_masks_follow_the_config() -> None:
    parts, batch = _parts()
    (rand, focal), (rand_keep, focal_keep) = anchor_inputs(batch, parts)
    assert rand.shape == (4, 3, 64, 64) and focal.shape == (8, 3, 32, 32)  # view-major
    assert torch.equal(rand[1], batch["rand"][1, 0]) and torch.equal(focal[5], batch["focal"][1, 1])
    assert rand_keep is not None and rand_keep.shape == (4, 13) and focal_keep is not None
    assert not all(torch.equal(row, rand_keep[0]) for row in rand_keep)  # per sample (paper code)

    parts, batch = _parts("mask.per_sample=false", "mask.mask_focal=false")  # original MSN
    _, (rand_keep, focal_keep) = anchor_inputs(batch, parts)
    assert rand_keep is not None and all(torch.equal(row, rand_keep[0]) for row in rand_keep)
    assert focal_keep is None

    parts, batch = _parts("mask.ratio=0")
    assert anchor_inputs(batch, parts)[1] == [None, None]


def test_vanilla_msn_step_runs_without_ehr() -> None:
    parts, batch = _parts("ehr.features=", ehr_dim=0)
    assert parts.anchor.fusion is None
    assert torch.isfinite(torch.tensor(train_step(parts, batch, step=0)["loss"]))


def test_warmup_and_clipping_and_weight_decay_schedule() -> None:
    parts, batch = _parts("optim.warmup_epochs=1", "optim.clip_grad=0.5", "optim.final_weight_decay=0.4")
    stats = train_step(parts, batch, step=0)
    assert stats["lr"] == pytest.approx(1e-4 / 4) and stats["weight_decay"] == pytest.approx(1e-3)
    assert parts.optimizer.param_groups[1]["weight_decay"] == 0.0
    total = torch.nn.utils.get_total_norm([p.grad for p in parts.anchor.parameters() if p.grad is not None])
    assert float(total) <= 0.5 + 1e-4


def test_benchmark_reports_images_per_second() -> None:
    config = apply_overrides(PretrainConfig(), STEP_SMALL)
    result = benchmark(config, batch_size=2, steps=1, warmup=0, ehr_dim=3)
    assert result["images_per_s_median"] > 0 and result["arch"] == "vit_nano_patch16_224"
