"""Fine-tuning's run grid and the best-epoch selection it shares with linear evaluation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tests.training.downstream.fixtures import small_config
from training.downstream.config import FinetuneConfig, HeadConfig
from training.downstream.finetune import finetune, finetune_runs
from training.downstream.labels import LabelMatrix
from training.downstream.linear import RunSpec, _epoch, train_head
from training.downstream.metrics import macro_auroc
from training.downstream.selection import BestEpoch, best_run


def test_the_grid_is_the_linear_protocols_five_runs_and_single_is_one() -> None:
    config = small_config(Path("m.csv"), Path("c"))
    config = replace(config, head=HeadConfig(), finetune=FinetuneConfig(lr=3e-4))
    grid = finetune_runs(config, "grid")
    assert [(r.name, r.lr, r.schedule) for r in grid] == [
        ("cosine_lr0.001", 1e-3, "cosine"),
        ("cosine_lr0.0005", 5e-4, "cosine"),
        ("cosine_lr0.0001", 1e-4, "cosine"),
        ("plateau_lr0.0005", 5e-4, "plateau"),
        ("plateau_lr0.0001", 1e-4, "plateau"),
    ]
    assert finetune_runs(config, "single") == [RunSpec("finetune_lr0.0003", 3e-4, "cosine")]
    with pytest.raises(ValueError, match="runs"):
        finetune_runs(config, "all")


def _noisy_problem() -> tuple[np.ndarray, LabelMatrix, np.ndarray, LabelMatrix]:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(40, 8)).astype(np.float32)
    targets = np.zeros((40, 14), np.float32)
    targets[:, 0] = (signal[:, 0] + rng.normal(scale=1.5, size=40) > 0).astype(np.float32)
    targets[:, 1] = (signal[:, 1] + rng.normal(scale=1.5, size=40) > 0).astype(np.float32)
    mask = np.zeros((40, 14), bool)
    mask[:, :2] = True
    views = np.stack([signal, signal + rng.normal(scale=0.3, size=signal.shape).astype(np.float32)], axis=1)
    train = LabelMatrix(targets[:24], mask[:24])
    valid = LabelMatrix(targets[24:], mask[24:])
    return views[:24], train, signal[24:], valid


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_best_epoch_reproduces_linear_evaluations_run_exactly(schedule: str) -> None:
    """The loop linear.train_head runs, rebuilt on selection.BestEpoch: identical history,
    best epoch, state and stop reason, so linear.py can share the helper unchanged."""
    views, train, valid_x, valid = _noisy_problem()
    config = HeadConfig(max_epochs=25, batch_size=8, patience=3, plateau_patience=1, plateau_factor=0.5)
    spec = RunSpec(f"{schedule}_lr0.05", 0.05, schedule)
    expected = train_head(spec, views, train, valid_x, valid, [0, 1], config, seed=3)

    torch.manual_seed(3)
    head = nn.Linear(8, 14)
    optimizer = torch.optim.Adam(head.parameters(), lr=spec.lr, weight_decay=config.weight_decay)
    tracker = BestEpoch(
        optimizer,
        schedule,
        max_epochs=config.max_epochs,
        patience=config.patience,
        min_delta=config.min_delta,
        plateau_factor=config.plateau_factor,
        plateau_patience=config.plateau_patience,
    )
    targets, mask = torch.from_numpy(train.targets), torch.from_numpy(train.mask.astype(np.float32))
    for epoch in range(config.max_epochs):
        loss = _epoch(head, optimizer, views, targets, mask, config.batch_size, seed=3, epoch=epoch)
        with torch.no_grad():
            probabilities = torch.sigmoid(head(torch.from_numpy(valid_x))).numpy()
        if tracker.end_epoch(epoch, loss=loss, score=macro_auroc(probabilities, valid, [0, 1]), module=head):
            break
    assert tracker.history == expected.history
    assert (tracker.best_epoch, tracker.best_score, tracker.stopped) == (
        expected.best_epoch,
        expected.best_valid_macro_auroc,
        expected.stopped,
    )
    assert all(torch.equal(tracker.state[k], expected.state[k]) for k in expected.state)
    if schedule == "plateau":  # the schedule did act: the learning rate was halved at least once
        assert min(r["lr"] for r in tracker.history) < spec.lr
    else:
        assert tracker.stopped == "early_stopping"


def test_best_run_keeps_the_first_of_equals_and_needs_runs() -> None:
    runs = [
        SimpleNamespace(best_valid_macro_auroc=v, name=n) for v, n in ((0.6, "a"), (0.7, "b"), (0.7, "c"))
    ]
    assert best_run(runs).name == "b"
    with pytest.raises(ValueError):
        best_run([])
    with pytest.raises(ValueError, match="undefined"):
        BestEpoch(
            torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1),
            "cosine",
            max_epochs=2,
            patience=1,
            min_delta=0.0,
            plateau_factor=0.5,
            plateau_patience=1,
        ).end_epoch(0, loss=1.0, score=None, module=nn.Linear(1, 1))


@pytest.mark.slow
def test_finetuning_runs_the_grid_and_keeps_the_best_run(
    manifest: Path, encoder_file: Path, tmp_path: Path
) -> None:
    base = small_config(manifest, tmp_path / "cache")
    config = replace(
        base,
        head=replace(base.head, cosine_lrs=(1e-3,), plateau_lrs=(1e-4,)),
        finetune=FinetuneConfig(fractions=(1.0,), max_epochs=2, batch_size=8, max_steps_per_epoch=2),
    )
    out = tmp_path / "ft"
    summary = finetune(encoder_file, config, out)
    assert summary["finetune_runs"] == "grid"
    metrics = json.loads((out / "fraction_1" / "metrics.json").read_text())
    runs = metrics["runs"]
    assert [run["name"] for run in runs] == ["cosine_lr0.001", "plateau_lr0.0001"]
    assert [run["early_stopping"] for run in runs] == [True, False]
    best = max(runs, key=lambda run: run["best_valid_macro_auroc"])
    assert metrics["selected_run"] == best["name"] and metrics["best_epoch"] == best["best_epoch"]
    assert metrics["history"] == best["history"] and metrics["finetune_runs"] == "grid"
    assert all(len(run["history"]) <= 2 for run in runs)
    assert f"| {best['name']} |" in (out / "summary.md").read_text()

    # A folder fine-tuned with the grid is not continued with another choice of runs.
    (out / "summary.json").unlink()
    with pytest.raises(ValueError, match="runs=grid"):
        finetune(encoder_file, config, out, runs="single")
