"""A small random model, exported by the project's own export path, for serving tests."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrmsn.checkpoint import CheckpointMetadata, save_checkpoint
from cxrmsn.model import CXRClassifier

TRAINED = ["Cardiomegaly", "Pleural Effusion", "No Finding"]
# Cardiomegaly and No Finding are always positive, Pleural Effusion never, and Edema
# (untrained) never despite its threshold of 0.
THRESHOLDS = {"Cardiomegaly": 0.0, "Pleural Effusion": 1.0, "No Finding": 0.0, "Edema": 0.0}


def export_test_repository(root: Path, architecture: str = "vit_nano_patch16_224") -> Path:
    from export.build import ExportOptions, export_repository

    torch.manual_seed(0)
    checkpoint = root / "checkpoint.safetensors"
    metadata = CheckpointMetadata(
        architecture=architecture,
        trained_labels=TRAINED,
        thresholds=THRESHOLDS,
        training_data={"summary": "randomly initialised: untrained, for testing only"},
        intended_use="tests only",
    )
    save_checkpoint(checkpoint, CXRClassifier(architecture).state_dict(), metadata)
    repository = root / "model_repository"
    export_repository(checkpoint, repository, ExportOptions(variants=("fp32",), ort_optimised="never"))
    return repository
