"""The control every encoder must beat: logistic regression on a PCA of 32 x 32 pixels.

Same manifest, same splits, the same label policy as the run it is compared with (``labels``;
by default the paper's: blank and uncertain -> 0) and the same
metrics (bootstrap CIs) as linear evaluation. Images go through the core decoder and the core
``resize_and_crop`` (at 32 px). The output folder has the shape of a linear-evaluation run
(``metrics.json`` and ``predictions/{valid,test}.npz``), so ``compare_runs`` pairs it with any
encoder's run on the same manifest. Deterministic: the same manifest gives the same numbers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.imaging import decode
from cxrmsn.labels import LABELS
from cxrmsn.preprocess import PreprocessConfig, resize_and_crop
from training.data.manifest import ManifestRow, read_manifest, resolve_image_path
from training.downstream.artifact import Predictions, save_predictions
from training.downstream.config import LabelConfig
from training.downstream.labels import annotated_labels, estimable, label_matrix
from training.downstream.metrics import BootstrapSettings, evaluate
from training.downstream.run_metrics import RunMetrics

PIXELS = PreprocessConfig(resize=32, crop=32)
METHOD = (
    "StandardScaler + LogisticRegression(C=0.1) per label on PCA({components}) of 32 x 32 grey "
    "pixels (core decoder, core resize-and-crop)"
)


def pixel_features(manifest: Path, rows: list[ManifestRow]) -> np.ndarray:
    images = [decode(resolve_image_path(manifest, row).read_bytes()).pixels for row in rows]
    return np.stack([resize_and_crop(image, PIXELS).ravel() for image in images])


def pixel_baseline(
    manifest: Path,
    out: Path | None = None,
    *,
    components: int = 32,
    seed: int = 0,
    settings: BootstrapSettings | None = None,
    labels: LabelConfig | None = None,
) -> dict[str, Any]:
    """Fit on train, score valid and test; with ``out``, write metrics.json and predictions/."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    rows = read_manifest(manifest)
    annotated = annotated_labels(rows)
    splits = {name: [row for row in rows if row.split == name] for name in ("train", "valid", "test")}
    features = {name: pixel_features(manifest, split_rows) for name, split_rows in splits.items()}
    policy = labels or LabelConfig()
    targets = {
        name: label_matrix(
            split_rows,
            blank=policy.blank,
            uncertain=policy.uncertain,
            blank_zero_datasets=policy.blank_zero_datasets,
            annotated=annotated,
        )
        for name, split_rows in splits.items()
    }
    components = min(components, len(features["train"]) - 1)  # PCA needs more images than components
    pca = PCA(n_components=components, random_state=seed).fit(features["train"])
    trained = [label for label, ok in zip(LABELS, estimable(targets["train"]), strict=True) if ok]
    probabilities = {name: np.full((len(x), len(LABELS)), 0.5) for name, x in features.items()}
    for label in trained:
        j = LABELS.index(label)
        mask = targets["train"].mask[:, j]
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        model.fit(pca.transform(features["train"][mask]), targets["train"].targets[mask, j])
        for name, x in features.items():
            probabilities[name][:, j] = model.predict_proba(pca.transform(x))[:, 1]
    blocks = {
        split: evaluate(probabilities[split], targets[split], split=split, trained=trained, settings=settings)
        for split in ("valid", "test")
    }
    metrics = RunMetrics(
        protocol="pixels",
        trained_labels=trained,
        untrained_labels=[label for label in LABELS if label not in trained],
        valid=blocks["valid"],
        test=blocks["test"],
        seconds=round(time.perf_counter() - started, 1),
        details={"method": METHOD.format(components=components), "manifest": str(manifest)},
    )
    if out is not None:
        for split in ("valid", "test"):
            paths = [str(resolve_image_path(manifest, row)) for row in splits[split]]
            predictions = Predictions(paths, targets[split], probabilities[split].astype(np.float32), None)
            save_predictions(out, split, predictions)
        metrics.write(out)
    return metrics.to_json()
