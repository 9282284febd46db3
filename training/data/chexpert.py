"""Manifest rows for CheXpert-v1.0 (or -small) from its ``train.csv`` and a labelled test file.

``Path`` values start with the data set's folder name (``CheXpert-v1.0-small/train/...``)
and are resolved against the root's parent, or against the root itself. The patient is
the ``patientNNNNN`` part of the path. ``train.csv`` patients are split into train and
valid by patient. The ``test`` split is one of CheXpert's two radiologist-labelled sets:

- ``valid.csv`` of the root (default): the 234-image validation set (200 patients) of the
  original release, with the columns of ``train.csv``;
- ``test_csv``, e.g. ``test_labels.csv``: the 668-image test set (500 patients) released
  later (with CheXlocalize): ``Path`` (``test/patientNNNNN/studyN/viewN_frontal.jpg``,
  relative to the file's folder) and the 14 labels (0 / 1), without Sex, Age,
  Frontal/Lateral or AP/PA; the view is then ``LATERAL`` for ``*_lateral`` files and unknown
  otherwise. A file in ``valid.csv``'s layout works too.

Age 0 means unknown in CheXpert.
"""

from __future__ import annotations

from pathlib import Path

from cxrmsn.labels import LABELS
from training.data.manifest import ManifestRow, normalise_sex, normalise_view, parse_age, parse_label
from training.data.splits import split_patients
from training.data.tables import read_table

CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABELS)


def build_chexpert(
    root: Path, *, valid_fraction: float = 0.1, seed: int = 0, test_csv: Path | None = None
) -> list[ManifestRow]:
    train = list(read_table(root / "train.csv", required=CHEXPERT_COLUMNS))
    test_path = root / "valid.csv" if test_csv is None else test_csv
    test = list(read_table(test_path, required=("Path", *LABELS)))
    splits = split_patients(
        (patient_id(v["Path"]) for v in train),
        fractions={"train": 1 - valid_fraction, "valid": valid_fraction},
        seed=seed,
    )
    rows = [_row(root, v, splits[patient_id(v["Path"])]) for v in train]
    return rows + [_row(test_path.parent, v, "test") for v in test]


def patient_id(path: str) -> str:
    for part in Path(path).parts:
        if part.startswith("patient"):
            return part
    raise ValueError(f"no patientNNNNN folder in the CheXpert path {path!r}")


def chexpert_view(frontal_lateral: str, ap_pa: str) -> str:
    if frontal_lateral.strip().lower() == "lateral":
        return normalise_view(ap_pa) if normalise_view(ap_pa) in ("LL", "LATERAL") else "LATERAL"
    return normalise_view(ap_pa)


def _row(folder: Path, values: dict[str, str], split: str) -> ManifestRow:
    frontal_lateral = values.get("Frontal/Lateral", "")
    if not frontal_lateral and Path(values["Path"]).stem.lower().endswith("_lateral"):
        frontal_lateral = "Lateral"  # test_labels.csv: the view is in the file name only
    return ManifestRow(
        path=str(_resolve(folder, values["Path"])),
        patient_id=patient_id(values["Path"]),
        split=split,
        dataset="chexpert",
        age=parse_age(values.get("Age", "")),
        sex=normalise_sex(values.get("Sex", "")),
        view=chexpert_view(frontal_lateral, values.get("AP/PA", "")),
        labels=tuple(parse_label(values[name]) for name in LABELS),
    )


def _resolve(folder: Path, path: str) -> Path:
    """``Path`` of a table in ``folder``: ``CheXpert-v1.0-small/train/...`` (against the folder's
    parent, or the folder itself) or ``test/patient.../view1_frontal.jpg`` (against the folder)."""
    relative = Path(path)
    if relative.parts[0].lower().startswith("chexpert"):
        under_parent = folder.parent / relative
        if under_parent.is_file():
            return under_parent.resolve()
        return (folder / Path(*relative.parts[1:])).resolve()
    return (folder / relative).resolve()
