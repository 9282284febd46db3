"""EMA target: momentum schedules, the update rule, no gradients for the target."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.config import EMAConfig
from training.msn.ema import ema_update_, momentum_at
from training.msn.model import MSNAnchor


def test_constant_momentum_by_default() -> None:
    assert {momentum_at(s, 100, EMAConfig()) for s in (0, 50, 99)} == {0.996}


def test_ramp_is_linear_and_reaches_one_after_the_stretch() -> None:
    config = EMAConfig(ramp=True)
    assert momentum_at(0, 100, config) == pytest.approx(0.996)
    assert momentum_at(50, 100, config) == pytest.approx(0.996 + 0.004 * 50 / 125)
    assert momentum_at(125, 100, config) == pytest.approx(1.0)
    assert momentum_at(500, 100, config) == pytest.approx(1.0)


def test_update_rule() -> None:
    anchor, target = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        anchor.weight.fill_(1.0)
        target.weight.fill_(3.0)
    ema_update_(target, anchor, 0.75)
    assert torch.allclose(target.weight, torch.full((2, 2), 0.75 * 3 + 0.25 * 1))


def test_buffers_are_copied_not_averaged() -> None:
    anchor, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    assert anchor.running_mean is not None and target.running_mean is not None
    anchor.running_mean.fill_(2.0)
    ema_update_(target, anchor, 0.9)
    assert torch.equal(target.running_mean, anchor.running_mean)


def test_target_gets_no_gradients_and_moves_only_by_ema() -> None:
    torch.manual_seed(0)
    anchor = MSNAnchor("vit_nano_patch16_224", num_prototypes=8)
    target = anchor.make_target()
    assert not any(p.requires_grad for p in target.parameters())
    assert "prototypes" not in dict(target.named_parameters())
    before = {k: v.clone() for k, v in target.named_parameters()}
    images = torch.randn(2, 3, 32, 32)
    (target(images).sum() + anchor([images], [None])[0].sum()).backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(torch.equal(before[k], v) for k, v in target.named_parameters())
    with torch.no_grad():
        for p in anchor.parameters():
            p.add_(1.0)
    ema_update_(target, anchor, 0.5)
    assert target.encoder.cls_token is not None
    assert torch.allclose(target.encoder.cls_token, before["encoder.cls_token"] + 0.5)


def test_rejects_a_bad_momentum_and_missing_parameters() -> None:
    with pytest.raises(ValueError):
        ema_update_(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)
    with pytest.raises(ValueError):
        ema_update_(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 2), 0.5)
