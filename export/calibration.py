"""Per-label temperature scaling in the exported model: 1/T folded into the linear head.

sigmoid((W e + b) / T) = sigmoid((W / T) e + b / T): dividing row j of the head's weight and
bias by T_j gives calibrated probabilities with no change to the ONNX graph, so ONNX Runtime,
Triton and the python twin all serve them. The temperatures come from the classifier
checkpoint's metadata (``CheckpointMetadata.calibration``, fitted on validation by
``training.downstream.calibration``). linear-eval already saves the head folded
(``applied_to_head: true``); a checkpoint that only names its temperatures
(``applied_to_head: false``) is folded here, once.
"""

from __future__ import annotations

from typing import Any

import torch

from export.errors import ExportError


def fold_temperatures(model: Any, metadata: Any) -> dict[str, Any]:
    """Fold the checkpoint's temperatures into ``model.head`` if not yet folded; returns the
    manifest's ``calibration`` record (empty for an uncalibrated checkpoint)."""
    calibration = dict(getattr(metadata, "calibration", {}) or {})
    if not calibration:
        return {}
    if calibration.get("method") == "none":  # chosen at linear-eval (head.calibration)
        return {
            "method": "none",
            "fitted_on": calibration.get("fitted_on"),
            "note": "not calibrated by choice: probabilities are the head's sigmoid outputs",
        }
    if calibration.get("method") != "temperature":
        raise ExportError(f"unknown calibration method {calibration.get('method')!r} in the checkpoint")
    temperatures = calibration.get("temperatures", {})
    values = [float(temperatures.get(label, 1.0)) for label in metadata.labels]
    if not all(value > 0 and value == value and value != float("inf") for value in values):
        raise ExportError(f"calibration temperatures must be finite and positive, got {temperatures}")
    folded_by = "linear-eval"
    if not calibration.get("applied_to_head", False):
        scale = 1.0 / torch.tensor(values, dtype=model.head.weight.dtype)
        with torch.no_grad():
            model.head.weight.mul_(scale[:, None])
            model.head.bias.mul_(scale)
        folded_by = "export"
    return {
        "method": "temperature",
        "temperatures": {
            label: round(value, 6) for label, value in zip(metadata.labels, values, strict=True)
        },
        "fitted_on": calibration.get("fitted_on"),
        "folded_by": folded_by,
        "note": "probabilities are sigmoid(logit / T) per label; thresholds are on this scale",
    }
