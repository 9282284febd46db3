"""The images and labels of a downstream run: manifest, splits, subsets, label matrices.

Sources (``data.source``): a manifest CSV; ``../shared/data`` (a manifest built into the
output folder with the pretraining's split seed); or ``encoder``: the manifest the encoder was
pretrained on, named in its metadata (checked by sha256), so that linear evaluation uses
exactly the pretraining's patient splits. Whatever the source, the valid and test images are
checked against the encoder's pretraining patients and the overlap is reported.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.checkpoint import CheckpointMetadata
from training.data.manifest import SPLITS, ManifestRow, read_manifest, resolve_image_path, write_manifest
from training.data_root import shared_data_root
from training.downstream.config import DownstreamConfig
from training.downstream.labels import (
    LabelMatrix,
    annotated_labels,
    label_counts,
    label_matrix,
    policy_summary,
    raw_value_counts,
)

log = logging.getLogger(__name__)


@dataclass
class DownstreamData:
    manifest: Path
    rows: dict[str, list[ManifestRow]]  # split -> rows, in a fixed order
    labels: dict[str, LabelMatrix]  # split -> targets and mask, row-aligned
    dropped: dict[str, list[str]] = field(default_factory=dict)  # split -> undecodable image paths

    def paths(self, split: str) -> list[Path]:
        return [resolve_image_path(self.manifest, row) for row in self.rows[split]]

    def drop(self, split: str, failed: Sequence[int]) -> None:
        """Remove rows whose images could not be decoded (recorded in ``dropped``)."""
        if not failed:
            return
        bad = set(failed)
        self.dropped.setdefault(split, []).extend(str(p) for i, p in enumerate(self.paths(split)) if i in bad)
        keep = np.array([i not in bad for i in range(len(self.rows[split]))])
        self.rows[split] = [row for row, k in zip(self.rows[split], keep, strict=True) if k]
        self.labels[split] = self.labels[split].subset(np.flatnonzero(keep))


def resolve_manifest(config: DownstreamConfig, out: Path, encoder: CheckpointMetadata | None) -> Path:
    data = config.data
    if data.source == "manifest":
        if not data.manifest:
            raise ValueError("data.manifest is empty: pass --manifest PATH (or --set data.source=shared)")
        path = Path(data.manifest).expanduser()
        if not path.is_file():
            raise ValueError(f"data.manifest {path} does not exist (build one with `build-manifest`)")
        return path
    if data.source == "encoder":
        return _encoder_manifest(encoder)
    root = shared_data_root(data.shared_root or None, check=True)
    from training.data.shared import build_shared

    path = out / "manifest.csv"
    write_manifest(path, build_shared(root, seed=data.split_seed))
    return path


def _encoder_manifest(encoder: CheckpointMetadata | None) -> Path:
    info = {} if encoder is None else encoder.training_data
    if "manifest" not in info:
        raise ValueError("data.source=encoder, but the encoder's metadata names no pretraining manifest")
    path = Path(info["manifest"])
    if not path.is_file():
        raise ValueError(f"the encoder's pretraining manifest {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if info.get("manifest_sha256") not in (None, digest):
        raise ValueError(f"{path} has changed since the encoder was pretrained on it (sha256 differs)")
    return path


def prepare_data(config: DownstreamConfig, manifest: Path) -> DownstreamData:
    """Rows per split (data sets, seeded subsets, label fraction) and their label matrices."""
    all_rows = read_manifest(manifest)
    annotated = annotated_labels(all_rows)
    datasets = config.data.datasets
    chosen = [r for r in all_rows if not datasets or r.dataset in datasets]
    rows: dict[str, list[ManifestRow]] = {}
    for split in SPLITS:
        split_rows = [r for r in chosen if r.split == split]
        if not split_rows:
            raise ValueError(f"{manifest} has no {split} images (data sets: {datasets or 'all'})")
        limit = config.data.max_train_images if split == "train" else config.data.max_eval_images
        split_rows = random_subset(split_rows, limit, seed=config.seed)
        if split == "train":
            split_rows = patient_subset(split_rows, config.data.label_fraction, seed=config.seed)
        rows[split] = split_rows
    labels = {
        split: label_matrix(
            split_rows,
            blank=config.labels.blank,
            uncertain=config.labels.uncertain,
            blank_zero_datasets=config.labels.blank_zero_datasets,
            annotated=annotated,
        )
        for split, split_rows in rows.items()
    }
    return DownstreamData(manifest=manifest, rows=rows, labels=labels)


def random_subset(rows: list[ManifestRow], limit: int, *, seed: int) -> list[ManifestRow]:
    """A seeded random subset of ``limit`` images in manifest order (0: all)."""
    if limit == 0 or limit >= len(rows):
        return rows
    picked = np.random.default_rng(seed).choice(len(rows), limit, replace=False)
    return [rows[i] for i in sorted(picked)]


def patient_subset(rows: list[ManifestRow], fraction: float, *, seed: int) -> list[ManifestRow]:
    """Whole patients in a seeded random order until their images reach ``fraction`` of ``rows``.

    At least one patient is kept; the result keeps manifest order. Fraction 1: every row.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the label fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return rows
    per_patient = Counter((r.dataset, r.patient_id) for r in rows)
    patients = sorted(per_patient)
    target = max(1, round(fraction * len(rows)))
    chosen: set[tuple[str, str]] = set()
    images = 0
    for index in np.random.default_rng(seed).permutation(len(patients)):
        if images >= target:
            break
        chosen.add(patients[index])
        images += per_patient[patients[index]]
    return [r for r in rows if (r.dataset, r.patient_id) in chosen]


def data_summary(data: DownstreamData, config: DownstreamConfig) -> dict[str, Any]:
    """What the classifier was trained and evaluated on (goes into the checkpoint's metadata)."""
    splits = {}
    for split, rows in data.rows.items():
        splits[split] = {
            "images": len(rows),
            "patients": len({(r.dataset, r.patient_id) for r in rows}),
            "datasets": dict(sorted(Counter(r.dataset for r in rows).items())),
            "labels": label_counts(data.labels[split]),
            "label_values": raw_value_counts(rows),
            "undecodable_images_dropped": len(data.dropped.get(split, [])),
        }
    datasets = sorted({r.dataset for rows in data.rows.values() for r in rows})
    return {
        "summary": f"{splits['train']['images']} training images of {', '.join(datasets)} "
        f"(valid {splits['valid']['images']}, test {splits['test']['images']}; patient-level splits)",
        "manifest": str(data.manifest.resolve()),
        "manifest_sha256": hashlib.sha256(data.manifest.read_bytes()).hexdigest(),
        "datasets": datasets,
        "label_policy": policy_summary(
            config.labels.blank, config.labels.uncertain, config.labels.blank_zero_datasets
        ),
        "label_fraction": config.data.label_fraction,
        "subsets": {
            "max_train_images": config.data.max_train_images,
            "max_eval_images": config.data.max_eval_images,
            "seed": config.seed,
        },
        "splits": splits,
    }


def pretraining_overlap(encoder: CheckpointMetadata | None, data: DownstreamData) -> dict[str, Any]:
    """How many valid/test images belong to patients the encoder was pretrained on."""
    info = {} if encoder is None else encoder.training_data
    path = Path(str(info.get("manifest", "")))
    if not info.get("manifest") or not path.is_file():
        return {"checked": False, "reason": "the encoder's pretraining manifest is not available here"}
    pretrain_splits = set(info.get("splits", {"train": 0}))
    seen = {(r.dataset, r.patient_id) for r in read_manifest(path) if r.split in pretrain_splits}
    result: dict[str, Any] = {
        "checked": True,
        "pretraining_manifest": str(path),
        "pretraining_splits": sorted(pretrain_splits),
    }
    for split in ("valid", "test"):
        overlap = sum((r.dataset, r.patient_id) in seen for r in data.rows[split])
        result[f"{split}_images_of_pretraining_patients"] = overlap
        if overlap:
            log.warning("%d %s images belong to patients the encoder was pretrained on", overlap, split)
    return result
