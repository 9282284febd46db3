"""Linear evaluation end to end on generated images: artifact, honest labels, caching, exact predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrmsn.checkpoint import load_classifier, read_metadata
from cxrmsn.labels import LABELS
from cxrmsn.model import CXRClassifier
from tests.training.downstream.fixtures import small_config
from training.data.manifest import read_manifest, resolve_image_path
from training.downstream.artifact import load_predictions
from training.downstream.linear_eval import linear_eval
from training.downstream.predict import predict_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(manifest: Path, encoder_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("linear")
    linear_eval(encoder_file, small_config(manifest, out / "cache"), out / "run")
    return out / "run"


def test_outputs_and_the_selected_run(run: Path) -> None:
    assert {p.name for p in run.iterdir()} >= {
        "classifier.safetensors",
        "metrics.json",
        "predictions",
        "config.json",
        "version.json",
    }
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["name"] for r in metrics["runs"]] == [
        "cosine_lr0.01",
        "cosine_lr0.001",
        "cosine_lr0.0001",
        "plateau_lr0.0005",
        "plateau_lr0.0001",
    ]
    best = max(metrics["runs"], key=lambda r: r["best_valid_macro_auroc"])
    assert metrics["selected_run"] == best["name"]
    assert json.loads((run / "config.json").read_text())["augment"]["copies"] == 2


def test_labels_are_honest(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    # Cardiomegaly, Edema (uncertain -> 0 still leaves positives) and No Finding had both classes in train
    assert metrics["trained_labels"] == ["Cardiomegaly", "Edema", "No Finding"]
    test = metrics["test"]["per_label"]
    assert (
        test["Fracture"]["reason"] == "not annotated in the test split" and test["Fracture"]["auroc"] is None
    )
    assert test["Pneumothorax"]["reason"] == "no positives in the test split"
    assert metrics["test"]["macro"]["labels"] == ["Cardiomegaly", "Edema", "No Finding"]
    assert metrics["label_masks"]["train"]["Fracture"] == {"counted": 0, "positives": 0, "negatives": 0}
    # the disc is visible even to a random encoder: the label is learnt
    assert test["Cardiomegaly"]["auroc"]["value"] > 0.8


def test_classifier_checkpoint_is_what_export_needs(run: Path) -> None:
    metadata = read_metadata(run / "classifier.safetensors")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metadata.kind == "classifier" and metadata.trained_labels == metrics["trained_labels"]
    assert set(metadata.thresholds) == set(metadata.trained_labels)
    assert all(t["chosen_on"] == "valid" and t["method"] == "youden" for t in metrics["thresholds"].values())
    assert "not for clinical use" in metadata.intended_use
    assert metadata.training_data["splits"]["train"]["images"] == 24
    assert metadata.metrics["test"]["macro"] == metrics["test"]["macro"]
    # per-label validation CIs travel with the checkpoint: export's validity gate needs no metrics.json
    valid = metadata.metrics["valid"]["per_label"]
    assert all(valid[label]["auroc"] == metrics["valid"]["per_label"][label]["auroc"] for label in valid)
    from export.validity import build_gate

    gate = build_gate(metadata, run / "elsewhere.safetensors", run_metrics=None, min_auroc_lower_bound=0.5)
    assert gate.status == "evaluated" and gate.source == {"kind": "checkpoint metadata"}
    assert metadata.preprocessing == {  # the paper's eval view: resize 256, centre-crop 224
        "resize": 256,
        "crop": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }


def test_checkpoint_reproduces_the_reported_test_predictions(run: Path, manifest: Path) -> None:
    model, metadata = load_classifier(run / "classifier.safetensors")
    assert isinstance(model, CXRClassifier)
    stored = load_predictions(run, "test")
    paths = [resolve_image_path(manifest, r) for r in read_manifest(manifest) if r.split == "test"]
    assert stored.paths == [str(p) for p in paths]
    probabilities, _, failed = predict_files(
        model, paths, metadata.preprocess_config, batch_size=8, workers=0, device=torch.device("cpu")
    )
    assert failed == []
    np.testing.assert_allclose(probabilities, stored.probabilities, atol=1e-5)


def test_embeddings_are_cached_and_reused(run: Path, manifest: Path, encoder_file: Path) -> None:
    cache = run.parent / "cache" / "embeddings"
    files = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(files) == 3  # train (plain + 2 augmented copies), valid, test
    with np.load(next(p for p in cache.iterdir() if np.load(p)["augmented"].shape[1] == 2)) as train:
        assert train["plain"].shape == (24, 64) and not np.allclose(train["augmented"][:, 0], train["plain"])
    again = linear_eval(encoder_file, small_config(manifest, run.parent / "cache"), run.parent / "again")
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == files
    assert again["test"]["macro"] == json.loads((run / "metrics.json").read_text())["test"]["macro"]
    with pytest.raises(ValueError, match="already holds results"):
        linear_eval(encoder_file, small_config(manifest, run.parent / "cache"), run)


def test_uncertain_policy_changes_what_counts(manifest: Path, encoder_file: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from training.downstream.config import LabelConfig

    config = replace(
        small_config(manifest, tmp_path / "cache", max_epochs=2), labels=LabelConfig(uncertain="ignore")
    )
    metrics = linear_eval(encoder_file, config, tmp_path / "ignore")
    uncertain = sum(
        1 for r in read_manifest(manifest) if r.split == "train" and r.labels[LABELS.index("Edema")] == -1
    )
    assert metrics["label_masks"]["train"]["Edema"]["counted"] == 24 - uncertain
