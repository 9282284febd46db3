"""The one manifest format every data set is turned into: a CSV, one row per image.

Columns, in this order:

- ``path``: the image file, relative to the manifest's folder or absolute
- ``patient_id``: the source's patient identifier (unique within ``dataset``)
- ``split``: ``train``, ``valid`` or ``test``; always assigned by patient
- ``dataset``: where the row comes from (``mimic``, ``chexpert``, ``nih``, ``nih1000``, ``covid``)
- EHR columns, blank when unknown: ``age`` (years at the study), ``sex`` (``M``/``F``),
  ``view`` (``AP``/``PA``/``LATERAL``/``LL``), ``position`` (``erect``/``recumbent``),
  ``icu`` and ``mortality`` (``0``/``1``)
- the 14 labels of ``cxrmsn.labels.LABELS``: ``1``, ``0``, ``-1`` (uncertain) or blank (not
  annotated by the source; never the same as ``0``)

Reading and writing both check every value and that no patient is in two splits.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxrmsn.fileio import atomic_write_text
from cxrmsn.labels import LABELS, NUM_LABELS

SPLITS = ("train", "valid", "test")
SEXES = ("M", "F")
VIEWS = ("AP", "PA", "LATERAL", "LL")
POSITIONS = ("erect", "recumbent")
EHR_COLUMNS = ("age", "sex", "view", "position", "icu", "mortality")
MANIFEST_COLUMNS = ("path", "patient_id", "split", "dataset", *EHR_COLUMNS, *LABELS)

# Spellings seen in the sources, mapped onto VIEWS (anything else is unknown).
_VIEW_SPELLINGS = {
    "AP": "AP",
    "AP SUPINE": "AP",
    "PA": "PA",
    "LATERAL": "LATERAL",
    "LAT": "LATERAL",
    "L": "LATERAL",
    "RL": "LATERAL",
    "LL": "LL",
}


@dataclass(frozen=True)
class ManifestRow:
    path: str
    patient_id: str
    split: str
    dataset: str
    age: float | None = None
    sex: str = ""
    view: str = ""
    position: str = ""
    icu: int | None = None
    mortality: int | None = None
    labels: tuple[float | None, ...] = (None,) * NUM_LABELS

    def __post_init__(self) -> None:
        if not self.path or not self.patient_id or not self.dataset:
            raise ValueError(f"path, patient_id and dataset must be non-empty, got {self}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if (
            self.sex not in (*SEXES, "")
            or self.view not in (*VIEWS, "")
            or self.position not in (*POSITIONS, "")
        ):
            raise ValueError(
                "sex, view or position not in the manifest vocabulary: "
                f"{self.sex!r}, {self.view!r}, {self.position!r}"
            )
        if self.icu not in (0, 1, None) or self.mortality not in (0, 1, None):
            raise ValueError(
                f"icu and mortality must be 0, 1 or unknown, got {self.icu!r}, {self.mortality!r}"
            )
        if self.age is not None and not (math.isfinite(self.age) and self.age >= 0):
            raise ValueError(f"age must be a finite number >= 0 or unknown, got {self.age!r}")
        if len(self.labels) != NUM_LABELS or any(v not in (1.0, 0.0, -1.0, None) for v in self.labels):
            raise ValueError(f"labels must be {NUM_LABELS} values in 1, 0, -1 or unknown, got {self.labels}")


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestRow]:
    """Rows of a manifest CSV, checked; paths stay as written (see ``resolve_image_path``)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise ValueError(f"{path}: columns must be {list(MANIFEST_COLUMNS)}, got {reader.fieldnames}")
        rows = []
        for line, values in enumerate(reader, start=2):
            try:
                rows.append(_row_from_strings(values))
            except ValueError as exc:
                raise ValueError(f"{path}, line {line}: {exc}") from None
    check_patient_disjoint(rows)
    return rows


def write_manifest(path: str | os.PathLike[str], rows: Sequence[ManifestRow]) -> None:
    """Write ``rows`` atomically; absolute paths under the manifest's folder become relative."""
    check_patient_disjoint(rows)
    folder = Path(path).resolve().parent
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in rows:
        writer.writerow(_row_to_strings(row, folder))
    atomic_write_text(path, buffer.getvalue())


def resolve_image_path(manifest_path: str | os.PathLike[str], row: ManifestRow) -> Path:
    image = Path(row.path)
    return image if image.is_absolute() else Path(manifest_path).resolve().parent / image


def check_patient_disjoint(rows: Iterable[ManifestRow]) -> None:
    """Raise ValueError if any (dataset, patient) has images in more than one split."""
    splits: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        splits[(row.dataset, row.patient_id)].add(row.split)
    crossing = sorted(f"{d}/{p}: {sorted(s)}" for (d, p), s in splits.items() if len(s) > 1)
    if crossing:
        raise ValueError(
            f"{len(crossing)} patients are in more than one split (splits must be by patient): {crossing[:5]}"
        )


def normalise_view(text: str) -> str:
    return _VIEW_SPELLINGS.get(text.strip().upper(), "")


def normalise_sex(text: str) -> str:
    value = text.strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(value, "")


def normalise_position(text: str) -> str:
    value = text.strip().lower()
    return value if value in POSITIONS else ""


def parse_age(text: str, *, max_age: float = 120.0) -> float | None:
    """Years as a number; blank, unparseable, zero or implausible ages (> max_age) are unknown."""
    value = text.strip().upper().removesuffix("Y")
    try:
        age = float(value)
    except ValueError:
        return None
    return age if math.isfinite(age) and 0 < age <= max_age else None


def parse_binary(text: str) -> int | None:
    value = text.strip()
    if value == "":
        return None
    number = float(value)
    if number not in (0.0, 1.0):
        raise ValueError(f"expected 0, 1 or blank, got {text!r}")
    return int(number)


def parse_label(text: str) -> float | None:
    value = text.strip()
    if value == "":
        return None
    number = float(value)
    if number not in (1.0, 0.0, -1.0):
        raise ValueError(f"a label must be 1, 0, -1 or blank, got {text!r}")
    return number


def _row_from_strings(values: dict[str, str]) -> ManifestRow:
    return ManifestRow(
        path=values["path"],
        patient_id=values["patient_id"],
        split=values["split"],
        dataset=values["dataset"],
        age=float(values["age"]) if values["age"].strip() else None,
        sex=values["sex"],
        view=values["view"],
        position=values["position"],
        icu=parse_binary(values["icu"]),
        mortality=parse_binary(values["mortality"]),
        labels=tuple(parse_label(values[name]) for name in LABELS),
    )


def _row_to_strings(row: ManifestRow, folder: Path) -> list[str]:
    image = Path(row.path)
    if image.is_absolute() and image.is_relative_to(folder):
        image = image.relative_to(folder)
    return [
        image.as_posix(),
        row.patient_id,
        row.split,
        row.dataset,
        "" if row.age is None else f"{row.age:g}",
        row.sex,
        row.view,
        row.position,
        "" if row.icu is None else str(row.icu),
        "" if row.mortality is None else str(row.mortality),
        *("" if value is None else str(int(value)) for value in row.labels),
    ]
