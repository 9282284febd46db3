"""The linear protocol on synthetic embeddings: masked loss, five runs, early stopping, selection."""

from __future__ import annotations

import numpy as np
import torch

from cxrmsn.labels import NUM_LABELS
from training.downstream.config import HeadConfig
from training.downstream.labels import LabelMatrix
from training.downstream.linear import masked_bce, protocol_runs, run_protocol


def test_masked_bce_ignores_masked_pairs() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 9.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask.bool()], targets[mask.bool()])
    assert torch.isclose(masked_bce(logits, targets, mask), expected)
    assert masked_bce(logits, targets, torch.zeros(2, 2)) == 0


def test_the_papers_five_runs() -> None:
    runs = protocol_runs(HeadConfig())
    assert [(r.lr, r.schedule) for r in runs] == [
        (1e-3, "cosine"),
        (5e-4, "cosine"),
        (1e-4, "cosine"),
        (5e-4, "plateau"),
        (1e-4, "plateau"),
    ]


def _embeddings(n: int, seed: int) -> tuple[np.ndarray, LabelMatrix]:
    rng = np.random.default_rng(seed)
    targets = np.zeros((n, NUM_LABELS), dtype=np.float32)
    targets[:, 0] = rng.random(n) < 0.5
    mask = np.zeros((n, NUM_LABELS), dtype=bool)
    mask[:, 0] = True
    features = rng.normal(size=(n, 16)).astype(np.float32)
    features[:, 0] += 4.0 * targets[:, 0]
    return features, LabelMatrix(targets, mask)


def test_protocol_learns_selects_on_validation_and_stops_early() -> None:
    train, train_labels = _embeddings(256, 0)
    valid, valid_labels = _embeddings(128, 1)
    views = np.stack([train, train + 0.05], axis=1)  # plain + one "augmented" copy
    config = HeadConfig(max_epochs=40, batch_size=32)
    runs, best = run_protocol(views, train_labels, valid, valid_labels, [0], config, seed=0)
    assert len(runs) == 5 and best is max(runs, key=lambda r: r.best_valid_macro_auroc)
    assert best.best_valid_macro_auroc > 0.8
    for run in runs:
        scores = [h["valid_macro_auroc"] for h in run.history]
        assert abs(run.best_valid_macro_auroc - max(scores)) < 1e-6  # the history is rounded to 1e-6
        assert scores[run.best_epoch - 1] == max(scores)
        if run.spec.schedule == "plateau":
            assert run.stopped == "max_epochs" and len(run.history) == 40
    assert any(run.stopped == "early_stopping" for run in runs if run.spec.schedule == "cosine")
    again, _ = run_protocol(views, train_labels, valid, valid_labels, [0], config, seed=0)
    assert [r.history for r in again] == [r.history for r in runs]
