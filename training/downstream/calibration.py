"""Per-label temperature scaling, fitted on validation at linear-evaluation time (issue 20 item 3).

For label j with logit z, the calibrated probability is sigmoid(z / T_j). T_j minimises the
validation negative log-likelihood of the counted (masked-in) images of label j over a 1-D
bounded search on log T in [log 0.05, log 20]; a label without validation signal (untrained, or
no positive or no negative among its counted validation images) keeps T = 1. Dividing by a
positive constant is monotone, so AUROC and AUPRC are unchanged; thresholds are chosen on the
calibrated scale.

The temperatures travel in the classifier checkpoint's metadata (``calibration``); export folds
1/T into the linear head (``export.calibration``), so the ONNX graph is unchanged.

Expected calibration error (ECE): 15 equal-width probability bins over [0, 1]; per label,
sum over bins of (images in bin / images) * |mean probability - fraction positive|, over the
counted images; macro = the unweighted mean over the labels given (trained and estimable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrmsn.labels import LABELS
from training.downstream.labels import LabelMatrix, estimable

METHOD = "temperature"
ECE_BINS = 15
LOG_T_BOUNDS = (float(np.log(0.05)), float(np.log(20.0)))
_EPS = 1e-7


def logits_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """float64 logits of probabilities (clipped to [1e-7, 1 - 1e-7]): for runs that kept no logits."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def nll(logits: np.ndarray, positive: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of sigmoid(logits / T) against ``positive``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(positive, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: np.ndarray, positive: np.ndarray) -> float:
    """The T minimising validation NLL (bounded 1-D search on log T)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    found = minimize_scalar(
        lambda log_t: nll(z, y, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    best = float(np.exp(found.x))
    return best if nll(z, y, best) <= nll(z, y, 1.0) else 1.0


@dataclass(frozen=True)
class Temperatures:
    """One temperature per label (T = 1: unchanged) and where each came from."""

    values: dict[str, float]
    fitted_on: str
    reasons: dict[str, str]  # label -> why it kept T = 1
    method: str = METHOD  # "none": every T is 1 by choice (head.calibration)

    def vector(self) -> np.ndarray:
        return np.asarray([self.values.get(label, 1.0) for label in LABELS], dtype=np.float64)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, float32 [N, 14]."""
        return sigmoid(np.asarray(logits, dtype=np.float64) / self.vector()).astype(np.float32)

    def to_metadata(self) -> dict[str, Any]:
        """What the classifier checkpoint stores (``CheckpointMetadata.calibration``)."""
        return {
            "method": self.method,
            "temperatures": {label: round(self.values.get(label, 1.0), 6) for label in LABELS},
            "fitted_on": self.fitted_on,
            "applied_to_head": False,  # export folds 1/T into the head
            "unfitted": dict(self.reasons),
        }


def fit_temperatures(
    logits: np.ndarray, labels: LabelMatrix, trained: Sequence[str], *, fitted_on: str = "valid"
) -> Temperatures:
    """Per-label T on (logits, labels); T = 1 where the label has no validation signal."""
    ok = estimable(labels)
    values: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for j, label in enumerate(LABELS):
        if label not in trained:
            values[label], reasons[label] = 1.0, "untrained"
            continue
        if not ok[j]:
            values[label], reasons[label] = 1.0, f"no positive or no negative counted on {fitted_on}"
            continue
        keep = labels.mask[:, j]
        values[label] = fit_temperature(logits[keep, j], labels.targets[keep, j] == 1)
    return Temperatures(values, fitted_on, reasons)


def no_temperatures(fitted_on: str = "valid") -> Temperatures:
    """T = 1 for every label: the head's own probabilities (``head.calibration`` none)."""
    reason = "head.calibration: none"
    return Temperatures({label: 1.0 for label in LABELS}, fitted_on, dict.fromkeys(LABELS, reason), "none")


def expected_calibration_error(
    probabilities: np.ndarray, positive: np.ndarray, bins: int = ECE_BINS
) -> float | None:
    """ECE of one label's probabilities (equal-width bins); None without images."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(positive, dtype=np.float64)
    if p.size == 0:
        return None
    index = np.minimum((p * bins).astype(int), bins - 1)
    confidence = np.bincount(index, weights=p, minlength=bins)
    observed = np.bincount(index, weights=y, minlength=bins)
    return float(np.abs(confidence - observed).sum() / p.size)


def reliability(
    probabilities: np.ndarray, positive: np.ndarray, bins: int = ECE_BINS
) -> dict[str, list[float | int | None]]:
    """Per bin: image count, mean probability and fraction positive (None in empty bins)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(positive, dtype=np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins)
    confidence = np.bincount(index, weights=p, minlength=bins)
    observed = np.bincount(index, weights=y, minlength=bins)
    return {
        "count": count.tolist(),
        "mean_probability": [float(c / n) if n else None for c, n in zip(confidence, count, strict=True)],
        "fraction_positive": [float(o / n) if n else None for o, n in zip(observed, count, strict=True)],
    }


def ece_block(probabilities: np.ndarray, labels: LabelMatrix, trained: Sequence[str]) -> dict[str, Any]:
    """Per-label ECE (trained labels estimable on the split; others null) and their macro mean."""
    ok = estimable(labels)
    per_label: dict[str, float | None] = {}
    for j, label in enumerate(LABELS):
        if label in trained and ok[j]:
            keep = labels.mask[:, j]
            per_label[label] = expected_calibration_error(
                probabilities[keep, j], labels.targets[keep, j] == 1
            )
        else:
            per_label[label] = None
    values = [v for v in per_label.values() if v is not None]
    return {
        "macro": float(np.mean(values)) if values else None,
        "labels": [label for label, v in per_label.items() if v is not None],
        "per_label": per_label,
    }


def auroc_change(
    before: np.ndarray, after: np.ndarray, labels: LabelMatrix, trained: Sequence[str]
) -> float | None:
    """The largest |AUROC after - AUROC before| over the trained, estimable labels (0 up to ties
    that float32 rounding creates: temperature scaling is monotone)."""
    from training.downstream.metrics import auroc

    ok = estimable(labels)
    changes = []
    for j, label in enumerate(LABELS):
        if label in trained and ok[j]:
            keep = labels.mask[:, j]
            positive = labels.targets[keep, j] == 1
            a, b = auroc(before[keep, j], positive), auroc(after[keep, j], positive)
            if a is not None and b is not None:
                changes.append(abs(b - a))
    return float(max(changes)) if changes else None


def calibration_report(
    temperatures: Temperatures,
    splits: dict[str, tuple[np.ndarray, LabelMatrix]],
    trained: Sequence[str],
) -> dict[str, Any]:
    """metrics.json's ``calibration``: the temperatures and ECE before and after on each split.

    ``splits``: split -> (uncalibrated logits, labels).
    """
    ece = {}
    for split, (logits, labels) in splits.items():
        before, after = sigmoid(logits).astype(np.float32), temperatures.apply(logits)
        ece[split] = {
            "before": ece_block(before, labels, trained),
            "after": ece_block(after, labels, trained),
            "auroc_max_change": auroc_change(before, after, labels, trained),
        }
    objective = (
        "per-label validation negative log-likelihood, 1-D bounded search on log T"
        if temperatures.method == METHOD
        else "none: the head's own sigmoid probabilities (ECE after = before)"
    )
    return {
        "method": temperatures.method,
        "fitted_on": temperatures.fitted_on,
        "objective": objective,
        "temperatures": {label: round(value, 6) for label, value in temperatures.values.items()},
        "unfitted": dict(temperatures.reasons),
        "ece_bins": ECE_BINS,
        "ece": ece,
    }
