"""The out-of-distribution guard at export (issue 20 item 1): fitted on the training images,
put into the graph as ``ood_score``, its threshold in the manifest; and its rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cxrmsn import ood
from cxrmsn.preprocess import DEFAULT_PREPROCESS
from cxrmsn.repository import read_manifest
from export.onnx_export import OOD_OUTPUT, guard_nodes
from export.runtime import cpu_session, run
from export.validation import read_image_manifest
from tests.export.conftest import write_validation_set


@pytest.fixture(scope="module")
def fit_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_validation_set(tmp_path_factory.mktemp("fit"), count=40, seed=1)


@pytest.fixture(scope="module")
def guarded_repository(
    tmp_path_factory: pytest.TempPathFactory,
    nano_checkpoint: Path,
    validation_manifest: Path,
    fit_manifest: Path,
) -> Path:
    from export.build import ExportOptions, export_repository

    out = tmp_path_factory.mktemp("guarded") / "model_repository"
    options = ExportOptions(
        validation_manifest=validation_manifest, ood_fit_manifest=fit_manifest, ort_optimised="never"
    )
    export_repository(nano_checkpoint, out, options)
    return out


def test_export_writes_the_score_output_and_the_threshold(guarded_repository: Path) -> None:
    manifest = read_manifest(guarded_repository)
    guard = manifest.ood_guard
    assert guard is not None and guard.output == OOD_OUTPUT and guard.score == ood.SCORE_KIND
    assert guard.fitted_on["images"] == 40 and guard.fitted_on["embedding_dim"] == 64
    assert guard.threshold_on["train_out_of_fold"]["images"] == 40
    assert guard.threshold_on["valid"]["images"] == 16
    assert "99.5th percentile" in guard.threshold_rule and "never the test split" in guard.threshold_rule
    assert guard.modalities == ["CR", "DX", "DR"]
    assert math.isfinite(guard.threshold) and guard.threshold > 0
    assert {"name": OOD_OUTPUT, "datatype": "FP32", "shape": [-1]} in manifest.io["outputs"]
    for variant, entry in manifest.models.items():
        session = cpu_session(guarded_repository / entry.path)
        assert [output.name for output in session.get_outputs()][-1] == OOD_OUTPUT, variant
        config = (guarded_repository / entry.triton_model / "config.pbtxt").read_text()
        assert f'name: "{OOD_OUTPUT}"' in config and "reshape: { shape: [ ] }" in config
    twin = (guarded_repository / "cxr_msn_python" / "config.pbtxt").read_text()
    assert f'name: "{OOD_OUTPUT}"' in twin


def test_the_threshold_is_the_rule_applied_to_held_out_scores() -> None:
    rng = np.random.default_rng(0)
    train, valid = rng.normal(size=(100, 40)), rng.normal(size=(50, 40))  # few images per dimension
    fit = ood.fit_guard(train, valid)
    pooled = np.r_[fit.held_out_scores["train_out_of_fold"], fit.held_out_scores["valid"]]
    assert fit.threshold == pytest.approx(np.percentile(pooled, ood.THRESHOLD_PERCENTILE))
    # Out of fold, training images score like unseen ones, not like the images the fit has seen.
    assert np.median(fit.held_out_scores["train_out_of_fold"]) > np.median(fit.score(train))


def test_the_in_graph_score_equals_a_numpy_mahalanobis_distance(
    guarded_repository: Path, nano_checkpoint: Path, fit_manifest: Path, validation_manifest: Path
) -> None:
    import torch
    from sklearn.covariance import LedoitWolf

    from cxrmsn.checkpoint import load_classifier

    model, _ = load_classifier(nano_checkpoint)
    fit_images = read_image_manifest(fit_manifest, DEFAULT_PREPROCESS).images
    probe = np.concatenate(
        [read_image_manifest(validation_manifest, DEFAULT_PREPROCESS).images[:6], fit_images[:2]]
    )
    noise = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    probe = np.concatenate([probe, noise])
    with torch.no_grad():
        train = model.eval().embed(torch.from_numpy(fit_images)).numpy().astype(np.float64)  # type: ignore[operator]
        embeddings = model.embed(torch.from_numpy(probe)).numpy().astype(np.float64)  # type: ignore[operator]
    mean = train.mean(axis=0)
    precision = np.linalg.inv(LedoitWolf().fit(train).covariance_)
    expected = ood.mahalanobis(embeddings, mean, precision)
    manifest = read_manifest(guarded_repository)
    _, _, scores = run(cpu_session(guarded_repository / manifest.models["fp32"].path), probe)
    np.testing.assert_allclose(scores, expected, rtol=2e-4)
    assert scores[-2:].min() > manifest.ood_guard.threshold  # type: ignore[union-attr]  # noise is out


def test_the_guard_stays_fp32_in_the_int8_and_fp16_models(
    guarded_repository: Path, fit_manifest: Path
) -> None:
    import onnx

    manifest = read_manifest(guarded_repository)
    images = read_image_manifest(fit_manifest, DEFAULT_PREPROCESS).images[:8]
    fp32 = run(cpu_session(guarded_repository / manifest.models["fp32"].path), images)[2]
    fp16 = run(cpu_session(guarded_repository / manifest.models["fp16"].path), images)[2]
    # The encoder's fp16 arithmetic moves the embedding (4 % here: a random model); no more than that.
    np.testing.assert_allclose(fp16, fp32, rtol=0.1)
    for variant in ("int8", "fp16"):
        model = onnx.load(str(guarded_repository / manifest.models[variant].path))
        guard = guard_nodes(model)
        assert guard, variant
        nodes = [node for node in model.graph.node if node.name in guard]
        assert not {node.op_type for node in nodes} & {"MatMulInteger", "DynamicQuantizeLinear"}, variant
        constants = {init.name: init.data_type for init in model.graph.initializer}
        used = [constants[name] for node in nodes for name in node.input if name in constants]
        low = {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
        assert onnx.TensorProto.FLOAT in used and not low & set(used), (variant, used)


def test_a_repository_exported_without_a_fit_set_has_no_guard(nano_repository: Path) -> None:
    manifest = read_manifest(nano_repository)
    assert manifest.ood_guard is None
    assert OOD_OUTPUT not in [output["name"] for output in manifest.io["outputs"]]


@pytest.mark.parametrize(
    ("score", "modality", "view", "refused"),
    [
        (5.0, None, None, False),
        (11.0, None, None, True),
        (float("nan"), None, None, True),
        (5.0, "CT", None, True),
        (5.0, "DX", "PA", False),
        (5.0, "DR", "LL", False),  # a lateral: the training data's LATERAL view
        (5.0, "CR", "OBLIQUE", True),
        (5.0, None, "", False),
        (None, "MR", None, True),  # no guard: the header still decides
        (None, "CR", None, False),
        (5.0, "OT", None, False),  # a chest film stored as a Secondary Capture: the score decides
        (5.0, "SC", "PA", False),
        (11.0, "OT", None, True),
    ],
)
def test_the_rule(score: float | None, modality: str | None, view: str | None, refused: bool) -> None:
    views = ood.covered_views(["PA", "AP", "LATERAL", ""])
    verdict = ood.decide(
        score, None if score is None else 10.0, modality=modality, view_position=view, views=views
    )
    assert verdict.refused is refused
    if refused:
        assert verdict.detail()


def test_covered_views_maps_the_data_manifest_to_dicom_view_positions() -> None:
    assert ood.covered_views(["PA", "AP", "PA", None, ""]) == ["AP", "PA"]
    assert set(ood.covered_views(["LATERAL"])) == {"LATERAL", "LAT", "LL", "RL"}
