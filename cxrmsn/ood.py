"""The out-of-distribution guard: is this a chest radiograph like the ones the model was trained on?

The score is the Mahalanobis distance of the frozen encoder's CLS embedding ``e`` to a Gaussian
of the training images' embeddings: mean ``mu`` and a Ledoit-Wolf shrinkage covariance ``S``
(``fit_guard``). Export stores ``mu`` and ``W = cholesky(S^-1)`` as constants in the ONNX graph,
which then has a third output, ``ood_score`` [B] = ``|| (e - mu) W ||`` = sqrt((e - mu) S^-1
(e - mu)^T): the same forward pass gives it, in ONNX Runtime and in Triton alike.

The operating threshold is chosen without the test split: the 99.5th percentile of held-out
in-distribution scores, which are the training images scored out of fold (5 folds: each fifth
by a Gaussian fitted on the other four fifths) and the validation images (scored by the full
fit). ``recipes.ood_measure`` measured why: the 99th percentile of the 149 validation scores
alone rejected 5.5 % of the test split (docs/ood.md).

``decide`` is the one rule serving applies: the score above the threshold, a DICOM Modality
other than CR, DX or DR, or a DICOM ViewPosition the training images did not have -> the image
is not (taken for) a chest radiograph. numpy only at fit time; the decision needs no numpy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: The graph output that carries the score.
OOD_OUTPUT = "ood_score"
SCORE_KIND = "mahalanobis_cls_embedding"
#: Radiograph modalities (DICOM PS3.3 C.7.3.1.1.1): computed, digital, digital radiography.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
#: Modalities that say nothing about what the image is ("other"; a Secondary Capture's scanned
#: or exported film, which PACS tag OT or SC): the score decides, as for a PNG.
UNINFORMATIVE_MODALITIES = ("OT", "SC")
#: DICOM ViewPosition spellings of the views in the training data's ``view`` column.
VIEW_ALIASES: dict[str, tuple[str, ...]] = {
    "PA": ("PA",),
    "AP": ("AP",),
    "LATERAL": ("LATERAL", "LAT", "LL", "RL"),
    "LL": ("LATERAL", "LAT", "LL", "RL"),
    "RL": ("LATERAL", "LAT", "LL", "RL"),
}
THRESHOLD_PERCENTILE = 99.5
FOLDS = 5
THRESHOLD_RULE = (
    f"the {THRESHOLD_PERCENTILE:g}th percentile of held-out in-distribution scores: the training "
    f"images scored out of fold ({FOLDS} folds, each fold by a Gaussian fitted on the others) and "
    "the validation images (by the full fit); never the test split"
)
MODES = ("refuse", "warn")


@dataclass
class GuardFit:
    """What export puts in the graph and the manifest."""

    mean: Any  # float64 [D]
    whitening: Any  # float64 [D, D], cholesky factor of the precision: |(e - mean) @ W| is the score
    shrinkage: float
    threshold: float
    held_out_scores: dict[str, Any]  # "train_out_of_fold" and (if any) "valid" -> float64 [N]

    def score(self, embeddings: Any) -> Any:
        """The Mahalanobis distance of each row of ``embeddings`` [N, D], in float64."""
        import numpy as np

        centred = np.asarray(embeddings, dtype=np.float64) - self.mean
        return np.sqrt(np.sum((centred @ self.whitening) ** 2, axis=1))


def mahalanobis(embeddings: Any, mean: Any, precision: Any) -> Any:
    """sqrt((e - mean) P (e - mean)^T) per row, the textbook way (tests compare the graph with it)."""
    import numpy as np

    centred = np.asarray(embeddings, dtype=np.float64) - mean
    return np.sqrt(np.einsum("nd,de,ne->n", centred, precision, centred))


def _gaussian(train: Any) -> tuple[Any, Any, float]:
    """Mean, precision (Ledoit-Wolf shrinkage covariance, inverted) and the shrinkage."""
    import numpy as np
    from sklearn.covariance import LedoitWolf

    mean = train.mean(axis=0)
    fitted = LedoitWolf(assume_centered=True).fit(train - mean)
    return mean, np.asarray(fitted.precision_, dtype=np.float64), float(fitted.shrinkage_)


def fit_guard(train: Any, valid: Any | None = None, *, seed: int = 0) -> GuardFit:
    """Fit the Gaussian on ``train`` embeddings [N, D] and choose the threshold (``THRESHOLD_RULE``)."""
    import numpy as np

    train = np.asarray(train, dtype=np.float64)
    if train.ndim != 2 or len(train) < 2 * FOLDS:
        raise ValueError(f"the guard needs {2 * FOLDS} or more training embeddings [N, D], got {train.shape}")
    if not np.isfinite(train).all():
        raise ValueError("the training embeddings are not all finite")
    mean, precision, shrinkage = _gaussian(train)
    whitening = np.linalg.cholesky(precision)
    out_of_fold = np.empty(len(train))
    order = np.random.default_rng(seed).permutation(len(train))
    for fold in np.array_split(order, FOLDS):
        keep = np.ones(len(train), bool)
        keep[fold] = False
        fold_mean, fold_precision, _ = _gaussian(train[keep])
        out_of_fold[fold] = mahalanobis(train[fold], fold_mean, fold_precision)
    fit = GuardFit(mean, whitening, shrinkage, 0.0, {"train_out_of_fold": out_of_fold})
    if valid is not None and len(valid):
        fit.held_out_scores["valid"] = fit.score(valid)
    pooled = np.concatenate(list(fit.held_out_scores.values()))
    fit.threshold = float(np.percentile(pooled, THRESHOLD_PERCENTILE))
    return fit


def summary(scores: Any) -> dict[str, float | int]:
    """Count, median, 99th percentile and maximum of some scores, for the manifest."""
    import numpy as np

    values = np.asarray(scores, dtype=np.float64)
    return {
        "images": len(values),
        "median": round(float(np.median(values)), 4),
        "p99": round(float(np.percentile(values, 99)), 4),
        "max": round(float(values.max()), 4),
    }


def covered_views(views: Iterable[str | None]) -> list[str]:
    """The DICOM ViewPosition values the training data's ``view`` column covers (empty: unknown)."""
    covered: set[str] = set()
    for view in views:
        name = (view or "").strip().upper()
        if name:
            covered.update(VIEW_ALIASES.get(name, (name,)))
    return sorted(covered)


@dataclass(frozen=True)
class Verdict:
    """The guard's decision for one image: ``reasons`` empty means it looks like a chest radiograph."""

    score: float | None
    threshold: float | None
    reasons: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return bool(self.reasons)

    def detail(self) -> str:
        return "; ".join(self.reasons)


def decide(
    score: float | None,
    threshold: float | None,
    *,
    modality: str | None = None,
    view_position: str | None = None,
    views: Iterable[str] = (),
) -> Verdict:
    """THE rule: score over threshold, a non-radiograph DICOM Modality, or an uncovered ViewPosition.

    A missing Modality or ViewPosition decides nothing (PNG and JPEG have neither), nor does a
    Modality of OT or SC (a chest film stored as a Secondary Capture); a NaN or infinite score
    is over any threshold.
    """
    reasons = []
    if score is not None and threshold is not None and not score <= threshold:
        reasons.append(
            f"out-of-distribution score {score:.2f} is above the threshold {threshold:.2f} "
            "(Mahalanobis distance of the image's embedding from the training chest radiographs')"
        )
    stated = (modality or "").strip().upper()
    if stated and stated not in RADIOGRAPH_MODALITIES + UNINFORMATIVE_MODALITIES:
        reasons.append(f"DICOM Modality is {stated}, not one of {', '.join(RADIOGRAPH_MODALITIES)}")
    covered = set(views)
    position = (view_position or "").strip().upper()
    if position and covered and position not in covered:
        reasons.append(
            f"DICOM ViewPosition is {position}; the training images were {', '.join(sorted(covered))}"
        )
    return Verdict(score, threshold, reasons)
