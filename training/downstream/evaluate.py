"""External validation: a trained classifier applied, unchanged, to another manifest's split.

The paper applies its MIMIC-trained head to the CheXpert test set (same 14 labels). Here any
classifier checkpoint (kind "classifier") is run on one split of any manifest (CheXpert's
``valid.csv``, or the test set's ``test_labels.csv`` with ``--test-csv``, becomes the ``test``
split of ``build-manifest chexpert``) by the inference path; labels follow the configured
policy (``labels.*``); metrics cover the classifier's trained labels that are estimable on the
split, with bootstrap CIs; and each trained label's saved threshold is scored (sensitivity,
specificity, precision at that threshold).

NIH's own 14 findings (``nih_findings``, a Data_Entry_2017.csv): the paper reports NIH
ChestX-ray14 on its 14 findings with a head trained on NIH. A CheXpert-label classifier can
score nine of them with its matching head (Effusion with Pleural Effusion, Mass and Nodule
each with Lung Lesion, ...), each against NIH's own per-finding targets; Infiltration,
Emphysema, Fibrosis, Pleural_Thickening and Hernia are reported as not estimable (no head).
Scoring all 14 needs a classifier with 14 NIH outputs, which this project does not train.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.checkpoint import CheckpointError, CheckpointMetadata, load_classifier
from cxrmsn.fileio import sha256_file
from cxrmsn.labels import LABELS
from cxrmsn.model import CXRClassifier
from training.data.manifest import SPLITS, ManifestRow, read_manifest, resolve_image_path
from training.data.nih import NIH_FINDING_HEADS, NIH_FINDINGS, read_nih_findings
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
from training.downstream.metrics import BootstrapSettings, evaluate
from training.downstream.predict import predict_files
from training.downstream.run_metrics import RunMetrics
from training.run_folder import peak_memory_mb

log = logging.getLogger(__name__)


def evaluate_classifier(
    classifier: Path,
    config: DownstreamConfig,
    out: Path,
    *,
    split: str = "test",
    nih_findings: Path | None = None,
) -> dict[str, Any]:
    """Metrics of ``classifier`` on ``split`` of the configured manifest, written to ``out``;
    with ``nih_findings``, also on NIH's own 14 findings (``metrics["nih_findings"]``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    findings = None if nih_findings is None else read_nih_findings(nih_findings)
    if config.data.source == "encoder":
        raise ValueError("evaluate needs --manifest (or data.source=shared), not data.source=encoder")
    started = time.perf_counter()
    model, metadata = _load(classifier)
    start_output(out, config)
    manifest = resolve_manifest(config, out, None)
    rows, labels = _split_rows(manifest, split, config)
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
    metrics = RunMetrics(
        protocol="external",
        evaluated_split=split,
        classifier=_classifier_record(classifier, metadata),
        trained_labels=metadata.trained_labels,
        data={
            "manifest": str(manifest.resolve()),
            "images": len(keep),
            "undecodable_images_dropped": len(failed),
            "datasets": sorted({r.dataset for r in rows}),
            "label_policy": _label_policy(config),
        },
        label_masks={"test": label_counts(labels)},
        test=block,
        details={
            "operating_points": operating_points(predictions.probabilities, labels, metadata.thresholds),
            **peak_memory_mb(),
        },
    )
    if findings is not None:
        nih = nih_finding_metrics(
            predictions.probabilities,
            [rows[i] for i in keep],
            findings,
            trained=metadata.trained_labels,
            split=split,
            settings=config.metrics.bootstrap(),
        ) | {"source": str(nih_findings)}
        metrics = metrics.merged({"nih_findings": nih})
    metrics = replace(metrics, seconds=round(time.perf_counter() - started, 1))
    metrics.write(out)
    return metrics.to_json()


def _classifier_record(classifier: Path, metadata: Any) -> dict[str, Any]:
    """metrics.json's ``classifier``: which checkpoint was evaluated."""
    return {
        "path": str(classifier.resolve()),
        "sha256": sha256_file(classifier),
        "architecture": metadata.architecture,
        "trained_labels": metadata.trained_labels,
        "thresholds": metadata.thresholds,
        "training_data": metadata.training_data.get("summary"),
    }


def _label_policy(config: DownstreamConfig) -> Any:
    labels = config.labels
    return policy_summary(labels.blank, labels.uncertain, labels.blank_zero_datasets)


def _load(classifier: Path) -> tuple[CXRClassifier, CheckpointMetadata]:
    try:
        module, metadata = load_classifier(classifier)
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(module, CXRClassifier):
        raise ValueError(f"{classifier} did not load as a CXRClassifier")
    return module, metadata


def _split_rows(
    manifest: Path, split: str, config: DownstreamConfig
) -> tuple[list[ManifestRow], LabelMatrix]:
    """The split's rows of the configured data sets (a seeded subset when configured) and their labels."""
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
        blank=config.labels.blank,
        uncertain=config.labels.uncertain,
        blank_zero_datasets=config.labels.blank_zero_datasets,
        annotated=annotated_labels(all_rows),
    )
    return rows, labels


def nih_finding_metrics(
    probabilities: np.ndarray,
    rows: list[ManifestRow],
    findings: dict[str, frozenset[str]],
    *,
    trained: list[str],
    split: str,
    settings: BootstrapSettings,
) -> dict[str, Any]:
    """AUROC/AUPRC with CIs on NIH's own 14 findings, each scored by its CheXpert head.

    Targets: 1 when the image's NIH ``Finding Labels`` hold the finding, else 0; images whose
    name is not in ``findings`` are masked. Scores: the probability of the finding's head in
    ``NIH_FINDING_HEADS`` (Mass and Nodule both by Lung Lesion); a finding without a head, or
    whose head had no training signal, is not estimable, with that reason.
    """
    names = [Path(row.path).name for row in rows]
    listed = np.asarray([name in findings for name in names], dtype=bool)
    targets = np.zeros((len(rows), len(NIH_FINDINGS)), dtype=np.float32)
    scores = np.full((len(rows), len(NIH_FINDINGS)), 0.5, dtype=np.float32)
    for k, finding in enumerate(NIH_FINDINGS):
        targets[:, k] = [finding in findings.get(name, ()) for name in names]
        head = NIH_FINDING_HEADS[finding]
        if head is not None:
            scores[:, k] = probabilities[:, LABELS.index(head)]
    mask = np.repeat(listed[:, None], len(NIH_FINDINGS), axis=1)
    scored = [f for f in NIH_FINDINGS if NIH_FINDING_HEADS[f] in trained]
    # metrics.evaluate names its 14 columns by the CheXpert labels; NIH has 14 findings too, so
    # they are scored column by column and the names put back afterwards
    positional = dict(zip(NIH_FINDINGS, LABELS, strict=True))
    block = evaluate(
        scores,
        LabelMatrix(targets, mask),
        split=split,
        trained=[positional[f] for f in scored],
        settings=settings,
    )
    reasons = {
        f: "no CheXpert head scores it: needs a classifier trained on NIH's 14 findings"
        if NIH_FINDING_HEADS[f] is None
        else f"the classifier's {NIH_FINDING_HEADS[f]} head had no training signal"
        for f in NIH_FINDINGS
        if f not in scored
    }
    return {
        "heads": dict(NIH_FINDING_HEADS),
        "images_with_nih_findings": int(listed.sum()),
        "images_without_nih_findings": int((~listed).sum()),
        **_with_finding_names(block, positional, reasons),
    }


def _with_finding_names(
    block: dict[str, Any], positional: dict[str, str], reasons: dict[str, str]
) -> dict[str, Any]:
    """``evaluate``'s block with each column's NIH finding name (and ``reasons`` for the
    findings that cannot be scored) in place of the CheXpert label it was computed under."""
    per_label = {}
    for finding, column in positional.items():
        entry = dict(block["per_label"][column])
        if finding in reasons:
            entry.update(
                {"status": "not_estimable", "reason": reasons[finding], "auroc": None, "auprc": None}
            )
        per_label[finding] = entry
    by_column = {column: finding for finding, column in positional.items()}
    macro = dict(block["macro"])
    macro["labels"] = [by_column[column] for column in macro["labels"]]
    macro["excluded"] = {by_column[c]: reasons.get(by_column[c], why) for c, why in macro["excluded"].items()}
    return {**block, "per_label": per_label, "macro": macro}


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
