"""``serving.predictor.Predictor``: variants of the validity gate, and the start-up self-check.

The HTTP tests (test_service.py) cover a gate that was evaluated; these cover the two other
states, through the same Predictor the service and ``cxr-msn predict`` use. Then the
self-check, through the Predictor, ``cxr-msn serve --check-only`` and ``bentoml serve``'s start-up
check (made before any worker starts, not when the service module is imported).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxrmsn.fileio import sha256_file
from cxrmsn.labels import LABELS
from cxrmsn.preprocess import preprocess
from cxrmsn.repository import REGRESSION_FILE, RepositoryError
from serving.predictor import PASSED, SKIPPED, Predictor, VariantRefusedError, load_predictor
from serving.schemas import ModelCard
from tests.helpers import chest_like_picture
from tests.serving.conftest import REPO_ROOT
from tests.serving.repository import NOT_VALIDATED, TRAINED

EVERY_LABEL_HIGH = dict.fromkeys(LABELS, 0.99)


def predictor_with(root: Path, repository: Path, change: Callable[[dict[str, Any]], None]) -> Predictor:
    """A copy of ``repository`` whose manifest.json ``change`` edited (the manifest is not hashed)."""
    copy = root / "model_repository"
    shutil.copytree(repository, copy)
    values = json.loads((copy / "manifest.json").read_text())
    change(values)
    (copy / "manifest.json").write_text(json.dumps(values))
    return load_predictor(copy, backend="onnxruntime", variant=None)


def test_a_repository_exported_before_the_gate_marks_no_label(tmp_path: Path, model_repository: Path) -> None:
    predictor = predictor_with(tmp_path, model_repository, lambda values: values.pop("validity_gate"))
    assert predictor.not_validated_labels == []
    assert predictor.positive_labels(EVERY_LABEL_HIGH) == ["Cardiomegaly", "No Finding"]
    assert not any(warning.startswith("not validated") for warning in predictor.model_warnings())
    card = predictor.model_card()
    assert card["not_validated_labels"] == [] and card["validity_gate"]["status"] == "absent"
    assert "before the validity gate" in card["validity_gate"]["reason"]
    ModelCard.model_validate(card)


def test_a_gate_that_could_not_be_evaluated_holds_back_every_trained_label(
    tmp_path: Path, model_repository: Path
) -> None:
    def not_evaluated(values: dict[str, Any]) -> None:
        values["validity_gate"].update(
            status="not_evaluated", reason="no per-label validation AUROC CIs", not_validated_labels=TRAINED
        )

    predictor = predictor_with(tmp_path, model_repository, not_evaluated)
    assert predictor.not_validated_labels == TRAINED  # label order
    assert predictor.positive_labels(EVERY_LABEL_HIGH) == []
    [warning] = [w for w in predictor.model_warnings() if w.startswith("not validated")]
    assert "no validation to check: no per-label validation AUROC CIs" in warning
    card = ModelCard.model_validate(predictor.model_card())
    assert card.validity_gate.status == "not_evaluated" and card.not_validated_labels == TRAINED


def test_the_evaluated_gate_only_holds_back_the_labels_it_failed(model_repository: Path) -> None:
    predictor = load_predictor(model_repository, backend="onnxruntime", variant=None)
    assert predictor.not_validated_labels == NOT_VALIDATED
    assert predictor.positive_labels(EVERY_LABEL_HIGH) == ["Cardiomegaly"]


# The start-up self-check: the stored regression inputs through the loaded variant, against
# the stored fp32 probabilities. Real ONNX Runtime on a real export; "deliberately wrong"
# regression values make it fail.


@pytest.fixture(scope="module")
def checked_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 and int8 of a nano classifier, with regression inputs: what the self-check runs."""
    from export.build import ExportOptions, export_repository
    from export.regression import write_regression_record
    from tests.export.conftest import save_classifier

    root = tmp_path_factory.mktemp("checked")
    checkpoint = save_classifier(root / "nano.safetensors", head_scale=20.0)
    repository = root / "model_repository"
    options = ExportOptions(variants=("fp32", "int8"), ort_optimised="never", generated_inputs=8)
    export_repository(checkpoint, repository, options)
    pictures = {f"picture {seed}": chest_like_picture(240, 200, seed=seed) for seed in (1, 2)}
    inputs = {name: preprocess((p / 255.0).astype(np.float32)) for name, p in pictures.items()}
    write_regression_record(repository, inputs, about="tests/serving/test_predictor.py")
    return repository


def with_regression_record(root: Path, repository: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``repository`` whose regression.json ``change`` edited, re-hashed in its manifest."""
    copy = root / "model_repository"
    shutil.copytree(repository, copy)
    record = json.loads((copy / REGRESSION_FILE).read_text())
    change(record)
    (copy / REGRESSION_FILE).write_text(json.dumps(record))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][REGRESSION_FILE] = sha256_file(copy / REGRESSION_FILE)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def shift_every_reference_probability(record: dict[str, Any]) -> None:
    for probabilities in record["reference"]["probabilities"].values():
        for label, value in probabilities.items():
            probabilities[label] = value + 0.25 if value < 0.5 else value - 0.25


def int8_tolerance_too_small(record: dict[str, Any]) -> None:
    record["variants"]["int8"]["tolerance"] = 1e-9  # int8 is never that close to fp32


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_the_self_check_passes_on_the_variant_as_exported(checked_repository: Path, variant: str) -> None:
    predictor = load_predictor(checked_repository, backend="onnxruntime", variant=variant, fallback="none")
    check = predictor.self_check
    assert (check.variant, check.status, predictor.variant) == (variant, PASSED, variant)
    assert check.max_abs_difference is not None and check.tolerance is not None
    assert check.max_abs_difference <= check.tolerance
    if variant == "fp32":
        assert check.max_abs_difference <= 1e-5 and check.tolerance == 1e-5
    else:  # compared with fp32, not with int8's own values
        assert check.max_abs_difference > 1e-6 and check.tolerance > 1e-5
    assert not any(w.startswith("served") for w in predictor.model_warnings())


def test_a_variant_that_fails_its_self_check_is_refused_naming_the_cpu(
    checked_repository: Path, tmp_path: Path
) -> None:
    broken = with_regression_record(tmp_path, checked_repository, shift_every_reference_probability)
    with pytest.raises(VariantRefusedError) as refused:
        load_predictor(broken, backend="onnxruntime", variant="int8", fallback="none")
    message = str(refused.value)
    # 0.25 shifted references, plus int8's own difference from fp32
    assert "\n" not in message and re.match(
        rf"refusing variant int8 of {re.escape(str(broken))}: int8 is up to 0\.[23]", message
    )
    for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni"):
        assert re.search(rf"\b{flag} (yes|no)\b", message) or "flags unknown" in message
    assert "CXR_MSN_VARIANT_FALLBACK=fp32" in message
    # fp32 fails these wrong values too: the fallback cannot rescue it
    with pytest.raises(VariantRefusedError, match=r"the fallback failed too: fp32 is up to 0\.2"):
        load_predictor(broken, backend="onnxruntime", variant="int8", fallback="fp32")


def test_with_a_fallback_fp32_is_served_with_a_warning(
    checked_repository: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = with_regression_record(tmp_path, checked_repository, int8_tolerance_too_small)
    monkeypatch.setenv("CXR_MSN_VARIANT_FALLBACK", "fp32")
    with caplog.at_level(logging.WARNING, logger="serving.predictor"):
        predictor = load_predictor(broken, backend="onnxruntime", variant="int8")
    assert predictor.variant == "fp32" and predictor.requested_variant == "int8"
    assert predictor.self_check.status == PASSED and predictor.self_check.variant == "fp32"
    assert predictor.model_summary()["variant"] == "fp32" and predictor.model_file.precision == "fp32"
    assert predictor.model_warnings()[0] == (
        "served fp32 instead of int8: int8 failed its start-up self-check on this CPU"
    )
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert (
        message.startswith("variant int8 failed its self-check: int8 is up to") and "avx512_vnni" in message
    )
    assert message.endswith("serving fp32 instead (CXR_MSN_VARIANT_FALLBACK=fp32)")
    monkeypatch.setenv("CXR_MSN_VARIANT_FALLBACK", "fp64")
    with pytest.raises(RepositoryError, match="CXR_MSN_VARIANT_FALLBACK=fp64: no such variant"):
        load_predictor(broken, backend="onnxruntime", variant="int8")


def test_a_repository_without_regression_values_skips_the_self_check_with_a_note(
    model_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="serving.predictor"):
        predictor = load_predictor(model_repository, backend="onnxruntime", variant=None, fallback="none")
    assert predictor.self_check.status == SKIPPED
    assert f"self-check of fp32 skipped: no regression.json in {model_repository}" in caplog.text


def test_cxr_msn_serve_refuses_with_status_2_or_falls_back(checked_repository: Path, tmp_path: Path) -> None:
    broken = with_regression_record(tmp_path, checked_repository, int8_tolerance_too_small)
    command = [str(Path(sys.executable).with_name("cxr-msn")), "serve", "--repository", str(broken)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_MSN_", "MODEL_REPOSITORY"))}
    refused = subprocess.run(
        [*command, "--variant", "int8", "--check-only"], capture_output=True, text=True, env=env, timeout=300
    )
    assert refused.returncode == 2
    [line] = [line for line in refused.stderr.splitlines() if line.startswith("cxr-msn serve:")]
    assert line.startswith("cxr-msn serve: refusing variant int8") and "avx512_vnni" in line
    fallback = subprocess.run(
        [*command, "--variant", "int8", "--variant-fallback", "fp32", "--check-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert fallback.returncode == 0, fallback.stderr
    assert "cxr-msn serve: served fp32 instead of int8" in fallback.stderr
    assert "fp32 passed: fp32 is up to 0 from the stored fp32 probabilities" in fallback.stderr


def test_the_service_refuses_to_start_on_a_failing_variant(checked_repository: Path, tmp_path: Path) -> None:
    broken = with_regression_record(tmp_path, checked_repository, shift_every_reference_probability)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_MSN_", "MODEL_REPOSITORY"))}
    env |= {"MODEL_REPOSITORY": str(broken), "CXR_MSN_VARIANT": "int8", "BENTOML_DO_NOT_TRACK": "true"}
    env["BENTOML_HOME"] = str(tmp_path / "bentoml-home")
    bentoml = Path(sys.executable).with_name("bentoml")
    result = subprocess.run(  # checked before any worker starts, not when the module is imported
        [str(bentoml), "serve", "serving.service:CXRService", "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"cxr-msn: refusing variant int8 of {broken}: int8 is up to"
    )


def test_cxr_msn_predict_refuses_a_failing_variant_in_one_line(
    checked_repository: Path, tmp_path: Path
) -> None:
    broken = with_regression_record(tmp_path, checked_repository, int8_tolerance_too_small)
    picture = tmp_path / "picture.png"
    from PIL import Image

    Image.new("L", (80, 80), 128).save(picture)
    command = [str(Path(sys.executable).with_name("cxr-msn")), "predict", str(picture)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_MSN_", "MODEL_REPOSITORY"))}
    refused = subprocess.run(
        [*command, "--repository", str(broken), "--variant", "int8"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert refused.returncode == 2
    [line] = [line for line in refused.stderr.splitlines() if line.startswith("cxr-msn predict:")]
    assert line.startswith("cxr-msn predict: refusing variant int8") and "avx512_vnni" in line
    assert "Traceback" not in refused.stderr
