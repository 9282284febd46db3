"""A tiny generated pretraining manifest and the overrides of a seconds-long in-process run."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrmsn.labels import LABELS, NUM_LABELS
from tests.helpers import chest_like_picture, to_png
from training.data.manifest import ManifestRow, write_manifest
from training.distributed import DistInfo

#: One process on the CPU.
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
#: A one-step model for train-step tests: vit_nano at 64 px with two 32 px focal views.
STEP_SMALL = [
    "model.arch=vit_nano_patch16_224",
    "views.target_size=64",
    "views.rand_size=64",
    "views.focal_size=32",
    "views.focal_views=2",
    "loss.num_prototypes=16",
    "train.epochs=2",
]

# vit_nano at 64 px (8 px patches) with two 32 px focal views: a fraction of a second per step.
NANO_RUN = [
    "model.arch=vit_nano_patch8_64",
    "views.target_size=64",
    "views.rand_size=64",
    "views.focal_size=32",
    "views.focal_views=2",
    "data.cache_size=64",
    "data.cache_workers=1",
    "data.num_workers=0",
    "loss.num_prototypes=16",
    "train.batch_size=4",
    "train.progress=false",
    "monitor.every=0",
]


def write_pretrain_manifest(folder: Path, *, train: int = 12, valid: int = 8) -> Path:
    """``train`` + ``valid`` generated films of 10 patients; Cardiomegaly alternates 1 / 0."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(train + valid):
        (folder / f"{i}.png").write_bytes(to_png(chest_like_picture(80, 72, seed=i)))
        labels: list[float | None] = [None] * NUM_LABELS
        labels[LABELS.index("Cardiomegaly")] = float(i % 2)
        rows.append(
            ManifestRow(
                path=str(folder / f"{i}.png"),
                patient_id=f"p{i // 2}",
                split="train" if i < train else "valid",
                dataset="generated",
                age=30.0 + i,
                sex="MF"[i % 2],
                labels=tuple(labels),
            )
        )
    write_manifest(folder / "manifest.csv", rows)
    return folder / "manifest.csv"
