"""ONNX Runtime on the CPU: sessions, batched runs and output comparisons."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from export.onnx_export import INPUT_NAME, OOD_OUTPUT, OUTPUT_NAMES

#: (probabilities [N, labels], attention [N, gh, gw]) and, from a guarded graph, ood_score [N]
Outputs = tuple[np.ndarray, ...]


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
    """Every output (two, or three with ``ood_score``) for ``images`` float32 [N, 3, S, S],
    run ``batch_size`` at a time."""
    if images.ndim != 4 or images.dtype != np.float32:
        raise ValueError(f"images must be float32 [N, 3, S, S], got {images.dtype} {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = [*OUTPUT_NAMES, *([OOD_OUTPUT] if OOD_OUTPUT in _output_names(session) else [])]
    parts = [
        session.run(names, {INPUT_NAME: images[start : start + batch_size]})
        for start in range(0, len(images), batch_size)
    ]
    return tuple(
        np.concatenate([part[index] for part in parts]).astype(np.float32, copy=False)
        for index in range(len(names))
    )


def _output_names(session: Any) -> set[str]:
    return {output.name for output in session.get_outputs()}


def max_abs_difference(actual: Outputs, reference: Outputs) -> dict[str, float]:
    """Largest absolute difference per output; ``inf`` where either side is not finite.

    The out-of-distribution score (a distance, tens to thousands) is compared relatively:
    ``ood_score (relative)`` is max |a - b| / max(1, |b|).
    """
    result = {}
    names = (*OUTPUT_NAMES, OOD_OUTPUT)[: len(reference)]
    for name, a, b in zip(names, actual, reference, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes differ, {a.shape} != {b.shape}")
        finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
        difference = np.abs(a.astype(np.float64) - b)
        if name == OOD_OUTPUT:
            name, difference = f"{OOD_OUTPUT} (relative)", difference / np.maximum(1.0, np.abs(b))
        result[name] = float(np.max(difference)) if finite else float("inf")
    return result


def generated_images(count: int, *, image_size: int, seed: int = 0) -> np.ndarray:
    """``count`` standard-normal inputs float32 [count, 3, S, S]: the range of normalised images."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 3, image_size, image_size), dtype=np.float32)
