"""Manifest rows for NIH ChestX-ray14 from its ``Data_Entry_2017.csv``.

Images are found by name anywhere under the root (the release spreads them over
``images_001/images`` ... ``images_012/images``). When ``train_val_list.txt`` and
``test_list.txt`` are present, the official (patient-disjoint) test split is kept and a
validation split is carved out of train_val by patient; otherwise all patients are split
70/15/15. NIH has 14 findings of its own: nine map onto CheXpert labels (1 when present,
0 when absent); Enlarged Cardiomediastinum, Fracture, Lung Opacity, Pleural Other and
Support Devices stay blank (not annotated, which is not the same as absent).

NIH's own 14 findings (``NIH_FINDINGS``, the labels the paper reports on NIH) are not in the
manifest: ``read_nih_findings`` reads them per image name from ``Data_Entry_2017.csv`` (or
``../shared/data/nih1000/labels.csv``) for ``cxr-msn evaluate --nih-findings``, which scores
each with the classifier's matching CheXpert head (``NIH_FINDING_HEADS``). Infiltration,
Emphysema, Fibrosis, Pleural_Thickening and Hernia have no such head.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrmsn.labels import LABELS
from training.data.manifest import ManifestRow, normalise_sex, normalise_view, parse_age
from training.data.splits import split_patients
from training.data.tables import read_table

ENTRY_FILES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
ENTRY_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)

#: NIH finding -> CheXpert label.
NIH_TO_CHEXPERT = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "No Finding": "No Finding",
}
ANNOTATED_LABELS = frozenset(NIH_TO_CHEXPERT.values())

#: NIH ChestX-ray14's 14 findings (Wang et al. 2017), spelt as in Data_Entry_2017.csv.
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
#: NIH finding -> the CheXpert head that scores it (None: no CheXpert label to score it with).
NIH_FINDING_HEADS: dict[str, str | None] = {finding: NIH_TO_CHEXPERT.get(finding) for finding in NIH_FINDINGS}


def build_nih(root: Path, *, valid_fraction: float = 0.1, seed: int = 0) -> list[ManifestRow]:
    entries = list(read_table(_entry_file(root), required=ENTRY_COLUMNS))
    images = _index_images(root)
    missing = [e["Image Index"] for e in entries if e["Image Index"] not in images]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of the NIH table are not under {root}: {missing[:3]}")
    splits = _patient_splits(root, entries, valid_fraction=valid_fraction, seed=seed)
    return [
        _row(entry, images[entry["Image Index"]], splits[entry["Patient ID"].strip()]) for entry in entries
    ]


def nih_labels(findings: str) -> tuple[float | None, ...]:
    present = {NIH_TO_CHEXPERT[f] for f in findings.split("|") if f in NIH_TO_CHEXPERT}
    return tuple((1.0 if name in present else 0.0) if name in ANNOTATED_LABELS else None for name in LABELS)


def read_nih_findings(path: Path) -> dict[str, frozenset[str]]:
    """Image name -> its NIH findings (empty for No Finding), from ``Data_Entry_2017.csv``
    (``Image Index``, ``Finding Labels``) or a table with ``image`` and ``nih_findings``
    (``../shared/data/nih1000/labels.csv``). Unknown finding names are refused."""
    table = list(read_table(path))
    columns = set(table[0]) if table else set()
    if {"Image Index", "Finding Labels"} <= columns:
        name, findings = "Image Index", "Finding Labels"
    elif {"image", "nih_findings"} <= columns:
        name, findings = "image", "nih_findings"
    else:
        raise ValueError(f"{path} has neither Image Index + Finding Labels nor image + nih_findings columns")
    result = {}
    for values in table:
        found = {f.strip() for f in values[findings].split("|") if f.strip()} - {"No Finding"}
        unknown = found - set(NIH_FINDINGS)
        if unknown:
            raise ValueError(f"{path}: unknown NIH findings {sorted(unknown)} for {values[name]}")
        result[values[name].strip()] = frozenset(found)
    return result


def _row(entry: dict[str, str], path: Path, split: str) -> ManifestRow:
    return ManifestRow(
        path=str(path),
        patient_id=entry["Patient ID"].strip(),
        split=split,
        dataset="nih",
        age=parse_age(entry["Patient Age"]),
        sex=normalise_sex(entry["Patient Gender"]),
        view=normalise_view(entry["View Position"]),
        labels=nih_labels(entry["Finding Labels"]),
    )


def _entry_file(root: Path) -> Path:
    for name in ENTRY_FILES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"none of {ENTRY_FILES} is in {root}")


def _index_images(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(".png"):
                found.setdefault(name, (Path(folder) / name).resolve())
    return found


def _patient_splits(
    root: Path, entries: list[dict[str, str]], *, valid_fraction: float, seed: int
) -> dict[str, str]:
    patient_of = {e["Image Index"]: e["Patient ID"].strip() for e in entries}
    test_list = root / "test_list.txt"
    if not test_list.is_file():
        return split_patients(patient_of.values(), seed=seed)
    test_patients = {patient_of[name] for name in test_list.read_text().split() if name in patient_of}
    rest = set(patient_of.values()) - test_patients
    splits = split_patients(rest, fractions={"train": 1 - valid_fraction, "valid": valid_fraction}, seed=seed)
    splits.update(dict.fromkeys(test_patients, "test"))
    return splits
