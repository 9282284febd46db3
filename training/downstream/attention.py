"""The classifier's last-layer CLS attention over a few test images, for the report's figure.

The images are single-label positives (one counted positive, a trained label), the most
confident first, one per label before any label repeats; each goes through the core decoder,
``cxrmsn.preprocess.preprocess`` and ``CXRClassifier.forward`` (probabilities and the patch
attention grid), as export and serving run it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.labels import LABELS
from training.downstream.artifact import Predictions


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


def attention_examples(classifier: Path, predictions: Predictions, count: int) -> list[dict[str, Any]]:
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
