"""The calibration comparison recipe: each method fixes a known miscalibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recipes.calibration_measure import METHODS, fit, measure_run
from training.downstream.calibration import expected_calibration_error, sigmoid


def overconfident(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    true_logits = rng.normal(0.0, 1.5, n)
    positive = rng.random(n) < sigmoid(true_logits)
    return 3.0 * true_logits, positive  # the model's logits: three times too sure


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_each_method_repairs_overconfident_logits(method: str) -> None:
    rng = np.random.default_rng(0)
    fit_logits, fit_positive = overconfident(rng, 4000)
    test_logits, test_positive = overconfident(rng, 4000)
    before = expected_calibration_error(sigmoid(test_logits), test_positive)
    after = expected_calibration_error(fit(method, fit_logits, fit_positive)(test_logits), test_positive)
    assert before is not None and after is not None
    assert before > 0.1 and after < 0.04


def test_a_run_is_scored_with_paired_intervals(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for split in ("valid", "test"):
        logits = np.stack([overconfident(rng, 300)[0] for _ in range(14)], axis=1)
        targets = (rng.random((300, 14)) < sigmoid(logits / 3.0)).astype(np.float32)
        mask = np.ones_like(targets, dtype=bool)
        mask[:, 5] = False  # a label with no counted images is left out
        (tmp_path / "predictions").mkdir(exist_ok=True)
        np.savez(tmp_path / "predictions" / f"{split}.npz", logits=logits, targets=targets, mask=mask)
    result = measure_run(tmp_path, np.random.default_rng(0))
    assert result["labels"] == 13
    none, temperature = result["none"], result["temperature"]
    assert isinstance(none, dict) and isinstance(temperature, dict)
    assert none["delta_vs_none_ci"] == [0.0, 0.0]
    assert temperature["ece"] < none["ece"] and temperature["delta_vs_none_ci"][1] < 0
