"""The learning monitor's measurements and verdicts (training.monitor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrmsn.labels import LABELS
from training.config import MonitorConfig
from training.monitor import ProbeSet, assess, embedding_spread, probe_auroc

CARDIO, EDEMA = LABELS.index("Cardiomegaly"), LABELS.index("Edema")


def probe_set(n_train: int = 120, n_valid: int = 60, seed: int = 0) -> ProbeSet:
    """Two annotated labels (Cardiomegaly, Edema) with balanced classes; every other label blank."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        targets = np.zeros((n, len(LABELS)), dtype=np.float32)
        mask = np.zeros((n, len(LABELS)), dtype=bool)
        targets[:, CARDIO] = rng.integers(0, 2, n)
        targets[:, EDEMA] = rng.integers(0, 2, n)
        mask[:, [CARDIO, EDEMA]] = True
        return np.zeros((n, 8, 8), dtype=np.uint8), targets, mask

    return ProbeSet(*split(n_train), *split(n_valid))


def embeddings_for(targets: np.ndarray, *, signal: float, seed: int) -> np.ndarray:
    """32-d Gaussian embeddings whose first two dimensions carry the two labels times ``signal``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(targets), 32))
    x[:, 0] += signal * (2 * targets[:, CARDIO] - 1)
    x[:, 1] += signal * (2 * targets[:, EDEMA] - 1)
    return x


@pytest.mark.parametrize("probe", ["logistic", "knn"])
def test_the_probe_scores_informative_embeddings_high_and_noise_near_chance(probe: str) -> None:
    data = probe_set()
    config = MonitorConfig(probe=probe, knn_k=10)
    assert data.usable_labels == [CARDIO, EDEMA]
    train, valid = data.train_targets, data.valid_targets
    high, labels = probe_auroc(
        embeddings_for(train, signal=2.0, seed=0),
        embeddings_for(valid, signal=2.0, seed=1),
        data,
        config,
        seed=0,
    )
    chance, _ = probe_auroc(
        embeddings_for(train, signal=0.0, seed=0),
        embeddings_for(valid, signal=0.0, seed=1),
        data,
        config,
        seed=0,
    )
    assert labels == 2
    assert high > 0.9
    assert abs(chance - 0.5) < 0.15


def test_a_label_without_positives_in_valid_is_not_probed() -> None:
    data = probe_set()
    data.valid_targets[:, EDEMA] = 0
    assert data.usable_labels == [CARDIO]


def test_embedding_spread_separates_spread_from_collapsed_embeddings() -> None:
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(500, 64, generator=generator)
    collapsed = torch.ones(500, 64) + 1e-4 * torch.randn(500, 64, generator=generator)
    assert 0.8 < embedding_spread(spread) < 1.2
    assert embedding_spread(collapsed) < 0.01


def record(epoch: int, auroc: float, *, spread: float = 0.5, used: int = 50) -> dict[str, float]:
    return {"epoch": epoch, "probe_auroc": auroc, "embedding_std": spread, "prototypes_used": used}


def test_assess_says_not_learning_only_after_warn_after_epochs_without_gain() -> None:
    config = MonitorConfig(warn_after=5, min_gain=0.02)
    start = record(0, 0.55)
    assert assess([start, record(2, 0.55)], config, 256) == "ok"  # too early to say
    verdict = assess([start, record(5, 0.56)], config, 256)
    assert verdict.startswith("not learning") and "0.560 vs 0.550" in verdict
    assert assess([start, record(5, 0.60)], config, 256) == "ok"


def test_assess_says_collapsing_when_the_spread_or_the_prototypes_in_use_fall() -> None:
    config = MonitorConfig(min_embedding_std=0.03, min_prototypes_fraction=0.05)
    start = record(0, 0.55)
    assert "collapsing: embedding spread" in assess([start, record(1, 0.6, spread=0.01)], config, 256)
    assert "collapsing: 3 prototypes in use (< 13)" in assess([start, record(1, 0.6, used=3)], config, 256)
    # before training a random network may use few prototypes: that is not a collapse
    assert assess([record(0, 0.5, used=3)], config, 256) == "ok"
    # MSN + EHR: the target head never sees the fused features, so few prototypes is not a collapse
    assert assess([start, record(1, 0.6, used=1)], config, 256, multimodal=True) == "ok"
    assert "embedding spread" in assess([start, record(1, 0.6, spread=0.01)], config, 256, multimodal=True)


def test_monitor_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="probe"):
        MonitorConfig(probe="svm")
    with pytest.raises(ValueError, match="every"):
        MonitorConfig(every=-1)
