"""Manifest builders on small generated files in each source's real schema, and on ../shared/data."""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from cxrmsn.labels import LABELS
from tests.helpers import SHARED_DATA, chest_like_picture, requires_shared_data, to_jpeg, to_png
from training.data.chexpert import build_chexpert
from training.data.manifest import ManifestRow, check_patient_disjoint
from training.data.mimic import build_mimic, study_datetime
from training.data.nih import build_nih
from training.data.shared import build_shared


def _write_csv(path: Path, header: list[str], rows: Sequence[Sequence[object]], *, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _label(rows: list[ManifestRow], name: str) -> list[float | None]:
    return [row.labels[LABELS.index(name)] for row in rows]


def _assert_patient_level(rows: list[ManifestRow]) -> None:
    check_patient_disjoint(rows)
    by_patient: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        by_patient.setdefault((row.dataset, row.patient_id), set()).add(row.split)
    assert all(len(splits) == 1 for splits in by_patient.values())


# -- NIH ChestX-ray14 -------------------------------------------------------------------------

NIH_HEADER = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", "",
]  # fmt: skip


def _nih_root(tmp_path: Path) -> Path:
    root = tmp_path / "nih"
    entries, test_images = [], []
    findings = [
        "Effusion|Infiltration",
        "No Finding",
        "Mass",
        "Nodule|Cardiomegaly",
        "Hernia",
        "Pneumothorax",
    ]
    for patient in range(1, 13):
        for follow_up in range(2):
            name = f"{patient:08d}_{follow_up:03d}.png"
            folder = root / f"images_{1 + patient % 2:03d}" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(to_png(chest_like_picture(32, 32, seed=patient)))
            age = "411" if patient == 5 else str(40 + patient)
            view = "AP" if follow_up else "PA"
            sex = "M" if patient % 2 else "F"
            entries.append(
                [
                    name,
                    findings[(patient - 1) % 6],
                    follow_up,
                    patient,
                    age,
                    sex,
                    view,
                    2500,
                    2048,
                    0.14,
                    0.14,
                    "",
                ]
            )
            if patient > 9:
                test_images.append(name)
    _write_csv(root / "Data_Entry_2017.csv", NIH_HEADER, entries)
    (root / "test_list.txt").write_text("\n".join(test_images) + "\n")
    (root / "train_val_list.txt").write_text(
        "\n".join(str(e[0]) for e in entries if e[0] not in test_images) + "\n"
    )
    return root


def test_nih_rows_labels_and_official_test_split(tmp_path: Path) -> None:
    rows = build_nih(_nih_root(tmp_path), valid_fraction=0.25, seed=0)
    assert len(rows) == 24 and all(Path(r.path).is_file() for r in rows)
    _assert_patient_level(rows)
    assert {r.patient_id for r in rows if r.split == "test"} == {"10", "11", "12"}
    assert Counter(r.split for r in rows if r.split != "test") == {"train": 14, "valid": 4}
    first = next(r for r in rows if r.path.endswith("00000001_000.png"))  # Effusion|Infiltration
    assert first.labels[LABELS.index("Pleural Effusion")] == 1.0
    assert first.labels[LABELS.index("Pneumonia")] == 0.0 and first.labels[LABELS.index("No Finding")] == 0.0
    assert first.labels[LABELS.index("Fracture")] is None  # NIH does not annotate it
    assert (first.age, first.sex, first.view, first.position, first.icu) == (41.0, "M", "PA", "", None)
    lesions = [r for r in rows if r.patient_id in ("3", "4")]  # Mass, Nodule|Cardiomegaly
    assert set(_label(lesions, "Lung Lesion")) == {1.0}
    assert all(r.age is None for r in rows if r.patient_id == "5")  # 411 is not an age


def test_nih_without_official_lists_splits_all_patients(tmp_path: Path) -> None:
    root = _nih_root(tmp_path)
    (root / "test_list.txt").unlink()
    rows = build_nih(root, seed=1)
    _assert_patient_level(rows)
    assert set(r.split for r in rows) == {"train", "valid", "test"}


def test_nih_reports_missing_images(tmp_path: Path) -> None:
    root = _nih_root(tmp_path)
    next(root.rglob("00000003_001.png")).unlink()
    with pytest.raises(FileNotFoundError, match=r"00000003_001\.png"):
        build_nih(root)


# -- CheXpert ---------------------------------------------------------------------------------

CHEXPERT_LABEL_ORDER = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]  # fmt: skip


def _chexpert_root(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABEL_ORDER]
    tables: dict[str, list[list[object]]] = {"train": [], "valid": []}
    for split, first, count in (("train", 1, 10), ("valid", 64541, 2)):
        for patient in range(first, first + count):
            for view, (kind, ap_pa) in enumerate((("Frontal", "AP"), ("Lateral", ""))):
                relative = (
                    f"{root.name}/{split}/patient{patient:05d}/study1/view{view + 1}_{kind.lower()}.jpg"
                )
                (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / relative).write_bytes(to_jpeg(chest_like_picture(40, 32, seed=patient)))
                labels = [
                    "1.0" if n == "Edema" else "-1.0" if n == "Pneumonia" else ""
                    for n in CHEXPERT_LABEL_ORDER
                ]
                age = 0 if patient == 2 else 60 + patient % 20
                sex = "Unknown" if patient == 3 else "Female"
                tables[split].append([relative, sex, age, kind, ap_pa, *labels])
    for split, rows in tables.items():
        _write_csv(root / f"{split}.csv", header, rows)
    return root


def test_chexpert_rows_map_labels_by_name_and_split_by_patient(tmp_path: Path) -> None:
    rows = build_chexpert(_chexpert_root(tmp_path), valid_fraction=0.2, seed=0)
    assert len(rows) == 24 and all(Path(r.path).is_file() for r in rows)
    _assert_patient_level(rows)
    assert {r.patient_id for r in rows if r.split == "test"} == {"patient64541", "patient64542"}
    assert Counter(r.split for r in rows) == {"train": 16, "valid": 4, "test": 4}
    assert set(_label(rows, "Edema")) == {1.0} and set(_label(rows, "Pneumonia")) == {-1.0}
    assert set(_label(rows, "Atelectasis")) == {None}
    assert {r.view for r in rows} == {"AP", "LATERAL"}
    assert all(r.age is None for r in rows if r.patient_id == "patient00002")  # CheXpert's 0 = unknown
    assert all(r.sex == "" for r in rows if r.patient_id == "patient00003")


# -- MIMIC-CXR-JPG + MIMIC-IV -----------------------------------------------------------------

METADATA_HEADER = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip

# (dicom_id, subject, study, ViewPosition, StudyDate, StudyTime, orientation, split)
MIMIC_IMAGES = [
    ("a1", "10000032", "50000001", "AP", "21800506", "223000.000", "Erect", "train"),
    ("a2", "10000032", "50000001", "LATERAL", "21800506", "223000.000", "Erect", "train"),
    ("a3", "10000032", "50000002", "PA", "21820701", "81500.5", "", "train"),  # 08:15:00.5, zero dropped
    ("a4", "10000032", "50000005", "AP", "21820630", "070000", "", "train"),  # ED, 3 h before admission 2
    ("b1", "10000764", "50000003", "PA", "21321014", "120000", "Recumbent", "validate"),
    ("c1", "10001000", "50000004", "AP AXIAL", "21500101", "1000", "", "test"),
]


def _mimic_roots(tmp_path: Path) -> tuple[Path, Path]:
    cxr, iv = tmp_path / "mimic-cxr-jpg", tmp_path / "mimiciv"
    meta, split = [], []
    for dicom, subject, study, view, date, time, orientation, name in MIMIC_IMAGES:
        image = cxr / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(to_jpeg(chest_like_picture(48, 40)))
        meta.append([dicom, subject, study, "CHEST", view, 48, 40, date, time, "CHEST", "x", orientation])
        split.append([dicom, study, subject, name])
    _write_csv(cxr / "mimic-cxr-2.0.0-metadata.csv", METADATA_HEADER, meta, gz=True)
    _write_csv(
        cxr / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split, gz=True
    )
    labels = [
        [
            "10000032",
            "50000001",
            *("1.0" if n == "Atelectasis" else "-1.0" if n == "Edema" else "" for n in LABELS),
        ],
        ["10000032", "50000002", *("0.0" for _ in LABELS)],
        ["10000764", "50000003", *("1.0" if n == "No Finding" else "" for n in LABELS)],
    ]
    _write_csv(cxr / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *LABELS], labels, gz=True)
    _write_csv(
        iv / "hosp" / "patients.csv",
        ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
        [["10000032", "F", 52, 2180, "2014 - 2016", ""], ["10000764", "M", 86, 2132, "2014 - 2016", ""]],
        gz=True,
    )
    _write_csv(
        iv / "hosp" / "admissions.csv",
        [
            "subject_id",
            "hadm_id",
            "admittime",
            "dischtime",
            "deathtime",
            "admission_type",
            "hospital_expire_flag",
        ],
        [
            ["10000032", "1", "2180-05-06 19:17:00", "2180-05-07 17:15:00", "", "EW EMER.", 0],
            [
                "10000032",
                "2",
                "2182-06-30 10:00:00",
                "2182-07-10 12:00:00",
                "2182-07-10 12:00:00",
                "URGENT",
                1,
            ],
            ["10000764", "3", "2132-10-01 10:00:00", "2132-10-05 10:00:00", "", "ELECTIVE", 0],
        ],
        gz=True,
    )
    _write_csv(
        iv / "icu" / "icustays.csv",
        ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime", "los"],
        [
            ["10000032", "2", "30000001", "MICU", "MICU", "2182-07-01 06:00:00", "2182-07-03 06:00:00", 2.0],
            ["10000764", "3", "30000002", "SICU", "SICU", "2132-10-02 00:00:00", "2132-10-03 00:00:00", 1.0],
        ],
    )
    return cxr, iv


def test_mimic_joins_cxr_and_mimic_iv_with_shifted_dates(tmp_path: Path) -> None:
    rows = {Path(r.path).stem: r for r in build_mimic(*_mimic_roots(tmp_path))}
    assert set(rows) == {"a1", "a2", "a3", "a4", "b1", "c1"}
    assert all(Path(r.path).is_file() for r in rows.values())
    _assert_patient_level(list(rows.values()))
    a1, a2, a3, b1, c1 = (rows[k] for k in ("a1", "a2", "a3", "b1", "c1"))
    # age = study year - (anchor_year - anchor_age); study inside admission 1 (no ICU, survived)
    assert (a1.age, a1.sex, a1.view, a1.position, a1.icu, a1.mortality, a1.split) == (
        52.0, "F", "AP", "erect", 0, 0, "train",
    )  # fmt: skip
    assert a2.view == "LATERAL" and a2.labels == a1.labels
    assert a1.labels[LABELS.index("Atelectasis")] == 1.0 and a1.labels[LABELS.index("Edema")] == -1.0
    assert a1.labels[LABELS.index("Fracture")] is None
    # two years later, inside ICU stay and the admission that ended in death
    assert (a3.age, a3.icu, a3.mortality, a3.position) == (54.0, 1, 1, "")
    assert set(a3.labels) == {0.0}
    # joined by date: an emergency X-ray hours before admission 2 belongs to it (died: 1), no ICU yet
    assert (rows["a4"].mortality, rows["a4"].icu) == (1, 0)
    # outside every admission: mortality unknown, not in ICU
    assert (b1.age, b1.sex, b1.view, b1.position, b1.icu, b1.mortality, b1.split) == (
        86.0, "M", "PA", "recumbent", 0, None, "valid",
    )  # fmt: skip
    assert b1.labels[LABELS.index("No Finding")] == 1.0
    # not in MIMIC-IV at all: no age, sex, icu or mortality; AP AXIAL is no known view; no labels
    assert (c1.age, c1.sex, c1.view, c1.icu, c1.mortality, c1.split) == (None, "", "", None, None, "test")
    assert set(c1.labels) == {None}


def test_study_time_parsing() -> None:
    assert study_datetime("21820701", "81500.5").isoformat() == "2182-07-01T08:15:00.500000"
    assert study_datetime("21500101", "1000").isoformat() == "2150-01-01T00:10:00"
    assert study_datetime("21500101", "").isoformat() == "2150-01-01T00:00:00"


# -- ../shared/data ---------------------------------------------------------------------------


@requires_shared_data
def test_shared_data_manifest() -> None:
    rows = build_shared(SHARED_DATA, seed=0)
    _assert_patient_level(rows)
    counts = Counter((r.dataset, r.split) for r in rows)
    assert (counts["nih1000", "train"], counts["nih1000", "valid"], counts["nih1000", "test"]) == (
        617,
        111,
        98,
    )
    assert sum(v for (d, _), v in counts.items() if d == "covid") == 219
    assert all(counts["covid", s] > 0 for s in ("train", "valid", "test"))
    assert all(Path(r.path).is_file() for r in rows)
    covid = [r for r in rows if r.dataset == "covid"]
    assert Counter(r.view for r in covid) == {"PA": 124, "AP": 72, "LATERAL": 23}  # AP Supine -> AP
    assert Counter(r.position for r in covid) == {"erect": 171, "recumbent": 48}
    assert sum(r.icu is not None for r in covid) == 132 and sum(r.mortality is not None for r in covid) == 98
    assert all(r.position == "" and r.icu is None for r in rows if r.dataset == "nih1000")
