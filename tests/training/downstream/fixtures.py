"""Generated downstream data: small PNGs whose labels are visible, a manifest, a nano encoder.

``Cardiomegaly`` is positive exactly when a bright disc sits in the middle of the picture, so
even a randomly initialised encoder's CLS embedding carries the label; ``No Finding`` is its
opposite. ``Edema`` is uncertain (-1) on some images, ``Pneumothorax`` annotated but never
positive, ``Fracture`` never annotated (blank) and every other label blank too.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cxrmsn.checkpoint import CheckpointMetadata, save_checkpoint
from cxrmsn.labels import LABELS, NUM_LABELS
from cxrmsn.model import create_encoder
from tests.helpers import chest_like_picture, to_png
from training.data.manifest import ManifestRow, write_manifest
from training.downstream.config import AugmentConfig, DownstreamConfig, EvalDataConfig, HeadConfig

ARCH = "vit_nano_patch16_224"
#: Pretraining overrides of a seconds-long experiment arm: vit_nano at 64 px, one epoch.
TINY_PRETRAIN = (
    "model.arch=vit_nano_patch8_64",
    "views.focal_views=1",
    "views.focal_size=32",
    "data.cache_size=64",
    "data.cache_workers=1",
    "data.num_workers=0",
    "loss.num_prototypes=16",
    "train.batch_size=8",
    "train.epochs=1",
    "train.progress=false",
    "monitor.every=0",
)
SPLIT_PATIENTS = {"train": 12, "valid": 6, "test": 6}  # two images each


def picture(positive: bool, seed: int) -> np.ndarray:
    pixels = chest_like_picture(72, 64, seed=seed).astype(np.float64)
    if positive:
        rows, cols = np.mgrid[0:72, 0:64]
        pixels[((rows - 36) ** 2 + (cols - 32) ** 2) < 14**2] = 255
    return pixels.astype(np.uint8)


def labels_for(positive: bool, index: int) -> tuple[float | None, ...]:
    values: list[float | None] = [None] * NUM_LABELS
    values[LABELS.index("Cardiomegaly")] = 1.0 if positive else 0.0
    values[LABELS.index("No Finding")] = 0.0 if positive else 1.0
    values[LABELS.index("Edema")] = -1.0 if index % 3 == 0 else float(positive)
    values[LABELS.index("Pneumothorax")] = 0.0
    return tuple(values)


def write_dataset(folder: Path) -> Path:
    """PNG files and manifest.csv in ``folder``; returns the manifest path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, index = [], 0
    for split, patients in SPLIT_PATIENTS.items():
        for patient in range(patients):
            positive = patient % 2 == 0
            for image in range(2):
                name = f"{split}_{patient}_{image}.png"
                (folder / name).write_bytes(to_png(picture(positive, seed=index)))
                rows.append(
                    ManifestRow(
                        path=name,
                        patient_id=f"{split}{patient}",
                        split=split,
                        dataset="generated",
                        labels=labels_for(positive, index),
                    )
                )
                index += 1
    write_manifest(folder / "manifest.csv", rows)
    return folder / "manifest.csv"


def write_encoder(path: Path, *, seed: int = 0, training_data: dict[str, object] | None = None) -> Path:
    """A randomly initialised nano encoder in the core format (kind "encoder")."""
    torch.manual_seed(seed)
    encoder = create_encoder(ARCH)
    metadata = CheckpointMetadata(architecture=ARCH, kind="encoder")
    if training_data is not None:
        metadata = replace(metadata, training_data=training_data)
    save_checkpoint(path, encoder.state_dict(), metadata)
    return path


def small_config(manifest: Path, cache: Path, **head: object) -> DownstreamConfig:
    """The protocol, shortened: 2 augmented copies, at most 20 epochs (first lr 1e-2: 60 steps of
    1e-3 would not turn a random head around), 200 bootstrap resamples."""
    from training.downstream.config import MetricsConfig

    return DownstreamConfig(
        name="test",
        device="cpu",
        data=EvalDataConfig(source="manifest", manifest=str(manifest), cache_dir=str(cache)),
        augment=AugmentConfig(copies=2),
        head=replace(HeadConfig(cosine_lrs=(1e-2, 1e-3, 1e-4), max_epochs=20, batch_size=8), **head),  # type: ignore[arg-type]
        metrics=MetricsConfig(resamples=200),
    )
