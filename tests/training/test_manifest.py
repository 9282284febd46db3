"""The manifest format: round trip, validation, patient-level splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrmsn.labels import LABELS, NUM_LABELS
from training.data.manifest import (
    MANIFEST_COLUMNS,
    ManifestRow,
    check_patient_disjoint,
    normalise_view,
    parse_age,
    read_manifest,
    resolve_image_path,
    write_manifest,
)
from training.data.splits import split_patients


def _row(patient: str, split: str = "train", **kwargs: object) -> ManifestRow:
    return ManifestRow(path=f"/images/{patient}.png", patient_id=patient, split=split, dataset="x", **kwargs)  # type: ignore[arg-type]


def test_round_trip_keeps_every_value(tmp_path: Path) -> None:
    labels = (1.0, 0.0, -1.0, None) + (None,) * (NUM_LABELS - 4)
    rows = [
        ManifestRow(
            path=str(tmp_path / "img" / "a.png"),
            patient_id="p1",
            split="train",
            dataset="mimic",
            age=63.5,
            sex="F",
            view="LL",
            position="recumbent",
            icu=1,
            mortality=0,
            labels=labels,
        ),
        _row("p2", "test"),
    ]
    path = tmp_path / "manifest.csv"
    write_manifest(path, rows)
    assert path.read_text().splitlines()[0].split(",") == list(MANIFEST_COLUMNS)
    assert path.read_text().splitlines()[1].startswith("img/a.png,")  # relative to the manifest
    back = read_manifest(path)
    assert back[1] == rows[1]
    assert back[0].labels == labels and back[0].age == 63.5 and back[0].icu == 1
    assert resolve_image_path(path, back[0]) == tmp_path / "img" / "a.png"


def test_blank_labels_stay_unknown_not_negative(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    write_manifest(path, [_row("p1")])
    line = path.read_text().splitlines()[1]
    assert line.endswith("," * NUM_LABELS)
    assert read_manifest(path)[0].labels == (None,) * len(LABELS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split": "validation"},
        {"sex": "male"},
        {"view": "AP SUPINE"},
        {"icu": 2},
        {"age": -1.0},
        {"labels": (2.0,) * 14},
    ],
)
def test_invalid_values_are_rejected(kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {
        "path": "a.png",
        "patient_id": "p",
        "split": "train",
        "dataset": "x",
        **kwargs,
    }
    with pytest.raises(ValueError):
        ManifestRow(**values)  # type: ignore[arg-type]


def test_a_patient_in_two_splits_is_refused_on_write_and_read(tmp_path: Path) -> None:
    rows = [_row("p1", "train"), _row("p1", "test")]
    with pytest.raises(ValueError, match="more than one split"):
        write_manifest(tmp_path / "m.csv", rows)
    (tmp_path / "bad.csv").write_text(
        ",".join(MANIFEST_COLUMNS) + "\n"
        + "a.png,p1,train,x" + "," * (len(MANIFEST_COLUMNS) - 4) + "\n"
        + "b.png,p1,valid,x" + "," * (len(MANIFEST_COLUMNS) - 4) + "\n"
    )  # fmt: skip
    with pytest.raises(ValueError, match="more than one split"):
        read_manifest(tmp_path / "bad.csv")


def test_same_patient_id_in_two_datasets_is_two_patients() -> None:
    check_patient_disjoint(
        [_row("7", "train"), ManifestRow(path="b.png", patient_id="7", split="test", dataset="other")]
    )


def test_wrong_columns_are_refused(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,patient_id\na.png,1\n")
    with pytest.raises(ValueError, match="columns"):
        read_manifest(tmp_path / "m.csv")


def test_normalisers() -> None:
    assert [normalise_view(v) for v in ("AP", "ap supine", "L", "LL", "RL", "AP AXIAL", "")] == [
        "AP", "AP", "LATERAL", "LL", "LATERAL", "", "",
    ]  # fmt: skip
    assert [parse_age(a) for a in ("58", "058Y", "0", "411", "", "x")] == [58.0, 58.0, None, None, None, None]


def test_patient_splits_are_disjoint_complete_and_seeded() -> None:
    patients = [f"p{i}" for i in range(100)]
    splits = split_patients(patients, seed=3)
    assert set(splits) == set(patients)
    counts = {name: sum(1 for s in splits.values() if s == name) for name in ("train", "valid", "test")}
    assert counts == {"train": 70, "valid": 15, "test": 15}
    assert split_patients(reversed(patients), seed=3) == splits
    assert split_patients(patients, seed=4) != splits


def test_few_patients_still_fill_every_split() -> None:
    assert sorted(split_patients(["a", "b", "c"]).values()) == ["test", "train", "valid"]
    with pytest.raises(ValueError):
        split_patients(["a"], fractions={"train": 0.5, "test": 0.2})
