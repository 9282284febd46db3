"""Per-label temperature scaling and ECE (``training.downstream.calibration``), and a linear
evaluation run's calibration block, checkpoint and predictions (issue 20 item 3)."""

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
from training.downstream.artifact import load_predictions
from training.downstream.calibration import (
    ECE_BINS,
    auroc_change,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
    logits_from_probabilities,
    reliability,
    sigmoid,
)
from training.downstream.labels import LabelMatrix
from training.downstream.linear_eval import linear_eval
from training.downstream.metrics import auroc


def overconfident(n: int = 4000, scale: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``scale`` times too large for labels drawn from the true sigmoid."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 1.5, n)
    positive = rng.random(n) < sigmoid(true)
    return true * scale, positive


def matrix(logits: np.ndarray, positive: np.ndarray, columns: list[int]) -> tuple[np.ndarray, LabelMatrix]:
    n = len(logits)
    z = np.zeros((n, len(LABELS)))
    targets = np.zeros((n, len(LABELS)), dtype=np.int8)
    mask = np.zeros((n, len(LABELS)), dtype=bool)
    for j in columns:
        z[:, j], targets[:, j], mask[:, j] = logits, positive, True
    return z, LabelMatrix(targets, mask)


def test_fit_recovers_the_temperature_of_overconfident_logits() -> None:
    logits, positive = overconfident(scale=3.0)
    assert fit_temperature(logits, positive) == pytest.approx(3.0, rel=0.15)
    under, positive = overconfident(scale=0.5, seed=1)
    assert fit_temperature(under, positive) == pytest.approx(0.5, rel=0.15)


def test_temperature_scaling_lowers_ece_and_keeps_auroc() -> None:
    logits, positive = overconfident(scale=3.0)
    cardiomegaly, edema = LABELS.index("Cardiomegaly"), LABELS.index("Edema")
    z, labels = matrix(logits, positive, [cardiomegaly, edema])
    temperatures = fit_temperatures(z, labels, ["Cardiomegaly", "Edema"])
    before = sigmoid(z).astype(np.float32)
    after = temperatures.apply(z)
    for j in (cardiomegaly, edema):
        ece_before = expected_calibration_error(before[:, j], positive)
        ece_after = expected_calibration_error(after[:, j], positive)
        assert ece_before is not None and ece_after is not None and ece_after < 0.5 * ece_before
        # Monotone: the ranking, and so AUROC, is unchanged.
        assert auroc(after[:, j], positive) == pytest.approx(auroc(before[:, j], positive), abs=1e-12)
    assert auroc_change(before, after, labels, ["Cardiomegaly", "Edema"]) == pytest.approx(0.0, abs=1e-12)
    report = calibration_report(temperatures, {"valid": (z, labels)}, ["Cardiomegaly", "Edema"])
    ece = report["ece"]["valid"]
    assert ece["after"]["macro"] < ece["before"]["macro"] and ece["auroc_max_change"] == 0.0
    assert ece["before"]["labels"] == ["Cardiomegaly", "Edema"] and report["ece_bins"] == ECE_BINS


def test_labels_without_validation_signal_keep_t_1() -> None:
    logits, positive = overconfident()
    cardiomegaly = LABELS.index("Cardiomegaly")
    z, labels = matrix(logits, positive, [cardiomegaly, LABELS.index("Edema")])
    labels.targets[:, LABELS.index("Edema")] = 0  # no positive on validation
    temperatures = fit_temperatures(z, labels, ["Cardiomegaly", "Edema"])
    assert (
        temperatures.values["Edema"] == 1.0 and "no positive or no negative" in temperatures.reasons["Edema"]
    )
    assert temperatures.values["Fracture"] == 1.0 and temperatures.reasons["Fracture"] == "untrained"
    assert temperatures.values["Cardiomegaly"] != 1.0
    stored = temperatures.to_metadata()
    assert set(stored["temperatures"]) == set(LABELS) and stored["method"] == "temperature"


def test_ece_by_hand() -> None:
    probabilities = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    positive = np.array([False, True, True, True, False])
    # bins: [0, 1/15) holds 0.05 x2 (1 positive): |0.1 - 1| = 0.9; 0.95 x2 (2 positive): |1.9 - 2| = 0.1;
    # 0.55 alone, negative: 0.55. ECE = (0.9 + 0.1 + 0.55) / 5.
    assert expected_calibration_error(probabilities, positive) == pytest.approx(1.55 / 5)
    table = reliability(probabilities, positive)
    assert table["count"][0] == 2 and table["fraction_positive"][0] == 0.5
    assert expected_calibration_error(np.array([]), np.array([], dtype=bool)) is None


def test_logits_from_probabilities_inverts_the_sigmoid() -> None:
    z = np.linspace(-8, 8, 17)
    np.testing.assert_allclose(logits_from_probabilities(sigmoid(z)), z, atol=1e-6)


@pytest.mark.slow
def test_a_linear_eval_run_is_calibrated_end_to_end(
    manifest: Path, encoder_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    metrics = linear_eval(encoder_file, small_config(manifest, tmp_path / "cache"), run)
    block = metrics["calibration"]
    assert block["method"] == "temperature" and block["fitted_on"] == "valid"
    assert set(block["ece"]) == {"valid", "test"}
    for split in ("valid", "test"):
        for when in ("before", "after"):
            assert set(block["ece"][split][when]["per_label"]) == set(LABELS)
        assert (
            block["ece"][split]["auroc_max_change"] is None or block["ece"][split]["auroc_max_change"] < 1e-6
        )
    # Validation NLL is what T minimises; on validation ECE should not get much worse.
    assert (
        json.loads((run / "metrics.json").read_text())["calibration"]["temperatures"] == block["temperatures"]
    )
    metadata = read_metadata(run / "classifier.safetensors")
    assert metadata.calibration["applied_to_head"] is True
    assert metadata.calibration["temperatures"] == pytest.approx(block["temperatures"])
    assert "calibration" in metadata.metrics and "ece_macro" in metadata.metrics["calibration"]
    # The stored predictions are the calibrated ones, and the checkpoint's (folded) head gives them.
    valid = load_predictions(run, "valid")
    assert valid.logits is not None and valid.embeddings is not None
    temperatures = np.asarray([block["temperatures"][label] for label in LABELS])
    np.testing.assert_allclose(valid.probabilities, sigmoid(valid.logits / temperatures), atol=1e-6)
    model, _ = load_classifier(run / "classifier.safetensors")
    assert isinstance(model, CXRClassifier)
    with torch.no_grad():
        head = torch.sigmoid(model.head(torch.from_numpy(valid.embeddings))).numpy()
    np.testing.assert_allclose(head, valid.probabilities, atol=1e-5)
    # Thresholds were chosen on the calibrated validation probabilities.
    for label, threshold in metrics["thresholds"].items():
        if threshold["chosen_on"] == "valid":
            j = LABELS.index(label)
            assert np.isclose(valid.probabilities[valid.labels.mask[:, j], j], threshold["value"]).any()
    # The report: the calibration table and the reliability diagrams.
    from training.downstream.report import write_report

    files = write_report(run, tmp_path / "report", tsne_max=50, attention_count=0)
    markdown = files.markdown.read_text()
    assert "Calibration: per-label temperature scaling fitted on valid" in markdown
    assert "ECE test after" in markdown and "reliability.png" in markdown
    assert (tmp_path / "report" / "reliability.png").stat().st_size > 1000
    assert "reliability" in files.html.read_text()


@pytest.mark.parametrize(
    ("solver", "setting", "method"),
    [
        ("adam", "auto", "temperature"),
        ("logistic", "auto", "none"),
        ("logistic", "temperature", "temperature"),
        ("adam", "none", "none"),
    ],
)
def test_head_calibration_auto_follows_the_solver(solver: str, setting: str, method: str) -> None:
    from training.downstream.config import HeadConfig

    assert HeadConfig(solver=solver, calibration=setting).calibration_method() == method


def test_an_unknown_calibration_setting_is_refused() -> None:
    from training.downstream.config import HeadConfig

    with pytest.raises(ValueError, match=r"head\.calibration"):
        HeadConfig(calibration="isotonic")


@pytest.mark.slow
def test_a_run_with_calibration_none_keeps_the_heads_probabilities(
    manifest: Path, encoder_file: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    config = small_config(manifest, tmp_path / "cache")
    config = replace(config, head=replace(config.head, calibration="none"))
    run = tmp_path / "run"
    metrics = linear_eval(encoder_file, config, run)
    block = metrics["calibration"]
    assert block["method"] == "none" and set(block["temperatures"].values()) == {1.0}
    for split in ("valid", "test"):
        assert block["ece"][split]["before"] == block["ece"][split]["after"]
    metadata = read_metadata(run / "classifier.safetensors")
    assert metadata.calibration["method"] == "none"
    valid = load_predictions(run, "valid")
    assert valid.logits is not None
    np.testing.assert_allclose(valid.probabilities, sigmoid(valid.logits), atol=1e-6)
    from export.calibration import fold_temperatures

    model, metadata = load_classifier(run / "classifier.safetensors")
    before = model.state_dict()["head.weight"].clone()
    assert fold_temperatures(model, metadata)["method"] == "none"
    assert torch.equal(model.state_dict()["head.weight"], before)
