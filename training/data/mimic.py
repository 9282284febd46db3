"""Manifest rows for MIMIC-CXR-JPG 2.x joined to MIMIC-IV (REFERENCE section 2).

From MIMIC-CXR-JPG (``cxr_root``): ``mimic-cxr-2.0.0-metadata.csv[.gz]`` (one row per
image), ``-chexpert.csv[.gz]`` (labels per study), ``-split.csv[.gz]`` (the official split,
by patient) and the images at ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``.

``split_file`` replaces the official split by another file of the same columns (dicom_id,
split with values train / validate / test, ...): the paper used MedFuse's MIMIC-CXR-EHR split
``mimic-cxr-ehr-split.csv`` (Hayat et al.: the official file with its patients reassigned to
match MIMIC-IV's EHR splits). Every image of the metadata must be in the file.
From MIMIC-IV (``mimic_iv_root``): ``hosp/patients.csv[.gz]``, ``hosp/admissions.csv[.gz]``
and ``icu/icustays.csv[.gz]``.

Both databases shift each patient's dates by the same amount, so the study's
StudyDate/StudyTime can be compared with admission and ICU times directly:

- age at the study = study year - (anchor_year - anchor_age)
- icu = 1 if the study time lies inside one of the patient's ICU stays, else 0
- mortality = hospital_expire_flag of the admission whose admit..discharge interval
  contains the study time; blank when no admission contains it (an outpatient or
  emergency study: in-hospital mortality is undefined there). Pretraining's
  ``ehr.mortality_outside_admission`` then makes it 0 (the paper's extraction, default) or
  imputes it; icu is still recorded, which is how such a study is told from a patient absent
  from MIMIC-IV
- sex from ``gender``; view from ViewPosition; position from
  PatientOrientationCodeSequence_CodeMeaning (Erect / Recumbent)

Patients absent from MIMIC-IV get blank age, sex, icu and mortality.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cxrmsn.labels import LABELS, NUM_LABELS
from training.data.manifest import ManifestRow, normalise_position, normalise_sex, normalise_view, parse_label
from training.data.tables import find_table, read_table

PREFIX = "mimic-cxr-2.0.0-"
METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "ViewPosition",
    "StudyDate",
    "StudyTime",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_NAMES = {"train": "train", "validate": "valid", "test": "test"}


@dataclass(frozen=True)
class Patient:
    gender: str
    anchor_age: int
    anchor_year: int

    def age_in(self, year: int) -> int:
        return year - (self.anchor_year - self.anchor_age)


@dataclass
class Intervals:
    """Sorted, possibly overlapping [start, end] intervals with a value each."""

    starts: list[datetime]
    ends: list[datetime]
    values: list[int]

    def value_at(self, moment: datetime) -> int | None:
        """The value of the latest-starting interval containing ``moment``, else None."""
        index = bisect.bisect_right(self.starts, moment)
        for i in range(index - 1, -1, -1):
            if self.ends[i] >= moment:
                return self.values[i]
        return None


def build_mimic(cxr_root: Path, mimic_iv_root: Path, *, split_file: Path | None = None) -> list[ManifestRow]:
    patients = load_patients(find_table(mimic_iv_root / "hosp", "patients.csv"))
    admissions = load_intervals(
        find_table(mimic_iv_root / "hosp", "admissions.csv"), "admittime", "dischtime", "hospital_expire_flag"
    )
    icu_stays = load_intervals(find_table(mimic_iv_root / "icu", "icustays.csv"), "intime", "outtime", None)
    labels = load_study_labels(find_table(cxr_root, f"{PREFIX}chexpert.csv"))
    splits = load_splits(find_table(cxr_root, f"{PREFIX}split.csv") if split_file is None else split_file)
    rows = []
    for meta in read_table(find_table(cxr_root, f"{PREFIX}metadata.csv"), required=METADATA_COLUMNS):
        if meta["dicom_id"] not in splits:
            raise ValueError(f"image {meta['dicom_id']} of the metadata is not in the split file")
        subject = meta["subject_id"]
        moment = study_datetime(meta["StudyDate"], meta["StudyTime"])
        patient = patients.get(subject)
        rows.append(
            ManifestRow(
                path=str(image_path(cxr_root, subject, meta["study_id"], meta["dicom_id"])),
                patient_id=subject,
                split=splits[meta["dicom_id"]],
                dataset="mimic",
                age=None if patient is None else float(patient.age_in(moment.year)),
                sex="" if patient is None else normalise_sex(patient.gender),
                view=normalise_view(meta["ViewPosition"]),
                position=normalise_position(meta["PatientOrientationCodeSequence_CodeMeaning"]),
                icu=_icu(subject, moment, patient, icu_stays),
                mortality=admissions[subject].value_at(moment) if subject in admissions else None,
                labels=labels.get((subject, meta["study_id"]), (None,) * NUM_LABELS),
            )
        )
    return rows


def load_splits(path: Path) -> dict[str, str]:
    """dicom_id -> manifest split (train, valid, test) from a MIMIC-CXR-format split file."""
    splits = {}
    for values in read_table(path, required=("dicom_id", "split")):
        name = values["split"].strip()
        if name not in SPLIT_NAMES:
            raise ValueError(f"{path}: split must be one of {sorted(SPLIT_NAMES)}, got {name!r}")
        splits[values["dicom_id"].strip()] = SPLIT_NAMES[name]
    return splits


def image_path(cxr_root: Path, subject: str, study: str, dicom_id: str) -> Path:
    return (
        cxr_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
    ).resolve()


def study_datetime(date: str, time: str) -> datetime:
    """StudyDate YYYYMMDD and StudyTime HHMMSS[.ffffff], leading zeros possibly dropped."""
    whole, _, fraction = time.strip().partition(".")
    clock = whole.zfill(6) if whole else "000000"
    micro = (fraction + "000000")[:6]
    return datetime.strptime(f"{date.strip()}{clock}{micro}", "%Y%m%d%H%M%S%f")


def load_patients(path: Path) -> dict[str, Patient]:
    return {
        v["subject_id"]: Patient(v["gender"], int(v["anchor_age"]), int(v["anchor_year"]))
        for v in read_table(path, required=("subject_id", "gender", "anchor_age", "anchor_year"))
    }


def load_intervals(path: Path, start: str, end: str, value: str | None) -> dict[str, Intervals]:
    """Per subject, intervals sorted by start; ``value`` names a 0/1 column (None: always 1).

    Intervals cover whole days (from the start of the first day to the end of the last), so
    that a study is joined by its date, as the paper does: an emergency-department X-ray taken
    hours before admission still belongs to that admission.
    """
    required = ("subject_id", start, end) + ((value,) if value else ())
    found: dict[str, list[tuple[datetime, datetime, int]]] = defaultdict(list)
    for v in read_table(path, required=required):
        if not v[start] or not v[end]:
            continue
        found[v["subject_id"]].append(
            (_day_start(_parse_time(v[start])), _day_end(_parse_time(v[end])), int(v[value]) if value else 1)
        )
    result = {}
    for subject, items in found.items():
        items.sort()
        result[subject] = Intervals([i[0] for i in items], [i[1] for i in items], [i[2] for i in items])
    return result


def load_study_labels(path: Path) -> dict[tuple[str, str], tuple[float | None, ...]]:
    return {
        (v["subject_id"], v["study_id"]): tuple(parse_label(v[name]) for name in LABELS)
        for v in read_table(path, required=("subject_id", "study_id", *LABELS))
    }


def _day_start(moment: datetime) -> datetime:
    return datetime.combine(moment.date(), datetime.min.time())


def _day_end(moment: datetime) -> datetime:
    return datetime.combine(moment.date(), datetime.max.time())


def _icu(subject: str, moment: datetime, patient: Patient | None, stays: dict[str, Intervals]) -> int | None:
    if patient is None:
        return None
    return 1 if subject in stays and stays[subject].value_at(moment) is not None else 0


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())
