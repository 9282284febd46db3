"""Triton python-backend model: the fp32 ONNX file run with onnxruntime, one call per batch.

Copied into ``<repository>/cxr_msn_python/1/model.py`` by export. Its config.pbtxt names
the ONNX file (relative to the repository root) and its sha256; the model refuses to
load a file whose hash differs. Runs inside Triton's python backend stub, which
provides ``triton_python_backend_utils``; needs numpy and onnxruntime there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config: dict[str, Any], key: str) -> str:
    try:
        return str(config["parameters"][key]["string_value"])
    except KeyError:
        raise ValueError(f"config.pbtxt of {config.get('name')} lacks the parameter {key!r}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        repository = Path(args["model_repository"]).parent
        onnx_path = repository / _parameter(config, "onnx_model")
        expected = _parameter(config, "onnx_sha256")
        actual = _sha256(onnx_path)
        if actual != expected:
            raise ValueError(f"{onnx_path} has sha256 {actual[:12]}..., config says {expected[:12]}...")
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        images = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        outputs = self.session.run(self.output_names, {self.input_name: np.concatenate(images)})
        responses, start = [], 0
        for batch in images:
            stop = start + len(batch)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value[start:stop]))
                for name, value in zip(self.output_names, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses
