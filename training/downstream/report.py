"""``cxr-msn report``: a markdown summary and PNG figures for one downstream run folder.

Reads ``metrics.json``, ``predictions/test.npz`` and the classifier (``classifier.safetensors``
in the folder, or the one an ``evaluate`` run names) and writes ``report.md`` with:
per-label test AUROC/AUPRC with CIs and counts (and why a label is not estimable), the macro
values and the labels they average, thresholds, the runs of the protocol; figures
``roc_curves.png``, ``pr_curves.png``, ``embeddings.png`` (t-SNE of the test CLS embeddings,
PCA above ``tsne_max`` images, coloured by label), ``attention.png`` (last-layer CLS
attention of the classifier over a few single-label positive test images, as in the paper's
figures) and ``training_curves.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.fileio import atomic_write_text
from cxrmsn.labels import LABELS
from training.downstream.artifact import Predictions, load_predictions
from training.downstream.figures import (
    attention_figure,
    curves_figure,
    embedding_figure,
    embedding_map,
    history_figure,
)


def write_report(
    run_dir: Path, out: Path, *, tsne_max: int = 3000, attention_count: int = 6, seed: int = 0
) -> Path:
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise ValueError(
            f"{metrics_file} does not exist: pass an --out folder of linear-eval, finetune "
            "(fraction_<f>) or evaluate"
        )
    metrics = json.loads(metrics_file.read_text())
    predictions = load_predictions(run_dir, "test")
    out.mkdir(parents=True, exist_ok=True)
    per_label = metrics["test"]["per_label"]
    figures = {
        "roc_curves.png": curves_figure(
            out / "roc_curves.png", predictions.probabilities, predictions.labels, per_label, "roc"
        ),
        "pr_curves.png": curves_figure(
            out / "pr_curves.png", predictions.probabilities, predictions.labels, per_label, "pr"
        ),
    }
    notes: list[str] = []
    if predictions.embeddings is not None and len(predictions.embeddings) >= 4:
        coordinates, method = embedding_map(predictions.embeddings, seed=seed, tsne_max=tsne_max)
        shown = [label for label in LABELS if per_label[label]["status"] == "estimable"] or list(LABELS[-1:])
        figures["embeddings.png"] = embedding_figure(
            out / "embeddings.png", coordinates, method, predictions.labels, shown
        )
    classifier = _classifier_path(run_dir, metrics)
    if classifier is not None and attention_count > 0:
        examples = attention_examples(classifier, predictions, metrics, attention_count)
        if examples:
            figures["attention.png"] = attention_figure(out / "attention.png", examples)
        else:
            notes.append("No test image could be shown for attention (none decoded).")
    runs = metrics.get("runs") or (
        [{"name": "finetune", "history": metrics["history"]}] if "history" in metrics else []
    )
    if runs:
        figures["training_curves.png"] = history_figure(out / "training_curves.png", runs)
    path = out / "report.md"
    atomic_write_text(path, report_markdown(run_dir, metrics, figures, notes))
    return path


def _classifier_path(run_dir: Path, metrics: dict[str, Any]) -> Path | None:
    local = run_dir / "classifier.safetensors"
    if local.is_file():
        return local
    named = Path(metrics.get("classifier", {}).get("path", ""))
    return named if named.is_file() else None


def pick_examples(predictions: Predictions, trained: list[str], count: int) -> list[tuple[int, str]]:
    """Single-label positive test images (one counted positive, a trained label), the most
    confident first, one per label before any label repeats."""
    labels = predictions.labels
    positives = (labels.targets == 1) & labels.mask
    candidates: dict[str, list[int]] = {}
    for i in np.flatnonzero(positives.sum(axis=1) == 1):
        label = LABELS[int(np.flatnonzero(positives[i])[0])]
        if label in trained:
            candidates.setdefault(label, []).append(int(i))
    for label, indices in candidates.items():
        j = LABELS.index(label)
        indices.sort(key=lambda i: -predictions.probabilities[i, j])
    chosen: list[tuple[int, str]] = []
    while len(chosen) < count and any(candidates.values()):
        for label in list(candidates):
            if candidates[label] and len(chosen) < count:
                chosen.append((candidates[label].pop(0), label))
    return chosen


def attention_examples(
    classifier: Path, predictions: Predictions, metrics: dict[str, Any], count: int
) -> list[dict[str, Any]]:
    import torch
    from PIL import Image

    from cxrmsn.checkpoint import load_classifier
    from cxrmsn.errors import DecodeError
    from cxrmsn.imaging import decode
    from cxrmsn.preprocess import preprocess, resize_and_crop

    model, metadata = load_classifier(classifier)
    config = metadata.preprocess_config
    examples = []
    for index, label in pick_examples(predictions, list(metadata.trained_labels), count):
        try:
            pixels = decode(Path(predictions.paths[index]).read_bytes()).pixels
        except (DecodeError, OSError):
            continue
        with torch.no_grad():
            probabilities, attention = model(torch.from_numpy(preprocess(pixels, config))[None])
        grid = attention[0].numpy()
        upsampled = Image.fromarray(grid / grid.max(), mode="F").resize(
            (config.crop, config.crop), Image.Resampling.BILINEAR
        )
        threshold = metadata.thresholds.get(label)
        probability = float(probabilities[0, LABELS.index(label)])
        title = f"{label}\np = {probability:.2f}" + (
            f" (threshold {threshold:.2f})" if threshold is not None else ""
        )
        examples.append(
            {
                "image": resize_and_crop(pixels, config),
                "attention": np.asarray(upsampled),
                "title": title,
                "path": predictions.paths[index],
            }
        )
    return examples


def _metric_cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    ci = entry.get("ci")
    return f"{entry['value']:.3f} ({ci[0]:.3f} to {ci[1]:.3f})" if ci else f"{entry['value']:.3f}"


def report_markdown(
    run_dir: Path, metrics: dict[str, Any], figures: dict[str, Path], notes: list[str]
) -> str:
    test = metrics["test"]
    macro = test["macro"]
    boot = test["bootstrap"]
    lines = [
        f"# Report: {run_dir}",
        "",
        "> Research and demonstration only: not for clinical use.",
        "",
        f"- Protocol: **{metrics['protocol']}**"
        + (f", selected run `{metrics['selected_run']}`" if metrics.get("selected_run") else ""),
        f"- Test images: {test['images']}; macro AUROC **{_metric_cell(macro['auroc'])}**, macro AUPRC "
        f"**{_metric_cell(macro['auprc'])}** over {len(macro['labels'])} labels: "
        f"{', '.join(macro['labels']) or 'none'}.",
        f"- Confidence intervals: {100 * boot['level']:g} % percentile bootstrap, {boot['resamples']} "
        f"resamples of the test images (seed {boot['seed']}); resamples in which a label has no positive "
        "or no negative are dropped (counts below).",
        f"- Labels with training signal: {', '.join(metrics['trained_labels']) or 'none'}.",
    ]
    lines += _encoder_lines(metrics) + [f"- {note}" for note in notes]
    lines += [
        "",
        "## Test metrics per label",
        "",
        "| Label | Positives | Negatives | AUROC (95 % CI) | AUPRC (95 % CI) | Resamples used | Note |",
        "|---|---:|---:|---|---|---:|---|",
    ]
    for label in LABELS:
        e = test["per_label"][label]
        used = e["auroc"]["resamples_used"] if e.get("auroc") else "-"
        lines.append(
            f"| {label} | {e['positives']} | {e['negatives']} | {_metric_cell(e.get('auroc'))} | "
            f"{_metric_cell(e.get('auprc'))} | {used} | {e.get('reason') or ''} |"
        )
    lines += _threshold_lines(metrics) + _run_lines(metrics)
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(lines)


def _encoder_lines(metrics: dict[str, Any]) -> list[str]:
    encoder = metrics.get("encoder") or {}
    lines = []
    if encoder:
        lines.append(
            f"- Encoder: {encoder.get('architecture')} "
            f"({'frozen' if encoder.get('frozen') else 'fine-tuned'}), "
            f"`{encoder.get('path')}`; pretraining: {encoder.get('pretraining')}"
        )
    if "classifier" in metrics:
        lines.append(
            f"- Classifier: `{metrics['classifier']['path']}` "
            f"(trained on: {metrics['classifier']['training_data']})"
        )
    overlap = metrics.get("pretraining_overlap") or {}
    if overlap.get("checked"):
        lines.append(
            f"- Valid/test images of patients seen in pretraining: "
            f"{overlap['valid_images_of_pretraining_patients']} / "
            f"{overlap['test_images_of_pretraining_patients']}"
        )
    data = metrics.get("training_data") or metrics.get("data") or {}
    if "summary" in data:
        policy = data.get("label_policy") or {}
        lines.append(
            f"- Data: {data['summary']}; uncertain labels: {policy.get('uncertain')}; "
            f"blank labels: {policy.get('blank')}"
        )
    return lines


def _threshold_lines(metrics: dict[str, Any]) -> list[str]:
    thresholds = metrics.get("thresholds") or {}
    if not thresholds:
        return []
    lines = [
        "",
        "## Thresholds (saved with the classifier)",
        "",
        "| Label | Threshold | Method | Chosen on | Sensitivity | Specificity | Precision |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for label, t in thresholds.items():
        lines.append(
            f"| {label} | {t['value']:.4f} | {t['method']} | {t['chosen_on']} | {t['sensitivity']:.3f} | "
            f"{t['specificity']:.3f} | {t['precision']:.3f} |"
        )
    return lines


def _run_lines(metrics: dict[str, Any]) -> list[str]:
    runs = metrics.get("runs") or []
    if not runs:
        return []
    lines = [
        "",
        "## Runs of the protocol (selected on validation)",
        "",
        "| Run | lr | Schedule | Epochs run | Best epoch | Best valid macro AUROC | Stopped |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for run in runs:
        name = f"**{run['name']}**" if run["name"] == metrics.get("selected_run") else run["name"]
        lines.append(
            f"| {name} | {run['lr']:g} | {run['schedule']} | {run['epochs_run']} | {run['best_epoch']} | "
            f"{run['best_valid_macro_auroc']:.4f} | {run['stopped']} |"
        )
    return lines
