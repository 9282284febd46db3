"""The linear protocol on synthetic embeddings: masked loss, five runs, early stopping, selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrmsn.labels import NUM_LABELS
from training.downstream.config import HeadConfig
from training.downstream.labels import LabelMatrix
from training.downstream.linear import FeatureScaling, masked_bce, protocol_runs, run_protocol
from training.downstream.metrics import macro_auroc


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


def test_standardized_features_fold_into_a_head_on_raw_embeddings() -> None:
    train, train_labels = _embeddings(256, 0)
    valid, valid_labels = _embeddings(128, 1)
    train, valid = 0.05 * train + 5.0, 0.05 * valid + 5.0  # small spread around a large offset
    views = train[:, None]
    settings = {"max_epochs": 20, "batch_size": 32, "cosine_lrs": (1e-2,), "plateau_lrs": ()}
    _, raw = run_protocol(views, train_labels, valid, valid_labels, [0], HeadConfig(**settings), seed=0)  # type: ignore[arg-type]
    standardized = HeadConfig(**settings, features="standardized")  # type: ignore[arg-type]
    _, best = run_protocol(views, train_labels, valid, valid_labels, [0], standardized, seed=0)
    assert best.best_valid_macro_auroc > 0.9 > raw.best_valid_macro_auroc
    scaling = FeatureScaling.fit(views, "standardized")
    assert np.allclose(scaling.apply(train).mean(axis=0), 0, atol=1e-3)
    assert np.allclose(scaling.apply(train).std(axis=0), 1, atol=1e-2)
    head = torch.nn.Linear(16, NUM_LABELS)
    head.load_state_dict(best.state)  # folded: acts on raw embeddings
    with torch.no_grad():
        probabilities = torch.sigmoid(head(torch.from_numpy(valid))).numpy()
    assert macro_auroc(probabilities, valid_labels, [0]) == pytest.approx(
        best.best_valid_macro_auroc, abs=1e-4
    )


def test_raw_features_leave_the_head_unchanged() -> None:
    views = np.random.default_rng(0).normal(size=(8, 2, 4)).astype(np.float32)
    scaling = FeatureScaling.fit(views, "raw")
    state = {"weight": torch.randn(3, 4), "bias": torch.randn(3)}
    folded = scaling.fold(state)
    assert torch.equal(folded["weight"], state["weight"]) and torch.equal(folded["bias"], state["bias"])
    with pytest.raises(ValueError, match=r"head\.features"):
        HeadConfig(features="whitened")


def test_logistic_solver_selects_c_on_validation_and_folds() -> None:
    train, train_labels = _embeddings(256, 0)
    valid, valid_labels = _embeddings(128, 1)
    train, valid = 0.05 * train + 5.0, 0.05 * valid + 5.0
    views = np.stack([train, train + 0.001], axis=1)
    config = HeadConfig(solver="logistic", features="standardized", logistic_cs=(1e-4, 1.0))
    assert [run.name for run in protocol_runs(config)] == ["logistic_C0.0001", "logistic_C1"]
    runs, best = run_protocol(views, train_labels, valid, valid_labels, [0], config, seed=0)
    assert best is max(runs, key=lambda r: r.best_valid_macro_auroc) and best.best_valid_macro_auroc > 0.95
    head = torch.nn.Linear(16, NUM_LABELS)
    head.load_state_dict(best.state)
    with torch.no_grad():
        probabilities = torch.sigmoid(head(torch.from_numpy(valid))).numpy()
    assert macro_auroc(probabilities, valid_labels, [0]) == pytest.approx(
        best.best_valid_macro_auroc, abs=1e-4
    )
    assert np.allclose(probabilities[:, 1:], 0.5)  # labels without training pairs: a zero row
    with pytest.raises(ValueError, match=r"head\.solver"):
        HeadConfig(solver="sgd")
