"""The validation manifest, macro AUROC, and the accuracy notes an export writes from them."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from cxrmsn.labels import LABELS
from cxrmsn.repository import read_manifest, verified_model_path
from export.runtime import cpu_session, run
from export.validation import macro_auroc, read_validation_manifest
from tests.helpers import SHARED_DATA, chest_like_picture, requires_shared_data, to_jpeg, to_png


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_reads_images_and_masks_blank_and_uncertain_labels(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(to_png(chest_like_picture(64, 80)))
    absolute = tmp_path / "b.jpg"
    absolute.write_bytes(to_jpeg(chest_like_picture(72, 64, seed=1)))
    first = dict.fromkeys(LABELS, "0") | {"Path": "images/a.png", "Edema": "1.0", "Fracture": ""}
    second = dict.fromkeys(LABELS, "1") | {"Path": str(absolute), "Edema": "-1", "Fracture": "0.0"}
    manifest = write_csv(tmp_path / "valid.csv", [first, second], ["Path", "Age", *LABELS])

    evaluation = read_validation_manifest(manifest)
    assert evaluation.images.shape == (2, 3, 224, 224) and evaluation.images.dtype == np.float32
    edema, fracture = LABELS.index("Edema"), LABELS.index("Fracture")
    assert evaluation.labels[0, edema] == 1 and math.isnan(evaluation.labels[1, edema])
    assert math.isnan(evaluation.labels[0, fracture]) and evaluation.labels[1, fracture] == 0
    assert evaluation.labels[0, 0] == 0 and evaluation.labels[1, 0] == 1
    assert evaluation.source == "valid.csv (2 images)"


@pytest.mark.parametrize(
    ("columns", "row", "message"),
    [
        (["path", *LABELS[:-1]], {}, r"missing \['No Finding'\]"),
        (["image", *LABELS], {}, r"missing \['path'\]"),
        (["path", *LABELS], {"Edema": "2"}, r"line 2: Edema is '2'; expected 1, 0, -1 or blank"),
        (["path", *LABELS], {"path": "absent.png"}, "line 2: cannot read image"),
        (["path", *LABELS], {"path": "not_an_image.png"}, "line 2: cannot read image"),
    ],
)
def test_malformed_manifests_are_refused_with_the_reason(
    tmp_path: Path, columns: list[str], row: dict[str, str], message: str
) -> None:
    (tmp_path / "ok.png").write_bytes(to_png(chest_like_picture(64, 64)))
    (tmp_path / "not_an_image.png").write_bytes(b"<html>no</html>")
    values = {"path": "ok.png", "image": "ok.png", **dict.fromkeys(LABELS, "0"), **row}
    manifest = write_csv(tmp_path / "v.csv", [{c: values[c] for c in columns}], columns)
    with pytest.raises(ValueError, match=message):
        read_validation_manifest(manifest)


def test_an_empty_or_absent_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_validation_manifest(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="lists no images"):
        read_validation_manifest(write_csv(tmp_path / "empty.csv", [], ["path", *LABELS]))


def test_macro_auroc_masks_unknowns_and_skips_one_class_labels() -> None:
    labels = np.full((6, len(LABELS)), np.nan, dtype=np.float32)
    probabilities = np.full((6, len(LABELS)), 0.5, dtype=np.float32)
    labels[:, 0] = [0, 0, 1, 1, np.nan, np.nan]  # perfectly ranked where known
    probabilities[:, 0] = [0.1, 0.2, 0.8, 0.9, 0.99, 0.0]  # unknown rows would spoil it
    labels[:, 1] = [0, 1, 0, 1, 0, 1]
    probabilities[:, 1] = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3]  # perfectly wrong
    labels[:4, 2] = 1  # positives only
    result = macro_auroc(probabilities, labels)
    assert result["per_label"] == {LABELS[0]: 1.0, LABELS[1]: 0.0}
    assert result["macro_auroc"] == 0.5
    assert LABELS[2] in result["skipped_labels"] and len(result["skipped_labels"]) == len(LABELS) - 2
    nothing = macro_auroc(probabilities, np.full_like(labels, np.nan))
    assert nothing["macro_auroc"] is None and nothing["per_label"] == {}
    with pytest.raises(ValueError, match=r"need \[N, 14\] arrays"):
        macro_auroc(probabilities[:, :3], labels[:, :3])


def test_export_records_auroc_change_per_variant(nano_repository: Path, validation_manifest: Path) -> None:
    manifest = read_manifest(nano_repository)
    evaluation = read_validation_manifest(validation_manifest)
    measured = {
        name: macro_auroc(
            run(cpu_session(verified_model_path(nano_repository, manifest, name)), evaluation.images)[0],
            evaluation.labels,
        )
        for name in ("fp32", "fp16", "int8")
    }
    assert manifest.models["fp32"].notes["auroc"]["macro_auroc"] == pytest.approx(
        measured["fp32"]["macro_auroc"]
    )
    for name in ("fp16", "int8"):
        notes = manifest.models[name].notes["auroc"]
        assert notes["macro_auroc"] == pytest.approx(measured[name]["macro_auroc"])
        assert notes["macro_auroc_fp32"] == pytest.approx(measured["fp32"]["macro_auroc"])
        assert notes["macro_auroc_change"] == pytest.approx(notes["macro_auroc"] - notes["macro_auroc_fp32"])
        assert "Pleural Other" in notes["skipped_labels"]  # positives only in the generated set
        assert set(notes["per_label_change"]) == set(measured[name]["per_label"])
        assert manifest.models[name].notes["compared_on"] == "validation.csv (16 images)"


@requires_shared_data
def test_real_nih_images_give_an_int8_auroc_change(nano_checkpoint: Path, tmp_path: Path) -> None:
    from export.build import ExportOptions, export_repository

    folder = SHARED_DATA / "nih1000"
    with (folder / "labels.csv").open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "valid"]
    manifest_csv = write_csv(
        tmp_path / "nih_valid.csv",
        [
            {"path": str(folder / "images" / row["image"]), **{label: row[label] for label in LABELS}}
            for row in rows
        ],
        ["path", *LABELS],
    )
    options = ExportOptions(
        variants=("fp32", "int8"), validation_manifest=manifest_csv, ort_optimised="never"
    )
    manifest = export_repository(nano_checkpoint, tmp_path / "repo", options)
    notes = manifest.models["int8"].notes
    assert notes["compared_on"] == f"nih_valid.csv ({len(rows)} images)"
    auroc = notes["auroc"]
    assert {"Cardiomegaly", "Pleural Effusion"} <= set(auroc["per_label_change"])
    assert "Fracture" in auroc["skipped_labels"]  # NIH has no fracture finding: blank column
    assert abs(auroc["macro_auroc_change"]) < 0.2
