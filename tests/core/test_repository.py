"""The model repository manifest and its integrity check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cxrmsn.fileio import sha256_file
from cxrmsn.labels import LABELS
from cxrmsn.preprocess import DEFAULT_PREPROCESS
from cxrmsn.repository import (
    ModelFile,
    OodGuard,
    RepositoryError,
    RepositoryManifest,
    ValidityGate,
    read_manifest,
    verified_model_path,
    write_manifest,
)


def make_repository(root: Path) -> RepositoryManifest:
    model = root / "cxr_msn" / "1" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"pretend onnx bytes" * 10)
    manifest = RepositoryManifest(
        name="cxr_msn",
        version="1",
        architecture="vit_nano_patch16_224",
        labels=list(LABELS),
        preprocessing=DEFAULT_PREPROCESS.to_dict(),
        models={
            "fp32": ModelFile(
                path="cxr_msn/1/model.onnx",
                sha256=sha256_file(model),
                bytes=model.stat().st_size,
                precision="fp32",
                triton_model="cxr_msn",
            )
        },
    )
    write_manifest(root, manifest)
    return manifest


def test_manifest_round_trips(tmp_path: Path) -> None:
    manifest = make_repository(tmp_path)
    assert read_manifest(tmp_path) == manifest
    assert verified_model_path(tmp_path, manifest) == tmp_path / "cxr_msn" / "1" / "model.onnx"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "truncated or replaced"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"X"), "modified or corrupt"),
        (lambda p: p.unlink(), "missing"),
    ],
)
def test_tampered_model_files_are_refused(
    tmp_path: Path, tamper: Callable[[Path], object], message: str
) -> None:
    manifest = make_repository(tmp_path)
    tamper(tmp_path / "cxr_msn" / "1" / "model.onnx")
    with pytest.raises(RepositoryError, match=message):
        verified_model_path(tmp_path, manifest)


def test_missing_or_foreign_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="not a cxr-msn model repository"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(RepositoryError, match="is not a cxr-msn-model-repository manifest"):
        read_manifest(tmp_path)


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    manifest = make_repository(tmp_path)
    with pytest.raises(RepositoryError, match="variant 'int8' is not in the manifest"):
        verified_model_path(tmp_path, manifest, "int8")


def test_the_validity_gate_round_trips_and_a_manifest_without_one_still_loads(tmp_path: Path) -> None:
    manifest = make_repository(tmp_path)
    assert manifest.validity_gate is None and manifest.not_validated_labels == []
    values = json.loads((tmp_path / "manifest.json").read_text())
    del values["validity_gate"]  # as written before the gate existed
    (tmp_path / "manifest.json").write_text(json.dumps(values))
    assert read_manifest(tmp_path).validity_gate is None

    manifest.trained_labels = ["Cardiomegaly", "Edema", "No Finding"]
    manifest.validity_gate = ValidityGate(
        status="evaluated",
        min_auroc_lower_bound=0.5,
        not_validated_labels=["No Finding", "Edema"],
        auroc_lower_bounds={"Cardiomegaly": 0.61, "Edema": None, "No Finding": 0.42},
        reasons={"Edema": "no positives", "No Finding": "lower bound not above 0.5"},
    )
    write_manifest(tmp_path, manifest)
    loaded = read_manifest(tmp_path)
    assert loaded == manifest and isinstance(loaded.validity_gate, ValidityGate)
    assert loaded.not_validated_labels == ["Edema", "No Finding"]  # label order


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ({"status": "passed", "min_auroc_lower_bound": 0.5, "not_validated_labels": []}, "status must be"),
        ({"status": "evaluated", "min_auroc_lower_bound": 1.5, "not_validated_labels": []}, r"\[0, 1\)"),
        (
            {"status": "evaluated", "min_auroc_lower_bound": 0.5, "not_validated_labels": ["Edema"]},
            "not trained",
        ),
        ({"status": "evaluated", "not_validated_labels": []}, "min_auroc_lower_bound"),
    ],
)
def test_a_malformed_validity_gate_is_refused(tmp_path: Path, gate: dict[str, Any], message: str) -> None:
    make_repository(tmp_path)
    values = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**values, "validity_gate": gate}))
    with pytest.raises(RepositoryError, match=message):
        read_manifest(tmp_path)


def test_the_ood_guard_round_trips_and_must_name_a_graph_output(tmp_path: Path) -> None:
    manifest = make_repository(tmp_path)
    assert manifest.ood_guard is None  # exported without one: serving warns, refuses by header only
    manifest.io = {"outputs": [{"name": "probabilities"}, {"name": "attention"}, {"name": "ood_score"}]}
    manifest.ood_guard = OodGuard(
        output="ood_score",
        score="mahalanobis_cls_embedding",
        threshold=13.9,
        threshold_rule="the 99.5th percentile of held-out scores",
        fitted_on={"images": 768},
        threshold_on={"valid": {"images": 149, "max": 13.2}},
        modalities=["CR", "DX", "DR"],
        view_positions=["AP", "PA"],
    )
    write_manifest(tmp_path, manifest)
    loaded = read_manifest(tmp_path)
    assert loaded == manifest and isinstance(loaded.ood_guard, OodGuard)
    values = json.loads((tmp_path / "manifest.json").read_text())
    values["io"]["outputs"] = values["io"]["outputs"][:2]  # a graph without the score
    (tmp_path / "manifest.json").write_text(json.dumps(values))
    with pytest.raises(RepositoryError, match="ood_guard reads the output 'ood_score'"):
        read_manifest(tmp_path)
    values["io"]["outputs"].append({"name": "ood_score"})
    values["ood_guard"]["threshold"] = None
    (tmp_path / "manifest.json").write_text(json.dumps(values))
    with pytest.raises(RepositoryError, match="finite number"):
        read_manifest(tmp_path)
