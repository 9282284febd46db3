"""The report's PNG figures, drawn from one run folder, with their captions.

``roc_curves.png``, ``pr_curves.png``, ``reliability.png`` (when the run was calibrated),
``pretraining_monitor.png`` (when the encoder's pretraining run folder with its
``monitor.csv`` is at hand), ``embeddings.png`` (t-SNE of the test CLS embeddings, PCA above
``tsne_max`` images, coloured by label), ``attention.png`` (``training.downstream.attention``)
and ``training_curves.png``. The drawing itself is ``training.downstream.figures``'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.labels import LABELS
from training.downstream.artifact import load_predictions
from training.downstream.attention import attention_examples
from training.downstream.figures import (
    attention_figure,
    curves_figure,
    embedding_figure,
    embedding_map,
    history_figure,
    monitor_figure,
    reliability_figure,
)
from training.downstream.report_model import Figure
from training.downstream.run_metrics import RunMetrics
from training.run_folder import read_csv_log

ROC_CAPTION = (
    "Test ROC curve of each label with its AUROC (95 % CI) and counts; dashed: chance. "
    "A label without an estimate says why."
)
PR_CAPTION = (
    "Test precision-recall curve of each label with its AUPRC (95 % CI) and counts; dashed: "
    "the share of positives (chance)."
)
EMBEDDING_CAPTION = (
    "Test CLS embeddings mapped to 2-D by {method}, one panel per estimable label: positive, "
    "negative, not annotated."
)
ATTENTION_CAPTION = (
    "The classifier's last-layer CLS attention over single-label positive test images (top: the "
    "model's input; bottom: the attention over it), with the predicted probability and threshold."
)
RELIABILITY_CAPTION = (
    "Test reliability diagrams ({bins} equal-width bins) of each trained, estimable label: the "
    "uncalibrated probabilities (before) and after per-label temperature scaling fitted on "
    "validation (after: what the classifier and exported models output), with each one's ECE; "
    "dashed: perfect calibration."
)
HISTORY_CAPTION = "Validation macro AUROC per epoch of each run of the protocol."
MONITOR_CAPTION = (
    "The encoder's pretraining, from its run folder: MSN loss per epoch and the learning monitor "
    "(probe of the EMA target encoder on the labelled validation images, dashed: its value at "
    "initialisation; collapse signals). Monitor verdict at the end: {status}."
)


def draw_figures(
    run_dir: Path, out: Path, metrics: RunMetrics, tsne_max: int, attention_count: int, seed: int
) -> tuple[list[Figure], list[str]]:
    """The PNG figures with their captions, and notes on figures that could not be drawn."""
    predictions = load_predictions(run_dir, "test")
    per_label = metrics.split("test")["per_label"]
    figures = []
    for kind, caption in (("roc", ROC_CAPTION), ("pr", PR_CAPTION)):
        path = out / f"{kind}_curves.png"
        curves_figure(path, predictions.probabilities, predictions.labels, per_label, kind)
        figures.append(Figure(path, caption))
    notes: list[str] = []
    calibration = metrics.calibration
    if calibration and predictions.logits is not None:
        test_ece = calibration["ece"]["test"]
        shown = [label for label in LABELS if test_ece["after"]["per_label"].get(label) is not None]
        if shown:
            before = 1.0 / (1.0 + np.exp(-predictions.logits.astype(np.float64)))
            path = reliability_figure(
                out / "reliability.png",
                before,
                predictions.probabilities,
                predictions.labels,
                shown,
                test_ece,
                calibration["ece_bins"],
            )
            figures.append(Figure(path, RELIABILITY_CAPTION.format(bins=calibration["ece_bins"])))
    monitor = pretraining_monitor(metrics)
    if monitor is not None:
        rows, epochs = monitor
        path = monitor_figure(out / "pretraining_monitor.png", rows, epochs)
        figures.append(Figure(path, MONITOR_CAPTION.format(status=rows[-1].get("status") or "ok")))
    if predictions.embeddings is not None and len(predictions.embeddings) >= 4:
        coordinates, method = embedding_map(predictions.embeddings, seed=seed, tsne_max=tsne_max)
        shown = [label for label in LABELS if per_label[label]["status"] == "estimable"] or list(LABELS[-1:])
        path = embedding_figure(out / "embeddings.png", coordinates, method, predictions.labels, shown)
        figures.append(Figure(path, EMBEDDING_CAPTION.format(method=method)))
    classifier = _classifier_path(run_dir, metrics)
    if classifier is not None and attention_count > 0:
        examples = attention_examples(classifier, predictions, attention_count)
        if examples:
            figures.append(Figure(attention_figure(out / "attention.png", examples), ATTENTION_CAPTION))
        else:
            notes.append("No test image could be shown for attention (none decoded).")
    runs = metrics.runs or ([{"name": "finetune", "history": metrics.history}] if metrics.history else [])
    if runs:
        figures.append(Figure(history_figure(out / "training_curves.png", runs), HISTORY_CAPTION))
    return figures, notes


def pretraining_monitor(metrics: RunMetrics) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """The monitor.csv and metrics.csv rows of the encoder's pretraining run, when they are here."""
    encoder = Path(str((metrics.encoder or {}).get("path", "")))
    run = encoder.parent.parent  # RUN/checkpoints/encoder.safetensors
    if encoder.name != "encoder.safetensors" or not (run / "monitor.csv").is_file():
        return None
    rows, epochs = read_csv_log(run / "monitor.csv"), read_csv_log(run / "metrics.csv")
    last = ((metrics.encoder or {}).get("pretraining_metrics") or {}).get("epochs")
    if isinstance(last, int):  # the run may have gone on after this encoder was saved
        rows = [row for row in rows if row["epoch"] <= last]
        epochs = [row for row in epochs if row["epoch"] <= last]
    return (rows, epochs) if rows else None


def _classifier_path(run_dir: Path, metrics: RunMetrics) -> Path | None:
    local = run_dir / "classifier.safetensors"
    if local.is_file():
        return local
    named = Path((metrics.classifier or {}).get("path", ""))
    return named if named.is_file() else None
