"""Manifest rows for CheXpert-v1.0 (or -small) from its ``train.csv`` and ``valid.csv``.

``Path`` values start with the data set's folder name (``CheXpert-v1.0-small/train/...``)
and are resolved against the root's parent, or against the root itself. The patient is
the ``patientNNNNN`` part of the path. ``train.csv`` patients are split into train and
valid by patient; ``valid.csv`` (the radiologist-labelled set) becomes ``test``. Age 0 means
unknown in CheXpert.
"""

from __future__ import annotations

from pathlib import Path

from cxrmsn.labels import LABELS
from training.data.manifest import ManifestRow, normalise_sex, normalise_view, parse_age, parse_label
from training.data.splits import split_patients
from training.data.tables import read_table

CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABELS)


def build_chexpert(root: Path, *, valid_fraction: float = 0.1, seed: int = 0) -> list[ManifestRow]:
    train = list(read_table(root / "train.csv", required=CHEXPERT_COLUMNS))
    test = list(read_table(root / "valid.csv", required=CHEXPERT_COLUMNS))
    splits = split_patients(
        (patient_id(v["Path"]) for v in train),
        fractions={"train": 1 - valid_fraction, "valid": valid_fraction},
        seed=seed,
    )
    rows = [_row(root, v, splits[patient_id(v["Path"])]) for v in train]
    return rows + [_row(root, v, "test") for v in test]


def patient_id(path: str) -> str:
    for part in Path(path).parts:
        if part.startswith("patient"):
            return part
    raise ValueError(f"no patientNNNNN folder in the CheXpert path {path!r}")


def chexpert_view(frontal_lateral: str, ap_pa: str) -> str:
    if frontal_lateral.strip().lower() == "lateral":
        return normalise_view(ap_pa) if normalise_view(ap_pa) in ("LL", "LATERAL") else "LATERAL"
    return normalise_view(ap_pa)


def _row(root: Path, values: dict[str, str], split: str) -> ManifestRow:
    return ManifestRow(
        path=str(_resolve(root, values["Path"])),
        patient_id=patient_id(values["Path"]),
        split=split,
        dataset="chexpert",
        age=parse_age(values["Age"]),
        sex=normalise_sex(values["Sex"]),
        view=chexpert_view(values["Frontal/Lateral"], values["AP/PA"]),
        labels=tuple(parse_label(values[name]) for name in LABELS),
    )


def _resolve(root: Path, path: str) -> Path:
    relative = Path(path)
    under_parent = root.parent / relative
    if under_parent.is_file():
        return under_parent.resolve()
    return (root / Path(*relative.parts[1:])).resolve()
