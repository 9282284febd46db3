"""Inference backends behind one interface: ONNX Runtime in-process, or a remote Triton.

Each takes a float32 batch [B, 3, H, W] and returns (probabilities [B, 14],
attention [B, gh, gw]) as float32 numpy arrays (``infer``); ``infer_scored`` adds the
out-of-distribution score [B] of a guarded graph (its ``ood_score`` output), or None for a
graph exported without the guard. No torch.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serving.config import ServingConfig

LOGGER = logging.getLogger(__name__)
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "attention")
OOD_OUTPUT = "ood_score"
Scored = tuple[np.ndarray, np.ndarray, np.ndarray | None]
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TRT_PROFILE_MAX = 32  # TensorRT's shape profile covers batches 1..32: one engine for all of them


def tensorrt_cache_dir() -> Path:
    """Where TensorRT engines are cached: CXR_MSN_TRT_CACHE, else a folder under the user's
    cache (or the temporary folder), never the model repository (read-only in a container)."""
    configured = os.environ.get("CXR_MSN_TRT_CACHE", "")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base else Path.home() / ".cache"
    if not os.access(root if root.exists() else root.parent, os.W_OK):
        root = Path(tempfile.gettempdir())
    return root / "cxr-msn" / "trt"


def tensorrt_options(
    cache_dir: Path, *, image_size: int, max_batch: int = TRT_PROFILE_MAX, input_name: str = INPUT_NAME
) -> dict[str, str]:
    """TensorRT provider options as configs/gpu.pbtxt configures Triton's accelerator: fp16,
    an engine cache (built once per GPU and TensorRT version, reused across restarts) and one
    shape profile for batches 1..``max_batch`` (no rebuild per new batch size)."""
    dims = f"3x{image_size}x{image_size}"
    return {
        "trt_fp16_enable": "True",
        "trt_layer_norm_fp32_fallback": "True",
        "trt_max_workspace_size": str(1 << 30),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": f"{input_name}:1x{dims}",
        "trt_profile_opt_shapes": f"{input_name}:{min(8, max_batch)}x{dims}",
        "trt_profile_max_shapes": f"{input_name}:{max_batch}x{dims}",
    }


def session_providers(
    requested: tuple[str, ...] | list[str],
    available: list[str],
    *,
    image_size: int | Callable[[], int],
    cache_dir: Path | None = None,
) -> list[Any]:
    """The providers for an InferenceSession. Nothing requested: CUDA where onnxruntime-gpu
    has it, then the CPU (TensorRT only when asked for: its first engine build takes minutes).
    TensorRT, when requested, gets ``tensorrt_options``; names onnxruntime lacks are refused
    rather than silently skipped."""
    if not requested:
        return [p for p in (CUDA, CPU) if p in available] or list(available)
    missing = [p for p in requested if p not in available]
    if missing:
        raise ValueError(
            f"CXR_MSN_ORT_PROVIDERS asks for {missing}, onnxruntime here has {available} "
            "(onnxruntime-gpu with its CUDA libraries for the GPU providers)"
        )
    providers: list[Any] = []
    for name in requested:
        if name == TENSORRT:
            folder = cache_dir or tensorrt_cache_dir()
            folder.mkdir(parents=True, exist_ok=True)
            size = image_size if isinstance(image_size, int) else image_size()
            providers.append((name, tensorrt_options(folder, image_size=size)))
        else:
            providers.append(name)
    return providers


class Backend(Protocol):
    description: str
    has_ood_score: bool

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def infer_scored(self, batch: np.ndarray) -> Scored: ...


class OnnxRuntimeBackend:
    """ONNX Runtime in this process; CUDA/TensorRT providers when onnxruntime-gpu has a GPU."""

    def __init__(self, model_path: Path, config: ServingConfig) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One request's batch uses every core; batches run one at a time (see MicroBatcher).
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle inference threads must not spin: decoding shares these cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers = session_providers(
            config.providers, ort.get_available_providers(), image_size=lambda: _input_size(model_path)
        )
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        running = self.session.get_providers()  # what the session really got, not what was asked
        self.providers = running
        self.description = f"onnxruntime {ort.__version__} ({', '.join(running)})"
        LOGGER.info("loaded %s with %s", model_path.name, self.description)
        wanted = [p if isinstance(p, str) else p[0] for p in providers]
        if wanted and running[0] != wanted[0]:
            LOGGER.warning("asked for %s first, but the session runs on %s", wanted[0], running[0])
        self.has_ood_score = OOD_OUTPUT in {output.name for output in self.session.get_outputs()}
        self._outputs = [*OUTPUT_NAMES, *([OOD_OUTPUT] if self.has_ood_score else [])]

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, attention = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return np.asarray(probabilities), np.asarray(attention)

    def infer_scored(self, batch: np.ndarray) -> Scored:
        outputs = self.session.run(self._outputs, {INPUT_NAME: batch})
        score = np.asarray(outputs[2]).reshape(-1) if self.has_ood_score else None
        return np.asarray(outputs[0]), np.asarray(outputs[1]), score


def _input_size(model_path: Path) -> int:
    """The model's square input size (the TensorRT shape profile needs it), from a CPU session
    (the serving extras have no ``onnx``); 224 when the graph leaves it symbolic."""
    import onnxruntime as ort

    shape = ort.InferenceSession(str(model_path), providers=[CPU]).get_inputs()[0].shape
    return shape[-1] if isinstance(shape[-1], int) and shape[-1] > 0 else 224


class TritonBackend:
    """A remote Triton Inference Server (KServe v2) over HTTP or gRPC."""

    def __init__(self, model_name: str, config: ServingConfig, *, ood_score: bool = False) -> None:
        """``ood_score``: the model has the guard's output (the manifest says so), request it too."""
        self.model_name = model_name
        self.has_ood_score = ood_score
        self.protocol = "grpc" if config.backend == "triton-grpc" else "http"
        if self.protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module: Any = client_module
        self._client: Any = client_module.InferenceServerClient(url=config.triton_url)
        self.description = f"triton-{self.protocol} {config.triton_url} model {model_name}"

    def is_ready(self) -> bool:
        return bool(self._client.is_model_ready(self.model_name))

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, attention, _ = self._request(batch, OUTPUT_NAMES)
        return probabilities, attention

    def infer_scored(self, batch: np.ndarray) -> Scored:
        names = (*OUTPUT_NAMES, OOD_OUTPUT) if self.has_ood_score else OUTPUT_NAMES
        return self._request(batch, names)

    def _request(self, batch: np.ndarray, names: tuple[str, ...]) -> Scored:
        tensor = self._module.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        outputs = [self._module.InferRequestedOutput(name) for name in names]
        result = self._client.infer(self.model_name, inputs=[tensor], outputs=outputs)
        # Triton declares the per-image score dims [1] (reshaped): [B, 1] here, [B] for the caller.
        score = result.as_numpy(OOD_OUTPUT).reshape(-1) if OOD_OUTPUT in names else None
        return result.as_numpy(OUTPUT_NAMES[0]), result.as_numpy(OUTPUT_NAMES[1]), score


def create_backend(
    config: ServingConfig, model_path: Path, triton_model: str, *, ood_score: bool = False
) -> Backend:
    """``ood_score``: the manifest records a guard (the in-process backend reads the graph itself)."""
    if config.backend == "onnxruntime":
        return OnnxRuntimeBackend(model_path, config)
    return TritonBackend(triton_model, config, ood_score=ood_score)
