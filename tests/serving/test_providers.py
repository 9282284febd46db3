"""ONNX Runtime providers: CUDA by default where present, TensorRT only with its options (fp16,
an engine cache outside the model repository, one shape profile for batches 1-32), and the
providers the session really got in the log."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from serving.backends import (
    CPU,
    CUDA,
    TENSORRT,
    OnnxRuntimeBackend,
    session_providers,
    tensorrt_cache_dir,
    tensorrt_options,
)
from serving.config import ServingConfig

GPU_BUILD = [TENSORRT, CUDA, CPU]


def test_default_is_cuda_then_cpu_never_an_unconfigured_tensorrt() -> None:
    assert session_providers((), GPU_BUILD, image_size=224) == [CUDA, CPU]
    assert session_providers((), [CPU], image_size=224) == [CPU]


def test_requested_tensorrt_gets_fp16_a_cache_and_a_1_to_32_profile(tmp_path: Path) -> None:
    providers = session_providers(
        (TENSORRT, CUDA, CPU), GPU_BUILD, image_size=224, cache_dir=tmp_path / "trt"
    )
    name, options = providers[0]
    assert name == TENSORRT and providers[1:] == [CUDA, CPU]
    assert options["trt_fp16_enable"] == "True" and options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    assert options["trt_profile_min_shapes"] == "image:1x3x224x224"
    assert options["trt_profile_max_shapes"] == "image:32x3x224x224"


def test_the_image_size_is_only_worked_out_for_tensorrt(tmp_path: Path) -> None:
    def size() -> int:
        raise AssertionError("not needed without TensorRT")

    assert session_providers((CUDA,), GPU_BUILD, image_size=size) == [CUDA]
    options = session_providers((TENSORRT,), GPU_BUILD, image_size=lambda: 64, cache_dir=tmp_path)[0][1]
    assert options["trt_profile_opt_shapes"] == "image:8x3x64x64"


def test_a_provider_onnxruntime_lacks_is_refused_not_skipped() -> None:
    with pytest.raises(ValueError, match="CUDAExecutionProvider"):
        session_providers((CUDA, CPU), [CPU], image_size=224)


def test_the_engine_cache_is_outside_the_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXR_MSN_TRT_CACHE", str(tmp_path / "engines"))
    assert tensorrt_cache_dir() == tmp_path / "engines"
    monkeypatch.delenv("CXR_MSN_TRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tensorrt_cache_dir() == tmp_path / "xdg" / "cxr-msn" / "trt"
    assert tensorrt_options(tmp_path, image_size=224)["trt_timing_cache_path"] == str(tmp_path)


def _tiny_model(path: Path) -> Path:
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])
    probabilities = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])
    attention = helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["batch", 3, 16])
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes23"], ["probabilities"], keepdims=0),
        helper.make_node("ReduceMean", ["image", "axes3"], ["attention"], keepdims=0),
    ]
    initialisers = [
        helper.make_tensor("axes23", TensorProto.INT64, [2], [2, 3]),
        helper.make_tensor("axes3", TensorProto.INT64, [1], [3]),
    ]
    graph = helper.make_graph(nodes, "tiny", [image], [probabilities, attention], initialisers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_the_backend_logs_the_providers_the_session_really_got(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _tiny_model(tmp_path / "tiny.onnx")
    with caplog.at_level(logging.INFO, logger="serving.backends"):
        backend = OnnxRuntimeBackend(path, ServingConfig(intra_op_threads=1))
    assert backend.providers == backend.session.get_providers() == [CPU]
    assert "CPUExecutionProvider" in backend.description
    assert any("tiny.onnx" in r.message and CPU in r.message for r in caplog.records)


class _FakeSession:
    def __init__(self, providers: list[str]) -> None:
        self._providers = providers

    def get_providers(self) -> list[str]:
        return self._providers


def test_the_benchmark_labels_by_the_running_provider_and_refuses_a_fallback() -> None:
    from export.benchmark import ProviderFallbackError, running_provider

    assert running_provider(_FakeSession([CPU]), "cpu") == CPU
    assert running_provider(_FakeSession([CUDA, CPU]), "cuda") == CUDA
    with pytest.raises(ProviderFallbackError, match="runs on CPUExecutionProvider"):
        running_provider(_FakeSession([CPU]), "cuda")  # onnxruntime-gpu without its CUDA libraries
    with pytest.raises(ProviderFallbackError, match="asked for TensorrtExecutionProvider"):
        running_provider(_FakeSession([CUDA, CPU]), "tensorrt")


def test_the_benchmark_uses_the_serving_tensorrt_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from export.benchmark import tensorrt_options as benchmark_options

    monkeypatch.setenv("CXR_MSN_TRT_CACHE", str(tmp_path / "cache"))
    repository = tmp_path / "repo" / "cxr_msn" / "1"
    options = benchmark_options(repository / "model.onnx", max_batch=8, image_size=224)
    assert options["trt_fp16_enable"] == "True"
    assert options["trt_profile_max_shapes"] == "image:32x3x224x224"
    assert Path(options["trt_engine_cache_path"]).is_relative_to(tmp_path / "cache")
    assert not repository.exists()
