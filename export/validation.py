"""A labelled validation set for measuring what a variant costs in accuracy.

The validation manifest is a CSV with a ``path`` column (or ``Path``, as CheXpert's
files have; relative paths are relative to the CSV's folder) and one column per label,
named as in ``cxrmsn.labels.LABELS``. Label values: 1 positive, 0 negative; blank
(unknown) and -1 (uncertain) are masked out. Other columns are ignored. Images are
decoded with ``cxrmsn.imaging.decode`` and preprocessed with ``cxrmsn.preprocess``, the
same path serving takes.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.labels import LABELS
from cxrmsn.preprocess import DEFAULT_PREPROCESS, PreprocessConfig

PATH_COLUMNS = ("path", "Path")
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "": math.nan, "-1": math.nan, "-1.0": math.nan}


@dataclass(frozen=True)
class EvaluationSet:
    images: np.ndarray  # float32 [N, 3, S, S], preprocessed
    labels: np.ndarray  # float32 [N, len(LABELS)]: 1, 0, or NaN for unknown
    source: str


def read_validation_manifest(
    path: str | os.PathLike[str], config: PreprocessConfig = DEFAULT_PREPROCESS
) -> EvaluationSet:
    """Decode and preprocess every image the CSV lists; ValueError on a malformed file."""
    from cxrmsn.errors import DecodeError
    from cxrmsn.imaging import decode
    from cxrmsn.preprocess import preprocess

    csv_path = Path(path)
    rows = _read_rows(csv_path)
    images, labels = [], []
    for number, (image_path, row_labels) in enumerate(rows, start=2):
        try:
            decoded = decode(image_path.read_bytes(), min_size=config.decode_min_side())  # as serving
        except (OSError, DecodeError) as exc:
            raise ValueError(f"{csv_path} line {number}: cannot read image {image_path}: {exc}") from None
        images.append(preprocess(decoded.pixels, config, extent=decoded.extent))
        labels.append(row_labels)
    return EvaluationSet(
        images=np.stack(images).astype(np.float32, copy=False),
        labels=np.asarray(labels, dtype=np.float32),
        source=f"{csv_path.name} ({len(images)} images)",
    )


def macro_auroc(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """AUROC per label over known values, and their mean over labels with both classes."""
    from sklearn.metrics import roc_auc_score

    if probabilities.shape != labels.shape or probabilities.shape[1] != len(LABELS):
        raise ValueError(f"need [N, {len(LABELS)}] arrays, got {probabilities.shape} and {labels.shape}")
    per_label: dict[str, float] = {}
    skipped: list[str] = []
    for index, name in enumerate(LABELS):
        known = ~np.isnan(labels[:, index])
        truth = labels[known, index]
        if truth.size == 0 or truth.min() == truth.max():
            skipped.append(name)
            continue
        per_label[name] = float(roc_auc_score(truth, probabilities[known, index]))
    macro = float(np.mean(list(per_label.values()))) if per_label else None
    return {"macro_auroc": macro, "per_label": per_label, "skipped_labels": skipped}


NumberedRows = list[tuple[int, dict[str, str | None]]]  # (line number, row)


def _csv_rows(csv_path: Path, kind: str) -> tuple[list[str], str | None, NumberedRows]:
    """A manifest CSV's columns, its path column (None: none) and its rows with line numbers."""
    if not csv_path.is_file():
        raise ValueError(f"{kind} {csv_path} does not exist")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(enumerate(reader, start=2))
    return columns, next((name for name in PATH_COLUMNS if name in columns), None), rows


def _read_rows(csv_path: Path) -> list[tuple[Path, list[float]]]:
    columns, path_column, numbered = _csv_rows(csv_path, "validation manifest")
    missing = [label for label in LABELS if label not in columns]
    if path_column is None or missing:
        raise ValueError(
            f"{csv_path} needs a 'path' column and one column per label; "
            f"missing {([] if path_column else ['path']) + missing}"
        )
    rows = [
        (
            _resolve(csv_path, row[path_column], number),
            [_label(row, label, f"{csv_path} line {number}") for label in LABELS],
        )
        for number, row in numbered
    ]
    if not rows:
        raise ValueError(f"{csv_path} lists no images")
    return rows


def _resolve(csv_path: Path, value: str | None, number: int) -> Path:
    if not value:
        raise ValueError(f"{csv_path} line {number}: empty path")
    image_path = Path(value)
    return image_path if image_path.is_absolute() else csv_path.parent / image_path


def _label(row: dict[str, str | None], label: str, where: str) -> float:
    raw = (row.get(label) or "").strip()
    if raw not in _VALUES:
        raise ValueError(f"{where}: {label} is {raw!r}; expected 1, 0, -1 or blank")
    return _VALUES[raw]


@dataclass(frozen=True)
class ImageSet:
    """Unlabelled preprocessed images (the guard's fit set) and their ``view`` column, if any."""

    images: np.ndarray  # float32 [N, 3, S, S]
    views: list[str]
    source: str


def read_image_manifest(
    path: str | os.PathLike[str], config: PreprocessConfig = DEFAULT_PREPROCESS, *, split: str = "train"
) -> ImageSet:
    """The images a CSV lists (a ``path`` column, relative to the CSV's folder), decoded and
    preprocessed as serving does. With a ``split`` column (a run's data manifest, as
    ``training.data.manifest`` writes it) only the rows of ``split``; a ``view`` column is kept."""
    from cxrmsn.errors import DecodeError
    from cxrmsn.imaging import decode
    from cxrmsn.preprocess import preprocess

    csv_path = Path(path)
    columns, path_column, numbered = _csv_rows(csv_path, "image manifest")
    if path_column is None:
        raise ValueError(f"{csv_path} needs a 'path' column")
    rows = [
        (number, row)
        for number, row in numbered
        if "split" not in columns or (row.get("split") or "").strip() == split
    ]
    if not rows:
        raise ValueError(f"{csv_path} lists no images" + (f" of split {split!r}" if split else ""))
    images, views = [], []
    for number, row in rows:
        image_path = _resolve(csv_path, row[path_column], number)
        try:
            decoded = decode(image_path.read_bytes(), min_size=config.decode_min_side())
        except (OSError, DecodeError) as exc:
            raise ValueError(f"{csv_path} line {number}: cannot read image {image_path}: {exc}") from None
        images.append(preprocess(decoded.pixels, config, extent=decoded.extent))
        views.append((row.get("view") or "").strip())
    where = f"split {split}" if "split" in columns else "every row"
    return ImageSet(
        images=np.stack(images).astype(np.float32, copy=False),
        views=views,
        source=f"{csv_path.name} ({where}, {len(images)} images)",
    )
