"""Learning-rate, weight-decay schedules and early stopping."""

from __future__ import annotations

import math

import pytest

from training.early_stopping import EarlyStopping
from training.schedule import cosine_lr, cosine_weight_decay


def test_cosine_without_warmup() -> None:
    assert cosine_lr(0, 100, base_lr=1e-4) == pytest.approx(1e-4)
    assert cosine_lr(50, 100, base_lr=1e-4) == pytest.approx(0.5e-4)
    assert cosine_lr(100, 100, base_lr=1e-4, min_lr=1e-6) == pytest.approx(1e-6)


def test_linear_warmup_then_cosine() -> None:
    lrs = [cosine_lr(s, 20, base_lr=1.0, warmup_steps=10) for s in range(20)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0) and lrs[15] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_weight_decay_schedule() -> None:
    assert cosine_weight_decay(30, 100, start=1e-3, end=None) == 1e-3
    assert cosine_weight_decay(0, 100, start=0.04, end=0.4) == pytest.approx(0.04)
    assert cosine_weight_decay(100, 100, start=0.04, end=0.4) == pytest.approx(0.4)


def test_early_stopping_waits_patience_epochs_without_min_delta_improvement() -> None:
    stopping = EarlyStopping(patience=3, min_delta=0.01)
    decisions = [
        stopping.update(loss, epoch)
        for epoch, loss in enumerate([1.0, 0.9, 0.895, 0.899, 0.85, 0.85, 0.849, 0.85])
    ]
    assert decisions == [False, False, False, False, False, False, False, True]
    assert (stopping.best, stopping.best_epoch) == (0.85, 4)
    assert EarlyStopping.from_state(stopping.state_dict()) == stopping


def test_early_stopping_refuses_nan() -> None:
    with pytest.raises(ValueError):
        EarlyStopping().update(float("nan"), 0)
