"""ONNX Runtime against PyTorch on the same inputs, at a stated tolerance."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from export.errors import ExportError
from export.runtime import Outputs, cpu_session, generated_images, max_abs_difference, run

PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 8)


def torch_outputs(model: Any, images: np.ndarray) -> Outputs:
    """The PyTorch model's (probabilities, attention[, ood_score]) for float32 images [N, 3, S, S]."""
    import torch

    with torch.no_grad():
        outputs = model.eval()(torch.from_numpy(images))
    return tuple(output.numpy() for output in outputs)


def check_parity(
    model: Any,
    onnx_path: str | os.PathLike[str],
    *,
    image_size: int,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Max |ONNX Runtime - PyTorch| per output and batch size; ExportError above ``tolerance``."""
    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    session = cpu_session(onnx_path)
    figures: dict[str, Any] = {"tolerance": tolerance, "inputs": f"standard normal, seed {seed} + batch size"}
    for batch in batch_sizes:
        images = generated_images(batch, image_size=image_size, seed=seed + batch)
        differences = max_abs_difference(run(session, images, batch_size=batch), torch_outputs(model, images))
        figures[f"batch_{batch}"] = differences
        worst = max(differences.values())
        if worst == float("inf"):
            raise ExportError(
                f"outputs at batch {batch} are not finite (NaN or inf) in PyTorch or ONNX Runtime: "
                "the checkpoint's weights may have diverged"
            )
        if not worst <= tolerance:
            raise ExportError(
                f"ONNX Runtime differs from PyTorch by {worst:.3g} at batch {batch} "
                f"(tolerance {tolerance:g}): {differences}"
            )
    return figures
