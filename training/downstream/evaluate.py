"""External validation: a trained classifier applied, unchanged, to another manifest's split.

The paper applies its MIMIC-trained head to the CheXpert test set (same 14 labels). Here any
classifier checkpoint (kind "classifier") is run on one split of any manifest (CheXpert's
``valid.csv`` becomes the ``test`` split of ``build-manifest chexpert``) by the inference path;
labels follow the same policy (blanks masked); metrics cover the classifier's trained labels
that are estimable on the split, with bootstrap CIs; and each trained label's saved threshold
is scored (sensitivity, specificity, precision at that threshold).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.checkpoint import CheckpointError, load_classifier
from cxrmsn.fileio import sha256_file
from cxrmsn.labels import LABELS
from cxrmsn.model import CXRClassifier
from training.data.manifest import SPLITS, read_manifest, resolve_image_path
from training.distributed import resolve_device
from training.downstream.artifact import Predictions, save_predictions, start_output
from training.downstream.config import DownstreamConfig
from training.downstream.data import random_subset, resolve_manifest
from training.downstream.labels import (
    LabelMatrix,
    annotated_labels,
    label_counts,
    label_matrix,
    policy_summary,
)
from training.downstream.metrics import evaluate
from training.downstream.predict import predict_files
from training.run_folder import peak_memory_mb, write_json

log = logging.getLogger(__name__)


def evaluate_classifier(
    classifier: Path, config: DownstreamConfig, out: Path, *, split: str = "test"
) -> dict[str, Any]:
    """Metrics of ``classifier`` on ``split`` of the configured manifest, written to ``out``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if config.data.source == "encoder":
        raise ValueError("evaluate needs --manifest (or data.source=shared), not data.source=encoder")
    started = time.perf_counter()
    try:
        module, metadata = load_classifier(classifier)
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(module, CXRClassifier):
        raise ValueError(f"{classifier} did not load as a CXRClassifier")
    model = module
    start_output(out, config)
    manifest = resolve_manifest(config, out, None)
    all_rows = read_manifest(manifest)
    rows = [
        r
        for r in all_rows
        if r.split == split and (not config.data.datasets or r.dataset in config.data.datasets)
    ]
    if not rows:
        raise ValueError(f"{manifest} has no {split} images (data sets: {config.data.datasets or 'all'})")
    rows = random_subset(rows, config.data.max_eval_images, seed=config.seed)
    labels = label_matrix(
        rows,
        uncertain=config.labels.uncertain,
        blank_zero_datasets=config.labels.blank_zero_datasets,
        annotated=annotated_labels(all_rows),
    )
    paths = [resolve_image_path(manifest, r) for r in rows]
    probabilities, embeddings, failed = predict_files(
        model,
        paths,
        metadata.preprocess_config,
        batch_size=config.data.embed_batch_size,
        workers=config.data.workers,
        device=resolve_device(config.device),
    )
    keep = np.setdiff1d(np.arange(len(rows)), failed)
    labels = labels.subset(keep)
    predictions = Predictions([str(paths[i]) for i in keep], labels, probabilities[keep], embeddings[keep])
    block = evaluate(
        predictions.probabilities,
        labels,
        split=split,
        trained=metadata.trained_labels,
        settings=config.metrics.bootstrap(),
    )
    save_predictions(out, "test", predictions)
    metrics = {
        "protocol": "external",
        "evaluated_split": split,
        "classifier": {
            "path": str(classifier.resolve()),
            "sha256": sha256_file(classifier),
            "architecture": metadata.architecture,
            "trained_labels": metadata.trained_labels,
            "thresholds": metadata.thresholds,
            "training_data": metadata.training_data.get("summary"),
        },
        "trained_labels": metadata.trained_labels,
        "data": {
            "manifest": str(manifest.resolve()),
            "images": len(keep),
            "undecodable_images_dropped": len(failed),
            "datasets": sorted({r.dataset for r in rows}),
            "label_policy": policy_summary(config.labels.uncertain, config.labels.blank_zero_datasets),
        },
        "label_masks": {"test": label_counts(labels)},
        "test": block,
        "operating_points": operating_points(predictions.probabilities, labels, metadata.thresholds),
        "seconds": round(time.perf_counter() - started, 1),
        **peak_memory_mb(),
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def operating_points(
    probabilities: np.ndarray, labels: LabelMatrix, thresholds: dict[str, float]
) -> dict[str, Any]:
    """Sensitivity, specificity and precision of each saved threshold on these images."""
    result: dict[str, Any] = {}
    for label, threshold in thresholds.items():
        j = LABELS.index(label)
        keep = labels.mask[:, j]
        positive = labels.targets[keep, j] == 1
        predicted = probabilities[keep, j] >= threshold
        if not positive.any() or positive.all():
            result[label] = {"threshold": threshold, "reason": "not estimable (no positives or no negatives)"}
            continue
        true_pos = int((predicted & positive).sum())
        result[label] = {
            "threshold": threshold,
            "sensitivity": round(true_pos / int(positive.sum()), 6),
            "specificity": round(int((~predicted & ~positive).sum()) / int((~positive).sum()), 6),
            "precision": round(true_pos / int(predicted.sum()), 6) if predicted.any() else None,
        }
    return result
