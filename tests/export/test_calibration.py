"""Export folds the checkpoint's per-label temperatures into the head (issue 20 item 3): the ONNX
model gives sigmoid(logit / T) with an unchanged graph, once, and the manifest records it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cxrmsn.checkpoint import load_checkpoint, load_classifier, save_checkpoint
from cxrmsn.labels import LABELS
from cxrmsn.model import CXRClassifier
from cxrmsn.repository import read_manifest
from export.build import ExportOptions, export_repository
from export.calibration import fold_temperatures
from export.errors import ExportError
from export.runtime import cpu_session, generated_images, run
from serving.predictor import load_predictor
from serving.schemas import ModelCard
from tests.export.conftest import save_classifier

TEMPERATURES = {label: 0.5 + 0.25 * index for index, label in enumerate(LABELS)}


def with_calibration(source: Path, target: Path, *, applied: bool) -> Path:
    state, metadata = load_checkpoint(source)
    calibration = {"method": "temperature", "temperatures": TEMPERATURES, "fitted_on": "valid"}
    save_checkpoint(target, state, replace(metadata, calibration={**calibration, "applied_to_head": applied}))
    return target


def classifier(checkpoint: Path) -> tuple[CXRClassifier, Any]:
    model, metadata = load_classifier(checkpoint)
    assert isinstance(model, CXRClassifier)
    return model, metadata


def raw_logits(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    model, _ = classifier(checkpoint)
    with torch.no_grad():
        return model.forward_head(model.forward_features(torch.from_numpy(images))).numpy()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("plain") / "nano.safetensors", head_scale=5.0)


def test_export_folds_the_temperatures_into_the_onnx_head(plain: Path, tmp_path: Path) -> None:
    checkpoint = with_calibration(plain, tmp_path / "calibrated.safetensors", applied=False)
    repository = export_repository(
        checkpoint, tmp_path / "repository", ExportOptions(variants=("fp32",), ort_optimised="never")
    )
    assert repository.calibration["folded_by"] == "export"
    assert repository.calibration["temperatures"] == pytest.approx(TEMPERATURES)
    manifest = read_manifest(tmp_path / "repository")
    assert manifest.calibration == repository.calibration
    images = generated_images(4, image_size=224)
    probabilities = run(cpu_session(tmp_path / "repository" / "cxr_msn" / "1" / "model.onnx"), images)[0]
    temperatures = np.asarray([TEMPERATURES[label] for label in LABELS])
    expected = 1.0 / (1.0 + np.exp(-raw_logits(plain, images) / temperatures))
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    # GET /model names the calibration the served probabilities and thresholds are on.
    card = load_predictor(tmp_path / "repository", backend="onnxruntime", variant=None).model_card()
    assert ModelCard.model_validate(card).calibration == repository.calibration
    # Monotone per label: the order of images by probability is the uncalibrated order.
    uncalibrated = 1.0 / (1.0 + np.exp(-raw_logits(plain, images)))
    assert (np.argsort(probabilities, axis=0) == np.argsort(uncalibrated, axis=0)).all()


def test_a_head_already_folded_by_linear_eval_is_not_folded_twice(plain: Path, tmp_path: Path) -> None:
    checkpoint = with_calibration(plain, tmp_path / "folded.safetensors", applied=True)
    model, metadata = classifier(checkpoint)
    before = model.head.weight.detach().clone()
    record = fold_temperatures(model, metadata)
    assert record["folded_by"] == "linear-eval" and torch.equal(model.head.weight, before)


def test_uncalibrated_and_invalid_calibrations(plain: Path, tmp_path: Path) -> None:
    model, metadata = classifier(plain)
    assert fold_temperatures(model, metadata) == {}
    state, _ = load_checkpoint(plain)
    bad = replace(metadata, calibration={"method": "temperature", "temperatures": {"Edema": 0.0}})
    with pytest.raises(ExportError, match="finite and positive"):
        fold_temperatures(model, bad)
    with pytest.raises(ExportError, match="unknown calibration method"):
        fold_temperatures(model, replace(metadata, calibration={"method": "isotonic"}))
    assert state  # the checkpoint itself is untouched
