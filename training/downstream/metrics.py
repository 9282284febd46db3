"""Honest metrics: per-label and macro AUROC/AUPRC, bootstrap CIs, paired comparisons, thresholds.

Definitions (checked against scikit-learn in the tests):

- AUROC = P(score of a positive > score of a negative) + 0.5 P(tie): the Mann-Whitney
  statistic, equal to the trapezoidal area under the ROC curve (``roc_auc_score``).
- AUPRC = average precision, sum over thresholds of (R_k - R_{k-1}) P_k at every distinct
  score (``average_precision_score``; no interpolation).
- Only the (image, label) pairs the label mask keeps count (``training.downstream.labels``);
  a label without a positive or without a negative is *not estimable*: null, with a reason.
- Macro = the unweighted mean over the labels given as the macro set (the caller passes the
  labels that had training signal and are estimable on the split); the set is reported.

Bootstrap: 1,000 resamples (default) of the **images** with replacement, seeded
(``numpy.random.default_rng(seed)``); one resample draws the same images for every label, so
the macro value is a statistic of the resample. A resample in which a label has no positive or
no negative is undefined for that label and is dropped (for the macro: dropped when any macro
label is undefined); the number used is reported. The 95 % interval is the 2.5th and 97.5th
percentile of the values (percentile bootstrap).

Paired comparison of models A and B on the same images: the same resamples for both; the
interval and two-sided p-value of the macro AUROC difference A - B come from the paired
bootstrap. The Student t-test (the paper says only "Student t-test", not over what) is here a
paired t-test over labels: the per-label test AUROCs of A and B on the labels of the macro set
(``scipy.stats.ttest_rel``, n = number of labels, df = n - 1). It is not a t-test over bootstrap
replicates, whose p-value shrinks with the number of resamples rather than the data.

Thresholds are chosen per label on validation: Youden's J (max TPR - FPR; default) or max F1,
over every distinct validation score as a cut-off (positive when probability >= threshold);
ties go to the highest threshold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxrmsn.labels import LABELS
from training.downstream.labels import LabelMatrix, label_counts, not_estimable_reason

THRESHOLD_METHODS = ("youden", "f1")
_CHUNK = 100  # bootstrap resamples held in memory at once


def _groups(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights of positives and negatives per distinct score, ascending: two [B, G] arrays."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    pos = positive[order].astype(w.dtype)
    return np.add.reduceat(w * pos, starts, axis=1), np.add.reduceat(w * (1 - pos), starts, axis=1)


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC under each row of ``weights`` [B, n] (bootstrap counts); NaN where undefined."""
    pos, neg = _groups(np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool), weights)
    neg_below = np.cumsum(neg, axis=1) - neg
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = wins / (total_pos * total_neg)
    result[(total_pos == 0) | (total_neg == 0)] = np.nan
    return result


def weighted_average_precision(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision under each row of ``weights`` [B, n]; NaN without positives or negatives."""
    pos, neg = _groups(np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool), weights)
    pos, neg = pos[:, ::-1], neg[:, ::-1]  # descending scores: thresholds from high to low
    true_pos, predicted = np.cumsum(pos, axis=1), np.cumsum(pos + neg, axis=1)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = (pos * precision).sum(axis=1) / total_pos
    result[(total_pos == 0) | (total_neg == 0)] = np.nan
    return result


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """AUROC of one label; None when not estimable."""
    value = weighted_auroc(scores, positive, np.ones((1, len(scores))))[0]
    return None if np.isnan(value) else float(value)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    value = weighted_average_precision(scores, positive, np.ones((1, len(scores))))[0]
    return None if np.isnan(value) else float(value)


_METRICS = {"auroc": weighted_auroc, "auprc": weighted_average_precision}


def bootstrap_weights(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of [chunk, n] resample counts: each row draws n images with replacement."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need n >= 1 images and resamples >= 1, got {n}, {resamples}")
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        draws = rng.integers(0, n, size=(size, n))
        yield np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)


def per_label_values(
    probabilities: np.ndarray, labels: LabelMatrix, weights: np.ndarray, metric: str
) -> np.ndarray:
    """[B, 14] metric values under resample counts ``weights`` [B, N] (NaN: undefined)."""
    out = np.full((len(weights), probabilities.shape[1]), np.nan)
    for j in range(probabilities.shape[1]):
        keep = labels.mask[:, j]
        if keep.any():
            out[:, j] = _METRICS[metric](
                probabilities[keep, j], labels.targets[keep, j] == 1, weights[:, keep]
            )
    return out


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 1 or not 0 < self.level < 1:
            raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {self.resamples}, {self.level}")

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "unit": "image (resampled with replacement; the same draw for every label)",
            "interval": "percentile",
            "undefined_resamples": "dropped (a label without a positive or a negative in the resample)",
        }


def _interval(values: np.ndarray, level: float) -> dict[str, Any]:
    kept = values[~np.isnan(values)]
    if len(kept) == 0:
        return {"ci": None, "resamples_used": 0}
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(kept, [tail, 100 - tail])
    return {"ci": [round(float(low), 6), round(float(high), 6)], "resamples_used": len(kept)}


def _replicates(
    probabilities: np.ndarray, labels: LabelMatrix, settings: BootstrapSettings
) -> dict[str, np.ndarray]:
    """Per metric, [resamples, 14] bootstrap values."""
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in _METRICS}
    for weights in bootstrap_weights(len(probabilities), settings.resamples, settings.seed):
        for name in _METRICS:
            chunks[name].append(per_label_values(probabilities, labels, weights, name))
    return {name: np.concatenate(values) for name, values in chunks.items()}


def evaluate(
    probabilities: np.ndarray,
    labels: LabelMatrix,
    *,
    split: str,
    trained: Sequence[str] | None = None,
    settings: BootstrapSettings | None = None,
) -> dict[str, Any]:
    """Per-label and macro AUROC/AUPRC with bootstrap CIs on one split.

    ``trained``: labels with training signal (None: all). A label outside it is reported as
    ``untrained`` with no value; the macro averages over trained labels estimable on the split.
    """
    settings = settings or BootstrapSettings()
    _check_shapes(probabilities, labels)
    trained_set = set(LABELS if trained is None else trained)
    counts = label_counts(labels)
    point = {
        name: per_label_values(probabilities, labels, np.ones((1, len(probabilities))), name)[0]
        for name in _METRICS
    }
    replicates = _replicates(probabilities, labels, settings)
    per_label: dict[str, Any] = {}
    macro_labels: list[str] = []
    excluded: dict[str, str] = {}
    for j, label in enumerate(LABELS):
        reason = not_estimable_reason(counts[label], split)
        if reason is None and label not in trained_set:
            reason = "no training signal (no positives or no negatives in the training split)"
        entry: dict[str, Any] = {
            **counts[label],
            "status": "estimable" if reason is None else "not_estimable",
        }
        if reason is None:
            macro_labels.append(label)
            for name in _METRICS:
                entry[name] = {
                    "value": round(float(point[name][j]), 6),
                    **_interval(replicates[name][:, j], settings.level),
                }
        else:
            excluded[label] = reason
            entry.update({"reason": reason, "auroc": None, "auprc": None})
        per_label[label] = entry
    columns = [LABELS.index(label) for label in macro_labels]
    return {
        "split": split,
        "images": len(probabilities),
        "per_label": per_label,
        "macro": _macro(point, replicates, columns, macro_labels, excluded, settings.level),
        "bootstrap": settings.describe(),
    }


def _macro(
    point: dict[str, np.ndarray],
    replicates: dict[str, np.ndarray],
    columns: list[int],
    macro_labels: list[str],
    excluded: dict[str, str],
    level: float,
) -> dict[str, Any]:
    macro: dict[str, Any] = {"labels": macro_labels, "excluded": excluded}
    for name in _METRICS:
        if not columns:
            macro[name] = None
            continue
        values = replicates[name][:, columns].mean(axis=1)  # NaN when any macro label is undefined
        macro[name] = {"value": round(float(point[name][columns].mean()), 6), **_interval(values, level)}
    if not columns:
        macro["reason"] = "no label is estimable on this split"
    return macro


def macro_auroc(probabilities: np.ndarray, labels: LabelMatrix, columns: Sequence[int]) -> float | None:
    """Point macro AUROC over ``columns`` (no bootstrap): model selection and early stopping."""
    if not columns:
        return None
    values = per_label_values(probabilities, labels, np.ones((1, len(probabilities))), "auroc")[0]
    chosen = values[list(columns)]
    return None if np.isnan(chosen).any() else float(chosen.mean())


def _check_shapes(probabilities: np.ndarray, labels: LabelMatrix) -> None:
    if probabilities.shape != labels.targets.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not match labels {labels.targets.shape}")
    if len(probabilities) == 0:
        raise ValueError("no images to evaluate")


def paired_comparison(
    probabilities_a: np.ndarray,
    probabilities_b: np.ndarray,
    labels: LabelMatrix,
    macro_labels: Sequence[str],
    *,
    settings: BootstrapSettings | None = None,
) -> dict[str, Any]:
    """Model A against model B on the same images: paired bootstrap and a paired t-test over labels."""
    from scipy import stats

    settings = settings or BootstrapSettings()
    _check_shapes(probabilities_a, labels)
    _check_shapes(probabilities_b, labels)
    columns = [LABELS.index(label) for label in macro_labels]
    if not columns:
        raise ValueError("the comparison needs at least one label estimable for both models")
    ones = np.ones((1, len(labels.targets)))
    point_a = per_label_values(probabilities_a, labels, ones, "auroc")[0][columns]
    point_b = per_label_values(probabilities_b, labels, ones, "auroc")[0][columns]
    if np.isnan(point_a).any() or np.isnan(point_b).any():
        raise ValueError(f"some of {list(macro_labels)} are not estimable on these images")
    differences = []
    for weights in bootstrap_weights(len(labels.targets), settings.resamples, settings.seed):
        a = per_label_values(probabilities_a, labels, weights, "auroc")[:, columns].mean(axis=1)
        b = per_label_values(probabilities_b, labels, weights, "auroc")[:, columns].mean(axis=1)
        differences.append(a - b)
    diff = np.concatenate(differences)
    kept = diff[~np.isnan(diff)]
    p_boot = min(1.0, 2 * min(float((kept <= 0).mean()), float((kept >= 0).mean()))) if len(kept) else None
    return {
        "labels": list(macro_labels),
        "macro_auroc_a": round(float(point_a.mean()), 6),
        "macro_auroc_b": round(float(point_b.mean()), 6),
        "difference": {
            "value": round(float(point_a.mean() - point_b.mean()), 6),
            **_interval(diff, settings.level),
            "p_value_two_sided": p_boot,
        },
        "per_label_difference": {
            label: round(float(a - b), 6) for label, a, b in zip(macro_labels, point_a, point_b, strict=True)
        },
        "t_test": _label_t_test(point_a, point_b, stats),
        "bootstrap": settings.describe() | {"paired": "the same image resamples for both models"},
    }


def _label_t_test(point_a: np.ndarray, point_b: np.ndarray, stats: Any) -> dict[str, Any]:
    description = "paired Student t-test over labels: per-label test AUROC of A vs B (scipy ttest_rel)"
    if len(point_a) < 2 or np.allclose(point_a - point_b, (point_a - point_b)[0]):
        reason = "fewer than 2 labels" if len(point_a) < 2 else "the per-label differences are all equal"
        return {"test": description, "statistic": None, "p_value": None, "reason": reason}
    result = stats.ttest_rel(point_a, point_b)
    return {
        "test": description,
        "n_labels": len(point_a),
        "df": len(point_a) - 1,
        "statistic": round(float(result.statistic), 6),
        "p_value": float(result.pvalue),
    }


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str
    sensitivity: float
    specificity: float
    precision: float
    chosen_on: str


def choose_threshold(scores: np.ndarray, positive: np.ndarray, *, method: str, chosen_on: str) -> Threshold:
    """One operating threshold (positive when score >= threshold) by Youden's J or max F1."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {method!r}")
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ValueError(
            f"a threshold needs positives and negatives, got {int(positive.sum())} of {len(positive)}"
        )
    pos, neg = _groups(scores, positive, np.ones((1, len(scores))))
    pos, neg = pos[0, ::-1], neg[0, ::-1]  # thresholds from the highest score down
    cut_offs = np.unique(scores)[::-1]
    true_pos, false_pos = np.cumsum(pos), np.cumsum(neg)
    sensitivity, fall_out = true_pos / positive.sum(), false_pos / (~positive).sum()
    if method == "youden":
        objective = sensitivity - fall_out
    else:
        objective = 2 * true_pos / (true_pos + false_pos + positive.sum())
    best = int(np.argmax(objective))  # the first maximum: the highest threshold among ties
    return Threshold(
        value=float(cut_offs[best]),
        method=method,
        sensitivity=round(float(sensitivity[best]), 6),
        specificity=round(float(1 - fall_out[best]), 6),
        precision=round(float(true_pos[best] / (true_pos[best] + false_pos[best])), 6),
        chosen_on=chosen_on,
    )
