"""Manifest rows for the two labelled sets in ``../shared/data`` (see its README).

- ``nih1000/labels.csv``: NIH images at 64 px with age, sex, view and a patient-level split.
- ``covid/metadata.csv``: COVID-era images with age, sex, view, position, ICU and mortality;
  no split is given, so patients are split here (70/15/15, seeded).
"""

from __future__ import annotations

from pathlib import Path

from cxrmsn.labels import LABELS
from training.data.manifest import (
    ManifestRow,
    normalise_position,
    normalise_sex,
    normalise_view,
    parse_age,
    parse_binary,
    parse_label,
)
from training.data.splits import split_patients
from training.data.tables import read_table

_NIH1000_COLUMNS = ("image", "patient_id", "age", "sex", "view", "split", *LABELS)
_COVID_COLUMNS = ("image", "patient_id", "age", "sex", "view", "position", "icu", "mortality", *LABELS)


def build_shared(root: Path, *, seed: int = 0) -> list[ManifestRow]:
    """Both sets of ``root`` (the shared data folder) in one list."""
    return nih1000_rows(root / "nih1000") + covid_rows(root / "covid", seed=seed)


def nih1000_rows(folder: Path) -> list[ManifestRow]:
    return [
        ManifestRow(
            path=str((folder / "images" / values["image"]).resolve()),
            patient_id=values["patient_id"],
            split=values["split"],
            dataset="nih1000",
            age=parse_age(values["age"]),
            sex=normalise_sex(values["sex"]),
            view=normalise_view(values["view"]),
            labels=tuple(parse_label(values[name]) for name in LABELS),
        )
        for values in read_table(folder / "labels.csv", required=_NIH1000_COLUMNS)
    ]


def covid_rows(folder: Path, *, seed: int = 0) -> list[ManifestRow]:
    table = list(read_table(folder / "metadata.csv", required=_COVID_COLUMNS))
    splits = split_patients((values["patient_id"] for values in table), seed=seed)
    return [
        ManifestRow(
            path=str((folder / "images" / values["image"]).resolve()),
            patient_id=values["patient_id"],
            split=splits[values["patient_id"]],
            dataset="covid",
            age=parse_age(values["age"]),
            sex=normalise_sex(values["sex"]),
            view=normalise_view(values["view"]),
            position=normalise_position(values["position"]),
            icu=parse_binary(values["icu"]),
            mortality=parse_binary(values["mortality"]),
            labels=tuple(parse_label(values[name]) for name in LABELS),
        )
        for values in table
    ]
