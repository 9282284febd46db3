"""The repository layout serving relies on: manifest, hashes, Triton configs, labels, twin."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cxrmsn.fileio import sha256_file
from cxrmsn.labels import LABELS
from cxrmsn.preprocess import DEFAULT_PREPROCESS
from cxrmsn.repository import MANIFEST_NAME, RepositoryError, read_manifest, verified_model_path
from export.build import TRITON_MODELS, TWIN_MODEL
from export.onnx_export import read_interface

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16}


def parse_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())


def test_manifest_describes_the_checkpoint_and_every_variant(
    nano_repository: Path, nano_checkpoint: Path
) -> None:
    manifest = read_manifest(nano_repository)
    assert sorted(manifest.models) == ["fp16", "fp32", "int8"] and manifest.default_variant == "fp32"
    assert manifest.labels == list(LABELS) and manifest.preprocessing == DEFAULT_PREPROCESS.to_dict()
    assert manifest.architecture == "vit_nano_patch16_224" and manifest.trained_labels == []
    assert (
        "untrained" in manifest.training_data["summary"] and "not for clinical use" in manifest.intended_use
    )
    assert manifest.source_checkpoint["sha256"] == sha256_file(nano_checkpoint)
    assert manifest.source_checkpoint["path"] == str(nano_checkpoint)
    assert manifest.io["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert [o["name"] for o in manifest.io["outputs"]] == ["probabilities", "attention"]
    assert manifest.io["max_batch_size"] == 32 and manifest.io["python_twin"] == TWIN_MODEL
    for name, entry in manifest.models.items():
        assert (
            entry.triton_model == TRITON_MODELS[name] and entry.path == f"{entry.triton_model}/1/model.onnx"
        )
        assert verified_model_path(nano_repository, manifest, name) == nano_repository / entry.path


def test_every_file_is_hashed_in_the_manifest(nano_repository: Path) -> None:
    manifest = read_manifest(nano_repository)
    on_disk = {p.relative_to(nano_repository).as_posix() for p in nano_repository.rglob("*") if p.is_file()}
    models = {entry.path for entry in manifest.models.values()}
    assert on_disk == {MANIFEST_NAME} | models | set(manifest.files)
    for relative, digest in manifest.files.items():
        assert sha256_file(nano_repository / relative) == digest, relative
    for entry in manifest.models.values():
        assert (nano_repository / entry.path).stat().st_size == entry.bytes
    assert not [p for p in nano_repository.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_tampered_model_file_is_refused(nano_repository: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(nano_repository, copy)
    manifest = read_manifest(copy)
    int8 = copy / manifest.models["int8"].path
    data = bytearray(int8.read_bytes())
    data[len(data) // 2] ^= 0xFF
    int8.write_bytes(bytes(data))
    with pytest.raises(RepositoryError, match="modified or corrupt"):
        verified_model_path(copy, manifest, "int8")


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_triton_configs_match_the_onnx_graph(nano_repository: Path, variant: str) -> None:
    manifest = read_manifest(nano_repository)
    entry = manifest.models[variant]
    folder = nano_repository / entry.triton_model
    graph = onnx.load(str(nano_repository / entry.path)).graph
    configs = [folder / "config.pbtxt"] + ([folder / "configs" / "gpu.pbtxt"] if variant != "int8" else [])
    for path in configs:
        config = parse_config(path)
        assert config.name == entry.triton_model and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 32 and config.HasField("dynamic_batching")
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
        for declared, actual in [(config.input, graph.input), (config.output, graph.output)]:
            assert [t.name for t in declared] == [v.name for v in actual]
            for tensor, value in zip(declared, actual, strict=True):
                assert tensor.data_type == ONNX_TO_TRITON[value.type.tensor_type.elem_type]
                dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
                assert list(tensor.dims) == dims[1:]  # batch dimension implicit (max_batch_size > 0)
                assert not value.type.tensor_type.shape.dim[0].HasField("dim_value")
        assert config.output[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text(encoding="utf-8").splitlines() == list(LABELS)


def test_cpu_and_gpu_configs_differ_where_they_should(nano_repository: Path) -> None:
    cpu = parse_config(nano_repository / "cxr_msn" / "config.pbtxt")
    gpu = parse_config(nano_repository / "cxr_msn" / "configs" / "gpu.pbtxt")
    assert [g.kind for g in cpu.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert [g.kind for g in gpu.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator
    (accelerator,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_layer_norm_fp32_fallback"] == "1"
    assert accelerator.parameters["trt_profile_max_shapes"] == "image:32x3x224x224"
    assert accelerator.parameters["trt_profile_min_shapes"] == "image:1x3x224x224"


def test_python_twin_points_at_the_fp32_file_by_hash(nano_repository: Path) -> None:
    manifest = read_manifest(nano_repository)
    config = parse_config(nano_repository / TWIN_MODEL / "config.pbtxt")
    assert config.name == TWIN_MODEL and config.backend == "python" and not config.platform
    fp32 = manifest.models["fp32"]
    assert config.parameters["onnx_model"].string_value == fp32.path
    assert config.parameters["onnx_sha256"].string_value == fp32.sha256
    interface = read_interface(onnx.load(str(nano_repository / fp32.path)))
    assert [t.name for t in config.output] == [spec.name for spec in interface.outputs]
    assert [list(t.dims) for t in config.output] == [list(spec.shape[1:]) for spec in interface.outputs]
    assert (nano_repository / TWIN_MODEL / "1" / "model.py").read_text().count("class TritonPythonModel") == 1
