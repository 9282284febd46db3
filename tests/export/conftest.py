"""Shared, session-scoped exports: one nano checkpoint, one repository with every variant."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cxrmsn.labels import LABELS
from tests.export.triton_server import TritonInstall, triton_install
from tests.helpers import chest_like_picture, to_png

NANO = "vit_nano_patch16_224"


def save_classifier(path: Path, *, arch: str = NANO, seed: int = 0, head_scale: float = 1.0) -> Path:
    """A random classifier checkpoint; ``head_scale`` spreads the probabilities out."""
    import torch

    from cxrmsn.checkpoint import CheckpointMetadata, save_checkpoint
    from cxrmsn.model import CXRClassifier

    torch.manual_seed(seed)
    model = CXRClassifier(arch)
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
    save_checkpoint(path, model.state_dict(), CheckpointMetadata(architecture=arch, extra={"seed": seed}))
    return path


def write_validation_set(folder: Path, count: int = 16, seed: int = 0) -> Path:
    """PNG chest-like pictures and a CSV of labels: 1, 0, blank and -1, both classes per label."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        picture = chest_like_picture(96 + 8 * (index % 3), 88, seed=index)
        (folder / f"image_{index}.png").write_bytes(to_png(picture))
        values = ["1" if index % 2 else "0" for _ in LABELS]
        values = [v if rng.random() > 0.3 else ("" if rng.random() > 0.5 else v) for v in values]
        values[LABELS.index("Fracture")] = "-1" if index == 0 else values[LABELS.index("Fracture")]
        values[LABELS.index("Pleural Other")] = "1"  # positives only: must be skipped
        rows.append({"path": f"image_{index}.png", **dict(zip(LABELS, values, strict=True))})
    manifest = folder / "validation.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "Sex", *LABELS])
        writer.writeheader()
        for row in rows:
            writer.writerow({"Sex": "F", **row})
    return manifest


@pytest.fixture(scope="session")
def nano_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("checkpoint") / "nano.safetensors", head_scale=20.0)


@pytest.fixture(scope="session")
def validation_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_validation_set(tmp_path_factory.mktemp("validation"))


@pytest.fixture(scope="session")
def nano_repository(
    tmp_path_factory: pytest.TempPathFactory, nano_checkpoint: Path, validation_manifest: Path
) -> Path:
    """fp32, fp16 and int8 of the nano checkpoint, measured on the validation set."""
    from export.build import ExportOptions, export_repository

    out = tmp_path_factory.mktemp("exported") / "model_repository"
    export_repository(
        nano_checkpoint, out, ExportOptions(validation_manifest=validation_manifest, ort_optimised="never")
    )
    return out


@pytest.fixture(scope="module")
def install() -> TritonInstall:
    """A real tritonserver (pytriton's, python backend), or a skip saying why there is none."""
    result = triton_install()
    if isinstance(result, str):
        pytest.skip(result)
    return result
