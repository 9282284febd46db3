"""A small random model, exported by the project's own export path, for serving tests."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrmsn.checkpoint import CheckpointMetadata, save_checkpoint
from cxrmsn.model import CXRClassifier
from cxrmsn.preprocess import DEFAULT_PREPROCESS, PreprocessConfig
from tests.run_metrics import run_metrics, write_run_metrics

TRAINED = ["Cardiomegaly", "Pleural Effusion", "No Finding"]
# Cardiomegaly and No Finding are over their threshold on every image, Pleural Effusion never,
# and Edema (untrained) never despite its threshold of 0. No Finding fails the validity gate
# (its validation AUROC's CI reaches below 0.5), so it is never positive either: only
# Cardiomegaly is.
THRESHOLDS = {"Cardiomegaly": 0.0, "Pleural Effusion": 1.0, "No Finding": 0.0, "Edema": 0.0}
VALIDATED = ["Cardiomegaly", "Pleural Effusion"]
NOT_VALIDATED = ["No Finding"]
# The small recipe's input size: 64 px images, 8 px patches, an 8 x 8 attention grid.
SMALL_ARCHITECTURE = "vit_nano_patch8_64"
SMALL_PREPROCESSING = PreprocessConfig(resize=64, crop=64)


def export_test_repository(
    root: Path,
    architecture: str = "vit_nano_patch16_224",
    preprocessing: PreprocessConfig = DEFAULT_PREPROCESS,
) -> Path:
    from export.build import ExportOptions, export_repository

    torch.manual_seed(0)
    checkpoint = root / "checkpoint.safetensors"
    metadata = CheckpointMetadata(
        architecture=architecture,
        preprocessing=preprocessing.to_dict(),
        trained_labels=TRAINED,
        thresholds=THRESHOLDS,
        training_data={"summary": "randomly initialised: untrained, for testing only"},
        intended_use="tests only",
    )
    save_checkpoint(checkpoint, CXRClassifier(architecture).state_dict(), metadata)
    # The run's metrics.json next to the checkpoint, as linear-eval leaves it: the gate's input.
    write_run_metrics(root / "metrics.json", run_metrics(TRAINED, THRESHOLDS, separable=VALIDATED))
    repository = root / "model_repository"
    export_repository(checkpoint, repository, ExportOptions(variants=("fp32",), ort_optimised="never"))
    return repository


def export_small_test_repository(root: Path) -> Path:
    """The same repository at the small recipe's input size (64 px, 8 x 8 grid)."""
    return export_test_repository(root, SMALL_ARCHITECTURE, SMALL_PREPROCESSING)
