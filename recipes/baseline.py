"""The baseline a pretrained encoder must beat: logistic regression on a PCA of 32 x 32 pixels.

Same manifest, same splits, same label policy (uncertain -> 0, blanks masked) and the same
metrics (bootstrap CIs) as linear evaluation. Images go through the core decoder and the
core resize-and-crop (at 32 px instead of 224).

    python -m recipes.baseline MANIFEST --out baseline.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.fileio import atomic_write_text
from cxrmsn.imaging import decode
from cxrmsn.labels import LABELS
from cxrmsn.preprocess import PreprocessConfig, resize_and_crop

PIXELS = PreprocessConfig(resize=32, crop=32)


def pixel_features(manifest: Path, rows: list[Any]) -> np.ndarray:
    from training.data.manifest import resolve_image_path

    images = [decode(resolve_image_path(manifest, row).read_bytes()).pixels for row in rows]
    return np.stack([resize_and_crop(image, PIXELS).ravel() for image in images])


def fit_and_score(manifest: Path, *, components: int = 32, seed: int = 0) -> dict[str, Any]:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from training.data.manifest import read_manifest
    from training.downstream.labels import annotated_labels, estimable, label_matrix
    from training.downstream.metrics import evaluate

    rows = read_manifest(manifest)
    annotated = annotated_labels(rows)
    splits = {name: [row for row in rows if row.split == name] for name in ("train", "valid", "test")}
    features = {name: pixel_features(manifest, split_rows) for name, split_rows in splits.items()}
    labels = {name: label_matrix(split_rows, annotated=annotated) for name, split_rows in splits.items()}
    pca = PCA(n_components=components, random_state=seed).fit(features["train"])
    trained = [label for label, ok in zip(LABELS, estimable(labels["train"]), strict=True) if ok]
    probabilities = {name: np.full((len(x), len(LABELS)), 0.5) for name, x in features.items()}
    for label in trained:
        j = LABELS.index(label)
        mask = labels["train"].mask[:, j]
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        model.fit(pca.transform(features["train"][mask]), labels["train"].targets[mask, j])
        for name, x in features.items():
            probabilities[name][:, j] = model.predict_proba(pca.transform(x))[:, 1]
    return {
        "method": f"StandardScaler + LogisticRegression(C=0.1) per label on PCA({components}) of "
        "32 x 32 grey pixels (core decoder, core resize-and-crop)",
        "trained_labels": trained,
        "valid": evaluate(probabilities["valid"], labels["valid"], split="valid", trained=trained),
        "test": evaluate(probabilities["test"], labels["test"], split="test", trained=trained),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.baseline", description=__doc__.split("\n")[0])
    parser.add_argument("manifest", type=Path, help="a manifest CSV with train/valid/test splits")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--components", type=int, default=32, help="PCA components")
    args = parser.parse_args(argv)
    result = fit_and_score(args.manifest, components=args.components)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    macro = result["test"]["macro"]
    print(f"baseline test macro AUROC: {json.dumps(macro.get('auroc'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
