"""Inference backends behind one interface: ONNX Runtime in-process, or a remote Triton.

Each takes a float32 batch [B, 3, H, W] and returns (probabilities [B, 14],
attention [B, gh, gw]) as float32 numpy arrays. No torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serving.config import ServingConfig

LOGGER = logging.getLogger(__name__)
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "attention")


class Backend(Protocol):
    description: str

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


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
        providers = list(config.providers) or _best_providers(ort.get_available_providers())
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        self.description = f"onnxruntime {ort.__version__} ({', '.join(self.session.get_providers())})"
        LOGGER.info("loaded %s with %s", model_path.name, self.description)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, attention = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return np.asarray(probabilities), np.asarray(attention)


def _best_providers(available: list[str]) -> list[str]:
    # TensorRT first where present; ORT falls back along the list per node.
    preferred = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in preferred if p in available] or available


class TritonBackend:
    """A remote Triton Inference Server (KServe v2) over HTTP or gRPC."""

    def __init__(self, model_name: str, config: ServingConfig) -> None:
        self.model_name = model_name
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
        tensor = self._module.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        outputs = [self._module.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        result = self._client.infer(self.model_name, inputs=[tensor], outputs=outputs)
        return result.as_numpy(OUTPUT_NAMES[0]), result.as_numpy(OUTPUT_NAMES[1])


def create_backend(config: ServingConfig, model_path: Path, triton_model: str) -> Backend:
    if config.backend == "onnxruntime":
        return OnnxRuntimeBackend(model_path, config)
    return TritonBackend(triton_model, config)
