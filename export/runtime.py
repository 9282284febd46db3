"""ONNX Runtime on the CPU: sessions, batched runs and output comparisons."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from export.onnx_export import INPUT_NAME, OUTPUT_NAMES

#: (probabilities [N, labels], attention [N, gh, gw])
Outputs = tuple[np.ndarray, np.ndarray]


def cpu_session(model: str | os.PathLike[str] | bytes, *, threads: int = 0, optimise: bool = True) -> Any:
    """An onnxruntime InferenceSession on the CPU provider (``threads=0``: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: quantised graphs warn about shape inference
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(session: Any, images: np.ndarray, *, batch_size: int = 16) -> Outputs:
    """Both outputs for ``images`` float32 [N, 3, S, S], run ``batch_size`` at a time."""
    if images.ndim != 4 or images.dtype != np.float32:
        raise ValueError(f"images must be float32 [N, 3, S, S], got {images.dtype} {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = [
        session.run(list(OUTPUT_NAMES), {INPUT_NAME: images[start : start + batch_size]})
        for start in range(0, len(images), batch_size)
    ]
    probabilities = np.concatenate([part[0] for part in parts]).astype(np.float32, copy=False)
    attention = np.concatenate([part[1] for part in parts]).astype(np.float32, copy=False)
    return probabilities, attention


def max_abs_difference(actual: Outputs, reference: Outputs) -> dict[str, float]:
    """Largest absolute difference per output; ``inf`` where either side is not finite."""
    result = {}
    for name, a, b in zip(OUTPUT_NAMES, actual, reference, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes differ, {a.shape} != {b.shape}")
        finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
        result[name] = float(np.max(np.abs(a.astype(np.float64) - b))) if finite else float("inf")
    return result


def generated_images(count: int, *, image_size: int, seed: int = 0) -> np.ndarray:
    """``count`` standard-normal inputs float32 [count, 3, S, S]: the range of normalised images."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 3, image_size, image_size), dtype=np.float32)
