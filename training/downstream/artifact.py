"""What a downstream run leaves behind: the classifier checkpoint, metrics.json, predictions.

``OUT/classifier.safetensors``: the core checkpoint format, kind "classifier" (the
``CXRClassifier`` state dict: encoder + head), with the labels that had training signal, one
threshold per trained label, the metrics, a summary of the data and the intended use; this is
what ``cxr-msn export`` reads. ``OUT/metrics.json``: everything measured, with CIs, label
masks and reasons. ``OUT/predictions/<split>.npz``: image paths, targets, masks,
probabilities and CLS embeddings of valid and test, for reports and paired comparisons.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrmsn.checkpoint import CheckpointMetadata, save_checkpoint
from cxrmsn.fileio import atomic_write_bytes
from cxrmsn.labels import LABELS
from cxrmsn.model import CXRClassifier
from cxrmsn.preprocess import PreprocessConfig
from training.downstream.calibration import (
    Temperatures,
    calibration_report,
    fit_temperatures,
    logits_from_probabilities,
    no_temperatures,
)
from training.downstream.config import DownstreamConfig, config_to_dict
from training.downstream.labels import LabelMatrix, estimable
from training.downstream.metrics import Threshold, choose_threshold, evaluate
from training.downstream.run_metrics import METRICS_FILE, RunMetrics
from training.run_folder import code_version, peak_memory_mb, write_json

INTENDED_USE = (
    "Research and demonstration only: not for clinical use, not validated for diagnosis or any "
    "clinical decision. Trained on {data}; metrics are from a small or weakly labelled test split "
    "and do not transfer to other populations or settings."
)


@dataclass
class Predictions:
    paths: list[str]
    labels: LabelMatrix
    probabilities: np.ndarray  # float32 [N, 14]
    embeddings: np.ndarray | None  # float32 [N, D]: CLS embeddings of the plain view
    logits: np.ndarray | None = None  # float32 [N, 14], before calibration (None: not kept)


def save_predictions(out: Path, split: str, predictions: Predictions) -> Path:
    path = out / "predictions" / f"{split}.npz"
    arrays: dict[str, np.ndarray] = {
        "paths": np.asarray(predictions.paths, dtype=str),
        "labels": np.asarray(LABELS, dtype=str),
        "targets": predictions.labels.targets,
        "mask": predictions.labels.mask,
        "probabilities": predictions.probabilities.astype(np.float32),
    }
    if predictions.embeddings is not None:
        arrays["embeddings"] = predictions.embeddings.astype(np.float32)
    if predictions.logits is not None:
        arrays["logits"] = predictions.logits.astype(np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_predictions(run_dir: Path, split: str = "test") -> Predictions:
    path = run_dir / "predictions" / f"{split}.npz"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {run_dir} an --out of linear-eval, finetune, evaluate?")
    with np.load(path) as stored:
        if tuple(stored["labels"].tolist()) != LABELS:
            raise ValueError(f"{path} has labels {stored['labels'].tolist()}, not this project's 14")
        return Predictions(
            paths=stored["paths"].tolist(),
            labels=LabelMatrix(stored["targets"], stored["mask"]),
            probabilities=stored["probabilities"],
            embeddings=stored.get("embeddings", None),
            logits=stored.get("logits", None),
        )


def trained_labels(train: LabelMatrix) -> list[str]:
    """Labels with at least one positive and one negative among the counted training images."""
    return [label for label, ok in zip(LABELS, estimable(train), strict=True) if ok]


def selection_columns(trained: list[str], valid: LabelMatrix) -> list[int]:
    """Indices of the trained labels with positives and negatives in validation: the labels a
    run is selected on (macro AUROC)."""
    valid_ok = estimable(valid)
    return [j for j, label in enumerate(LABELS) if label in trained and valid_ok[j]]


def choose_thresholds(
    trained: list[str],
    valid: tuple[np.ndarray, LabelMatrix],
    fallback: tuple[np.ndarray, LabelMatrix],
    method: str,
) -> dict[str, Threshold]:
    """One threshold per trained label on validation; on the training split (plain view) where
    the validation split has no positive or no negative for the label."""
    thresholds = {}
    for label in trained:
        j = LABELS.index(label)
        for (probabilities, labels), name in ((valid, "valid"), (fallback, "train (not estimable on valid)")):
            keep = labels.mask[:, j]
            positive = labels.targets[keep, j] == 1
            if positive.any() and not positive.all():
                thresholds[label] = choose_threshold(
                    probabilities[keep, j], positive, method=method, chosen_on=name
                )
                break
    return thresholds


@dataclass
class RunOutputs:
    """What ``finish`` needs from linear evaluation or fine-tuning."""

    protocol: str  # "linear" or "finetune"
    model: CXRClassifier  # encoder + trained head, on the CPU
    preprocessing: PreprocessConfig
    trained: list[str]
    predictions: dict[str, Predictions]  # train (plain view), valid, test
    training_data: dict[str, Any]
    protocol_details: dict[str, Any]  # runs, selection, encoder, augmentation ...
    encoder: dict[str, Any]  # path, sha256, architecture, pretraining summary


def calibrate(
    outputs: RunOutputs, method: str = "temperature"
) -> tuple[dict[str, Predictions], Temperatures, dict[str, Any]]:
    """Per-label temperatures fitted on validation (``training.downstream.calibration``), or
    T = 1 for every label when ``method`` is "none".

    Returns the predictions on the calibrated scale (their ``logits`` stay uncalibrated), the
    temperatures and metrics.json's ``calibration`` block (ECE before and after on valid and test).
    """
    logits = {
        split: (
            p.logits.astype(np.float64)
            if p.logits is not None
            else logits_from_probabilities(p.probabilities)
        )
        for split, p in outputs.predictions.items()
    }
    valid = outputs.predictions["valid"]
    temperatures = (
        fit_temperatures(logits["valid"], valid.labels, outputs.trained, fitted_on="valid")
        if method == "temperature"
        else no_temperatures("valid")
    )
    calibrated = {
        split: replace(
            p, probabilities=temperatures.apply(logits[split]), logits=logits[split].astype(np.float32)
        )
        for split, p in outputs.predictions.items()
    }
    report = calibration_report(
        temperatures,
        {split: (logits[split], outputs.predictions[split].labels) for split in ("valid", "test")},
        outputs.trained,
    )
    return calibrated, temperatures, report


def calibrated_state(model: CXRClassifier, temperatures: Temperatures) -> dict[str, Any]:
    """The classifier's state dict with 1/T folded into the linear head's weight and bias."""
    state = dict(model.state_dict())
    scale = torch.from_numpy(1.0 / temperatures.vector()).to(state["head.weight"].dtype)
    state["head.weight"] = state["head.weight"] * scale[:, None]
    state["head.bias"] = state["head.bias"] * scale
    return state


def finish(out: Path, config: DownstreamConfig, outputs: RunOutputs, *, started: float) -> RunMetrics:
    """Calibration, thresholds, metrics with CIs, predictions, metrics.json and classifier.safetensors.

    Temperatures are fitted on validation first (all 1 with ``head.calibration`` none);
    thresholds, metrics and the stored predictions are on the calibrated scale, and the
    checkpoint's head has 1/T folded in (its metadata's ``calibration`` names the temperatures,
    ``applied_to_head: true``), so the checkpoint, the exported models and the reported
    predictions agree.
    """
    settings = config.metrics.bootstrap()
    preds, temperatures, calibration = calibrate(outputs, config.head.calibration_method())
    thresholds = choose_thresholds(
        outputs.trained,
        (preds["valid"].probabilities, preds["valid"].labels),
        (preds["train"].probabilities, preds["train"].labels),
        config.metrics.threshold,
    )
    splits = {
        split: evaluate(
            preds[split].probabilities,
            preds[split].labels,
            split=split,
            trained=outputs.trained,
            settings=settings,
        )
        for split in ("valid", "test")
    }
    for split in ("valid", "test"):
        save_predictions(out, split, preds[split])
    metrics = RunMetrics(
        protocol=outputs.protocol,
        encoder=outputs.encoder,
        trained_labels=outputs.trained,
        untrained_labels=[label for label in LABELS if label not in outputs.trained],
        label_masks={split: outputs.training_data["splits"][split]["labels"] for split in preds},
        thresholds={label: asdict(t) for label, t in thresholds.items()},
        calibration=calibration,
        valid=splits["valid"],
        test=splits["test"],
        training_data=outputs.training_data,
        seconds=round(time.perf_counter() - started, 1),
        details=peak_memory_mb(),
    ).merged(outputs.protocol_details)
    metrics.write(out)
    save_checkpoint(
        out / "classifier.safetensors",
        calibrated_state(outputs.model, temperatures),
        classifier_metadata(outputs, thresholds, metrics, temperatures),
    )
    return metrics


def classifier_metadata(
    outputs: RunOutputs,
    thresholds: dict[str, Threshold],
    metrics: RunMetrics,
    temperatures: Temperatures | None = None,
) -> CheckpointMetadata:
    data = outputs.training_data
    return CheckpointMetadata(
        architecture=outputs.model.architecture,
        kind="classifier",
        preprocessing=outputs.preprocessing.to_dict(),
        trained_labels=list(outputs.trained),
        thresholds={label: round(t.value, 6) for label, t in thresholds.items()},
        training_data=data,
        metrics=compact_metrics(metrics, thresholds),
        intended_use=INTENDED_USE.format(data=data["summary"]),
        calibration=(
            {**temperatures.to_metadata(), "applied_to_head": True} if temperatures is not None else {}
        ),
        extra={
            "protocol": outputs.protocol,
            "encoder": outputs.encoder,
            "selected_run": metrics.selected_run,
            "code_version": code_version()["git_describe"],
        },
    )


def compact_metrics(metrics: RunMetrics, thresholds: dict[str, Threshold]) -> dict[str, Any]:
    """The checkpoint's (and the served model card's) summary of metrics.json."""

    def per_label(block: dict[str, Any]) -> dict[str, Any]:
        return {
            label: {
                "auroc": e["auroc"],
                "auprc": e["auprc"],
                "positives": e["positives"],
                "negatives": e["negatives"],
            }
            if e["status"] == "estimable"
            else {"auroc": None, "auprc": None, "reason": e["reason"]}
            for label, e in block["per_label"].items()
        }

    valid, test = metrics.split("valid"), metrics.split("test")
    calibration = metrics.calibration
    return {
        "protocol": metrics.protocol,
        "selected_run": metrics.selected_run,
        "bootstrap": test["bootstrap"],
        "threshold_method": next((t.method for t in thresholds.values()), None),
        **({"calibration": compact_calibration(calibration)} if calibration is not None else {}),
        "valid": {
            "macro": valid["macro"],
            "images": valid["images"],
            "per_label": per_label(valid),  # what export's validity gate reads
        },
        "test": {
            "macro": test["macro"],
            "images": test["images"],
            "per_label": per_label(test),
        },
    }


def compact_calibration(block: dict[str, Any]) -> dict[str, Any]:
    """The model card's summary of metrics.json's ``calibration``: method, temperatures, macro ECE."""
    return {
        "method": block["method"],
        "fitted_on": block["fitted_on"],
        "temperatures": block["temperatures"],
        "ece_bins": block["ece_bins"],
        "ece_macro": {
            split: {when: entry[when]["macro"] for when in ("before", "after")}
            for split, entry in block["ece"].items()
        },
    }


def start_output(out: Path, config: DownstreamConfig) -> None:
    """Create ``out`` (refusing one with results) and write config.json and version.json."""
    if (out / METRICS_FILE).is_file():
        raise ValueError(f"{out} already holds results ({METRICS_FILE}): choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config_to_dict(config))
    write_json(out / "version.json", code_version())
