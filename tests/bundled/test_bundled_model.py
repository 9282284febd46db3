"""The bundled model: intact, served through the real path, and still giving its stored answers.

Only fp32's probabilities are pinned (to 1e-5); int8 is compared with them within its
tolerance: twice the largest difference from fp32 that export measured on the validation
split (``fp32_agreement``), or, for a manifest written before that record, twice the
difference in its export notes. A repository whose regression.json predates the stored
model inputs (format 1) is self-checked here on a copy with the inputs written again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrmsn.repository import (
    REGRESSION_INPUTS_FILE,
    read_manifest,
    read_regression_record,
    verified_model_path,
)
from recipes.bundled_model import predict_regression_inputs, write_regression_values
from serving.predictor import PASSED, load_predictor

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
def test_fixed_inputs_give_the_fp32_probabilities_within_the_variants_tolerance(variant: str) -> None:
    manifest = read_manifest(REPOSITORY)
    if variant not in manifest.models:
        pytest.skip(f"the bundled model has no {variant} variant")
    record = read_regression_record(REPOSITORY, manifest)
    assert record is not None, "the bundled model has no regression.json"
    tolerance = record.tolerance(variant, manifest)
    # int8: the logistic head on standardized embeddings magnifies small encoder errors (max 0.096 and
    # mean 0.005 on the 149 validation images at export); the bound catches a broken int8 model
    assert tolerance.value <= (1e-5 if variant == "fp32" else 0.25), tolerance
    served = predict_regression_inputs(REPOSITORY, variant)
    assert served.keys() == record.reference.keys()
    for name, expected in record.reference.items():
        got = np.array([served[name][label] for label in expected])
        np.testing.assert_allclose(
            got,
            np.array(list(expected.values())),
            rtol=0,
            atol=tolerance.value,
            err_msg=f"{name}: {variant} against fp32, tolerance {tolerance.source}",
        )


def test_the_int8_variant_records_how_it_was_made() -> None:
    manifest = read_manifest(REPOSITORY)
    if "int8" not in manifest.models:
        pytest.skip("the bundled model has no int8 variant")
    entry = manifest.models["int8"]
    if entry.fp32_agreement is None:
        pytest.skip("the bundled model was exported before int8 recorded its format (make bundled-model)")
    quantisation = entry.notes["quantisation"]
    assert quantisation["reduce_range"] and quantisation["weight_type"] == "QInt8"
    assert entry.notes["int16_pair_sums"]["saturation_free"]
    assert entry.fp32_agreement.max_abs_difference <= entry.fp32_agreement.tolerance <= 0.25
    assert entry.fp32_agreement.mean_abs_difference <= 0.01
    assert abs(entry.notes["auroc"]["macro_auroc_change"]) <= 0.01
    assert quantisation["head_fp32"] and quantisation["kept_fp32"]["nodes"]
    assert "valid" in entry.fp32_agreement.compared_on


@pytest.fixture(scope="module")
def self_checked_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled repository itself, or, if its regression.json stores no inputs yet, a copy that does."""
    record = read_regression_record(REPOSITORY, read_manifest(REPOSITORY))
    if record is not None and record.inputs_file is not None:
        return REPOSITORY
    copy = tmp_path_factory.mktemp("bundled") / "model_repository"
    shutil.copytree(REPOSITORY, copy)
    write_regression_values(copy)
    return copy


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_the_bundled_model_passes_its_start_up_self_check(
    self_checked_repository: Path, variant: str
) -> None:
    manifest = read_manifest(self_checked_repository)
    if variant not in manifest.models:
        pytest.skip(f"the bundled model has no {variant} variant")
    assert (self_checked_repository / REGRESSION_INPUTS_FILE).is_file()
    predictor = load_predictor(
        self_checked_repository, variant=variant, backend="onnxruntime", fallback="none"
    )
    check = predictor.self_check
    assert check.status == PASSED and predictor.variant == variant, check
    assert check.max_abs_difference is not None and check.tolerance is not None
    assert check.max_abs_difference <= check.tolerance
