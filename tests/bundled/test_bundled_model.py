"""The bundled model: intact, served through the real path, and still giving its stored answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrmsn.repository import read_manifest, verified_model_path
from recipes.bundled_model import REGRESSION_FILE, predict_regression_inputs

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"

pytestmark = pytest.mark.skipif(
    not (REPOSITORY / "manifest.json").is_file(), reason="no bundled model in model_repository/"
)


def test_every_model_file_matches_its_manifest() -> None:
    manifest = read_manifest(REPOSITORY)
    for variant in manifest.models:
        verified_model_path(REPOSITORY, manifest, variant)
    total = sum(path.stat().st_size for path in REPOSITORY.rglob("*") if path.is_file())
    assert total < 50 * 1024 * 1024, f"model_repository holds {total / 2**20:.1f} MiB"


def test_bundled_model_says_what_it_is() -> None:
    manifest = read_manifest(REPOSITORY)
    assert "not for clinical use" in manifest.intended_use.lower()
    assert manifest.trained_labels and len(manifest.trained_labels) < 14
    assert set(manifest.thresholds) >= set(manifest.trained_labels)
    assert manifest.training_data and manifest.metrics


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_fixed_inputs_give_the_stored_probabilities(variant: str) -> None:
    stored = json.loads((REPOSITORY / REGRESSION_FILE).read_text())
    if variant not in stored["variants"]:
        pytest.skip(f"the bundled model has no {variant} variant")
    served = predict_regression_inputs(REPOSITORY, variant)
    assert served.keys() == stored["variants"][variant].keys()
    for name, expected in stored["variants"][variant].items():
        got = np.array([served[name][label] for label in expected])
        np.testing.assert_allclose(
            got, np.array(list(expected.values())), atol=stored["tolerance"], err_msg=name
        )
