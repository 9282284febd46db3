"""fp16 and int8 variants: what stays fp32, what is quantised, and what each costs."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from cxrmsn.repository import read_manifest
from export.build import ExportOptions, export_repository, keep_optimised
from export.fp16 import (
    FP16_SAFE_LIMIT,
    FP32_OP_TYPES,
    _copy_without_value_info,
    convert_to_fp16,
    topological_sort,
)
from export.onnx_export import export_onnx
from export.runtime import cpu_session, generated_images, max_abs_difference, run
from tests.export.conftest import save_classifier

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({init.name: init.data_type for init in inferred.graph.initializer})
    return types


def test_fp16_keeps_layernorm_and_softmax_in_fp32(nano_repository: Path) -> None:
    model = onnx.load(str(nano_repository / "cxr_msn_fp16" / "1" / "model.onnx"))
    types = value_types(model)
    kept = [node for node in model.graph.node if node.op_type in FP32_OP_TYPES]
    # per block: 2 LayerNorm, 1 Softmax; final norm; side path (norm, softmax); the output Sigmoid
    assert len(kept) == 2 * 2 + 1 + 1 + 2 + 1
    for node in kept:
        assert all(types[name] == FLOAT for name in node.input if name), node.name
        assert all(types[name] == FLOAT for name in node.output), node.name
    matmuls = [node for node in model.graph.node if node.op_type == "MatMul"]
    assert matmuls and all(types[node.output[0]] == FLOAT16 for node in matmuls)
    assert [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]] == [FLOAT] * 3


def test_fp16_difference_is_measured_and_recorded(nano_repository: Path) -> None:
    manifest = read_manifest(nano_repository)
    notes = manifest.models["fp16"].notes
    assert notes["fp32_op_types"] == list(FP32_OP_TYPES)
    assert notes["fp32_nodes_out_of_fp16_range"] == []
    images = generated_images(4, image_size=224, seed=5)
    fp32 = run(cpu_session(nano_repository / manifest.models["fp32"].path), images)
    fp16 = run(cpu_session(nano_repository / manifest.models["fp16"].path), images)
    difference = max_abs_difference(fp16, fp32)
    assert 0 < difference["probabilities"] < 2e-3 and 0 < difference["attention"] < 1e-4
    recorded = notes["max_abs_diff_vs_fp32"]  # on the validation images, head weights x20
    assert 0 < recorded["probabilities"] < 1e-2 and 0 < recorded["attention"] < 1e-4
    assert manifest.models["fp16"].bytes < 0.65 * manifest.models["fp32"].bytes


def test_nodes_beyond_fp16_range_stay_fp32_end_to_end(tmp_path: Path) -> None:
    """A block whose MLP output reaches ~1e5 (fp16 max: 65504) is found and kept fp32."""
    import torch

    from cxrmsn.checkpoint import load_classifier

    model, _ = load_classifier(save_classifier(tmp_path / "nano.safetensors"))
    fc2 = model.get_submodule("encoder.blocks.0.mlp.fc2")
    assert isinstance(fc2, torch.nn.Linear)
    with torch.no_grad():
        fc2.weight.mul_(1e6)
    export_onnx(model, tmp_path / "huge.onnx", image_size=224)
    source = onnx.load(str(tmp_path / "huge.onnx"))
    images = generated_images(4, image_size=224, seed=3)
    converted, notes = convert_to_fp16(source, images)
    onnx.checker.check_model(converted, full_check=True)

    flagged = set(notes["fp32_nodes_out_of_fp16_range"])
    assert notes["max_abs_activation_fp32"] > 65504 and flagged
    nodes = {node.name: node for node in converted.graph.node}
    assert {nodes[name].op_type for name in flagged} >= {"MatMul", "Add"}
    types = value_types(converted)
    for name in flagged:  # fp32 in and out, and fed fp32 by flagged producers without a trip through fp16
        assert all(types[i] == FLOAT for i in nodes[name].input) and types[nodes[name].output[0]] == FLOAT
    produced_by = {out: node.name for node in converted.graph.node for out in node.output}
    assert any(produced_by.get(i) in flagged for name in flagged for i in nodes[name].input)

    reference = run(cpu_session(tmp_path / "huge.onnx"), images)
    ours = max_abs_difference(run(cpu_session(converted.SerializeToString()), images), reference)
    from onnxruntime.transformers.float16 import convert_float_to_float16

    naive = convert_float_to_float16(
        _copy_without_value_info(source), keep_io_types=True, op_block_list=list(FP32_OP_TYPES)
    )
    topological_sort(naive.graph)
    theirs = max_abs_difference(run(cpu_session(naive.SerializeToString()), images), reference)
    # onnxruntime's CPU runs most fp16 ops in fp32 through inserted casts, so the naive graph
    # does not overflow here; it still loses precision where the big values are stored as fp16.
    assert ours["probabilities"] < theirs["probabilities"] / 5, (ours, theirs)
    assert FP16_SAFE_LIMIT == 65504 / 4


def test_int8_quantises_matmuls_and_records_its_cost(nano_repository: Path) -> None:
    manifest = read_manifest(nano_repository)
    entry = manifest.models["int8"]
    ops = [node.op_type for node in onnx.load(str(nano_repository / entry.path)).graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert "ConvInteger" not in ops  # the patch embedding stays fp32
    assert entry.precision == "int8" and entry.notes["quantised_op_types"] == ["MatMul", "Gemm"]
    assert entry.bytes < 0.8 * manifest.models["fp32"].bytes
    images = generated_images(4, image_size=224, seed=6)
    difference = max_abs_difference(
        run(cpu_session(nano_repository / entry.path), images),
        run(cpu_session(nano_repository / manifest.models["fp32"].path), images),
    )
    assert 1e-6 < difference["probabilities"] < 0.1
    assert not (nano_repository / "cxr_msn_int8" / "configs").exists()  # CPU-only variant


@pytest.mark.parametrize("mode", ["always", "never"])
def test_onnxruntime_optimised_variant_follows_the_option(
    nano_checkpoint: Path, tmp_path: Path, mode: str
) -> None:
    options = ExportOptions(variants=("fp32",), ort_optimised=mode)
    manifest = export_repository(nano_checkpoint, tmp_path / "repo", options)
    decision = manifest.models["fp32"].notes["ort_offline_optimisation"]
    if mode == "never":
        assert "fp32_optimised" not in manifest.models and decision == {
            "measured": False,
            "kept": False,
            "reason": "--ort-optimised never",
        }
        return
    entry = manifest.models["fp32_optimised"]
    assert decision["measured"] and set(decision["speedup_vs_fp32"]) == {"batch_1", "batch_8"}
    ops = {(node.domain, node.op_type) for node in onnx.load(str(tmp_path / "repo" / entry.path)).graph.node}
    assert any(domain == "com.microsoft" for domain, _ in ops)  # fused kernels: CPU onnxruntime only
    assert max(entry.notes["max_abs_diff_vs_fp32"].values()) < 1e-4
    assert not (tmp_path / "repo" / entry.triton_model / "configs").exists()


@pytest.mark.parametrize(
    ("mode", "speedups", "kept"),
    [
        ("auto", {"batch_1": 1.3, "batch_8": 1.12}, True),
        ("auto", {"batch_1": 1.3, "batch_8": 1.05}, False),
        ("auto", {"batch_1": 0.9, "batch_8": 0.95}, False),
        ("always", {"batch_1": 0.9, "batch_8": 0.95}, True),
    ],
)
def test_auto_keeps_the_optimised_model_only_when_faster_at_every_batch_size(
    mode: str, speedups: dict[str, float], kept: bool
) -> None:
    assert keep_optimised(mode, speedups) is kept
