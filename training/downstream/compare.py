"""Paired comparison of two runs' test predictions (``metrics.paired_comparison`` on run folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.downstream.artifact import load_predictions
from training.downstream.metrics import BootstrapSettings, paired_comparison
from training.downstream.run_metrics import RunMetrics


def compare_runs(run_a: Path, run_b: Path, *, settings: BootstrapSettings | None = None) -> dict[str, Any]:
    """A - B on the test images both runs predicted, over the labels both runs' macro includes."""
    a, b = load_predictions(run_a), load_predictions(run_b)
    if a.paths != b.paths:
        raise ValueError(f"{run_a} and {run_b} were tested on different images: not a paired comparison")
    if (a.labels.targets != b.labels.targets).any() or (a.labels.mask != b.labels.mask).any():
        raise ValueError(f"{run_a} and {run_b} have different test labels (another label policy?)")
    labels_b = set(RunMetrics.read(run_b).macro()["labels"])
    common = [label for label in RunMetrics.read(run_a).macro()["labels"] if label in labels_b]
    result = paired_comparison(a.probabilities, b.probabilities, a.labels, common, settings=settings)
    return {"a": str(run_a), "b": str(run_b), "images": len(a.paths), **result}
