"""Downstream data: subsets by patient, manifest sources, the pretraining-overlap check."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from cxrmsn.checkpoint import CheckpointMetadata
from cxrmsn.labels import NUM_LABELS
from training.data.manifest import ManifestRow
from training.downstream.config import DownstreamConfig, EvalDataConfig, with_fraction
from training.downstream.data import (
    patient_subset,
    prepare_data,
    pretraining_overlap,
    random_subset,
    resolve_manifest,
)


def rows(patients: int, images_each: int) -> list[ManifestRow]:
    return [
        ManifestRow(
            path=f"{p}_{i}.png", patient_id=f"p{p}", split="train", dataset="d", labels=(0.0,) * NUM_LABELS
        )
        for p in range(patients)
        for i in range(images_each)
    ]


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.5])
def test_patient_subset_keeps_whole_patients_near_the_fraction(fraction: float) -> None:
    data = rows(200, 3)
    subset = patient_subset(data, fraction, seed=0)
    per_patient = Counter(r.patient_id for r in subset)
    assert set(per_patient.values()) == {3}  # whole patients only
    assert len(subset) >= max(1, round(fraction * len(data))) and len(subset) - 3 < round(fraction * 600)
    assert subset == patient_subset(data, fraction, seed=0) and subset != patient_subset(
        data, fraction, seed=1
    )
    assert [r.path for r in subset] == sorted((r.path for r in subset), key=[r.path for r in data].index)


def test_patient_subset_edge_cases() -> None:
    data = rows(5, 2)
    assert patient_subset(data, 1.0, seed=0) == data
    assert len(patient_subset(data, 0.001, seed=0)) == 2  # at least one patient
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        patient_subset(data, 0.0, seed=0)
    assert random_subset(data, 0, seed=0) == data and len(random_subset(data, 3, seed=0)) == 3


def test_prepare_data_from_a_manifest(manifest: Path) -> None:
    config = DownstreamConfig(
        data=EvalDataConfig(source="manifest", manifest=str(manifest), max_eval_images=4)
    )
    data = prepare_data(config, manifest)
    assert [len(data.rows[s]) for s in ("train", "valid", "test")] == [24, 4, 4]
    assert data.labels["train"].targets.shape == (24, NUM_LABELS)
    half = prepare_data(with_fraction(config, 0.5), manifest)
    assert len(half.rows["train"]) == 12 and {r.split for r in half.rows["train"]} == {"train"}
    data.drop("test", [0, 2])
    assert (
        len(data.rows["test"]) == 2
        and len(data.labels["test"].targets) == 2
        and len(data.dropped["test"]) == 2
    )


def test_encoder_source_uses_the_pretraining_manifest_and_checks_it(manifest: Path, tmp_path: Path) -> None:
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    info = {"summary": "x", "manifest": str(manifest), "manifest_sha256": digest, "splits": {"train": 24}}
    encoder = CheckpointMetadata(architecture="vit_nano_patch16_224", kind="encoder", training_data=info)
    config = DownstreamConfig(data=EvalDataConfig(source="encoder"))
    assert resolve_manifest(config, tmp_path, encoder) == manifest
    changed = replace(encoder, training_data={**info, "manifest_sha256": "0" * 64})
    with pytest.raises(ValueError, match="has changed"):
        resolve_manifest(config, tmp_path, changed)
    with pytest.raises(ValueError, match="names no pretraining manifest"):
        resolve_manifest(
            config, tmp_path, CheckpointMetadata(architecture="vit_nano_patch16_224", kind="encoder")
        )
    data = prepare_data(DownstreamConfig(), manifest)
    overlap = pretraining_overlap(encoder, data)
    assert overlap["checked"] and overlap["test_images_of_pretraining_patients"] == 0
    leaky = replace(encoder, training_data={**info, "splits": {"train": 24, "test": 12}})
    assert pretraining_overlap(leaky, data)["test_images_of_pretraining_patients"] == len(data.rows["test"])
    assert not pretraining_overlap(None, data)["checked"]


def test_manifest_source_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--manifest"):
        resolve_manifest(DownstreamConfig(), tmp_path, None)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_manifest(
            DownstreamConfig(data=EvalDataConfig(manifest=str(tmp_path / "x.csv"))), tmp_path, None
        )


def test_a_missing_shared_data_folder_names_the_setting_and_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = DownstreamConfig(data=EvalDataConfig(source="shared", shared_root=str(tmp_path / "absent")))
    with pytest.raises(
        ValueError, match=r"pass it with --set data\.shared_root=DIR or set CXR_MSN_DATA_ROOT"
    ):
        resolve_manifest(shared, tmp_path, None)
    # an empty data.shared_root is the environment's (not the working directory)
    monkeypatch.setenv("CXR_MSN_DATA_ROOT", str(tmp_path / "from-env"))
    with pytest.raises(ValueError, match="from-env does not exist"):
        resolve_manifest(replace(shared, data=replace(shared.data, shared_root="")), tmp_path, None)
