"""The fp32 ONNX graph: interface, checker, single file, dynamic batch, parity with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from cxrmsn.checkpoint import load_classifier
from cxrmsn.labels import LABELS
from cxrmsn.repository import read_manifest
from export.errors import ExportError
from export.onnx_export import OPSET, check_onnx, expected_interface, export_onnx, read_interface
from export.parity import check_parity, torch_outputs
from export.runtime import cpu_session, generated_images, max_abs_difference, run
from tests.export.conftest import save_classifier

INTERFACE = expected_interface(image_size=224, num_labels=14, grid=(14, 14))


def fp32_path(repository: Path) -> Path:
    return repository / "cxr_msn" / "1" / "model.onnx"


def test_graph_has_the_promised_interface_and_passes_the_full_checker(nano_repository: Path) -> None:
    path = fp32_path(nano_repository)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert read_interface(model) == INTERFACE
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output]
    assert isinstance(dims[0][0], str) and dims[0][1:] == [14] and dims[1][1:] == [14, 14]
    assert {(o.domain or "ai.onnx", o.version) for o in model.opset_import} >= {("ai.onnx", OPSET)}
    ops = {node.op_type for node in model.graph.node}
    assert {"LayerNormalization", "Softmax", "Sigmoid"} <= ops


def test_model_is_one_self_contained_file(nano_repository: Path) -> None:
    path = fp32_path(nano_repository)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert json.loads(metadata["cxr_msn.labels"]) == list(LABELS)
    assert metadata["cxr_msn.precision"] == "fp32"


@pytest.mark.parametrize("batch", [1, 8])
def test_onnxruntime_matches_pytorch(nano_checkpoint: Path, nano_repository: Path, batch: int) -> None:
    model, _ = load_classifier(nano_checkpoint)
    images = generated_images(batch, image_size=224, seed=100 + batch)
    difference = max_abs_difference(
        run(cpu_session(fp32_path(nano_repository)), images), torch_outputs(model, images)
    )
    assert max(difference.values()) <= 1e-4, difference
    assert run(cpu_session(fp32_path(nano_repository)), images)[0].shape == (batch, 14)


def test_parity_figures_are_in_the_manifest(nano_repository: Path) -> None:
    parity = read_manifest(nano_repository).models["fp32"].notes["parity_vs_pytorch"]
    assert parity["tolerance"] == 1e-4
    for batch in (1, 8):
        assert set(parity[f"batch_{batch}"]) == {"probabilities", "attention"}
        assert 0 <= max(parity[f"batch_{batch}"].values()) <= 1e-4


def test_batch_dimension_is_dynamic(nano_repository: Path) -> None:
    session = cpu_session(fp32_path(nano_repository))
    for batch in (3, 5):
        probabilities, attention = run(session, generated_images(batch, image_size=224), batch_size=batch)
        assert probabilities.shape == (batch, 14) and attention.shape == (batch, 14, 14)
        assert np.all((probabilities > 0) & (probabilities < 1))
        np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=0.05)  # CLS-to-CLS share left out


def test_parity_check_fails_for_a_different_model(nano_repository: Path, tmp_path: Path) -> None:
    other, _ = load_classifier(save_classifier(tmp_path / "other.safetensors", seed=1))
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_parity(other, fp32_path(nano_repository), image_size=224, batch_sizes=(1,))


def test_vit_tiny_exports_within_tolerance(tmp_path: Path) -> None:
    model, _ = load_classifier(save_classifier(tmp_path / "tiny.safetensors", arch="vit_tiny_patch16_224"))
    path = tmp_path / "tiny.onnx"
    export_onnx(model, path, image_size=224)
    check_onnx(path, INTERFACE)
    figures = check_parity(model, path, image_size=224)
    assert max(figures["batch_8"].values()) <= 1e-4


def test_checker_refuses_a_wrong_interface(nano_repository: Path) -> None:
    wrong = expected_interface(image_size=224, num_labels=13, grid=(14, 14))
    with pytest.raises(ExportError, match="has interface"):
        check_onnx(fp32_path(nano_repository), wrong)
