"""A training run's metrics.json for export's validity gate, made by the real metrics code.

The validation block comes from ``training.downstream.metrics.evaluate`` on made-up scores, so a
change of that format breaks the gate's tests rather than passing them by a hand-written copy.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.labels import LABELS
from training.downstream.labels import LabelMatrix
from training.downstream.metrics import BootstrapSettings, evaluate
from training.downstream.run_metrics import RunMetrics


def run_metrics(
    trained: Sequence[str],
    thresholds: dict[str, float],
    *,
    separable: Collection[str],
    no_positives: Collection[str] = (),
    images: int = 80,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """What linear-eval's metrics.json holds for the gate: trained labels, thresholds, ``valid``.

    Labels in ``separable`` score above noise (with the defaults: Cardiomegaly AUROC 0.79, CI
    [0.70, 0.87]; Pleural Effusion 0.66, [0.54, 0.78]); the rest score noise (No Finding 0.59,
    [0.47, 0.73]); ``no_positives`` have no positive in validation.
    """
    rng = np.random.default_rng(seed)
    targets = np.tile((np.arange(images) % 2)[:, None], (1, len(LABELS))).astype(np.float32)
    for label in no_positives:
        targets[:, LABELS.index(label)] = 0
    noise = rng.random((images, len(LABELS)))
    probabilities = noise.copy()
    for label in separable:
        j = LABELS.index(label)
        probabilities[:, j] = 0.2 * targets[:, j] + 0.8 * noise[:, j]
    valid = evaluate(
        probabilities.astype(np.float32),
        LabelMatrix(targets, np.ones_like(targets, dtype=bool)),
        split="valid",
        trained=list(trained),
        settings=BootstrapSettings(resamples=200, seed=seed, level=level),
    )
    return RunMetrics(
        protocol="linear",
        trained_labels=list(trained),
        thresholds={label: {"value": value, "method": "youden"} for label, value in thresholds.items()},
        valid=valid,
    ).to_json()


def write_run_metrics(path: Path, metrics: dict[str, Any]) -> Path:
    """``metrics`` as a file (a test may have changed it to one no run would write)."""
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
