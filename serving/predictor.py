"""The prediction path shared by the HTTP service and ``cxr-msn predict``: no torch.

bytes -> ``cxrmsn.imaging.decode`` -> ``cxrmsn.preprocess.preprocess`` -> backend ->
a JSON-ready result. The model file is verified against the manifest's sha256 before
it is loaded.
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.imaging import DecodedImage, decode
from cxrmsn.preprocess import preprocess
from cxrmsn.repository import GATE_EVALUATED, RepositoryManifest, read_manifest, verified_model_path
from serving.backends import Backend, create_backend
from serving.config import ServingConfig
from serving.overlay import model_view, overlay_png, overlay_rgb, png_bytes

UNTRAINED_WARNING = (
    "the model had no training signal for: {labels}; their probabilities are reported "
    "but never counted as positive"
)
NOT_VALIDATED_WARNING = (
    "not validated: {labels} ({why}); their probabilities are reported but never counted as positive"
)
GATE_ABSENT = {
    "status": "absent",
    "reason": "this model repository was exported before the validity gate; no label is marked not validated",
}


@dataclass(frozen=True)
class PreparedImage:
    decoded: DecodedImage
    model_input: np.ndarray  # float32 [3, crop, crop]


class Predictor:
    """One loaded, verified model and everything needed to turn bytes into a result."""

    def __init__(self, config: ServingConfig) -> None:
        self.config = config
        self.manifest: RepositoryManifest = read_manifest(config.model_repository)
        self.variant = config.variant or self.manifest.default_variant
        model_path = verified_model_path(config.model_repository, self.manifest, self.variant)
        self.model_file = self.manifest.models[self.variant]
        self.preprocessing = self.manifest.preprocess_config
        triton_model = config.triton_model or self.model_file.triton_model
        self.backend: Backend = create_backend(config, model_path, triton_model)
        trained = set(self.manifest.trained_labels)
        self.untrained_labels = [label for label in self.manifest.labels if label not in trained]
        self.not_validated_labels = self.manifest.not_validated_labels

    def prepare(self, data: bytes) -> PreparedImage:
        """Decode and preprocess; raises ``cxrmsn.errors.DecodeError`` for bad input."""
        decoded = decode(data)
        return PreparedImage(decoded, preprocess(decoded.pixels, self.preprocessing))

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.backend.infer(batch)

    def result(
        self,
        prepared: PreparedImage,
        probabilities: np.ndarray,
        attention: np.ndarray,
        *,
        overlay: bool,
        image: bool = False,
    ) -> dict[str, Any]:
        labels = self.manifest.labels
        by_label = {label: round(float(p), 6) for label, p in zip(labels, probabilities, strict=True)}
        attention = np.asarray(attention, dtype=np.float64)
        total = float(attention.sum())
        normalised = attention / total if total > 0 else np.full_like(attention, 1.0 / attention.size)
        warnings = list(prepared.decoded.info.warnings)
        warnings += self.model_warnings()
        result: dict[str, Any] = {
            "labels": list(labels),
            "probabilities": by_label,
            "attention": {
                "shape": list(normalised.shape),
                "values": np.round(normalised, 7).tolist(),
            },
            "positive": self.positive_labels(by_label),
            "model": self.model_summary(),
            "input": prepared.decoded.info.to_dict(),
            "warnings": warnings,
        }
        if overlay:
            png = overlay_png(prepared.decoded.pixels, attention, self.preprocessing)
            result["overlay_png_base64"] = base64.b64encode(png).decode("ascii")
        if image:
            view = png_bytes(model_view(prepared.decoded.pixels, self.preprocessing))
            result["image_png_base64"] = base64.b64encode(view).decode("ascii")
        return result

    def dicom_outputs(
        self,
        prepared: PreparedImage,
        attention: np.ndarray,
        result: dict[str, Any],
        source: Any,
        parts: Collection[str] = ("sr", "sc"),
    ) -> dict[str, bytes]:
        """DICOM Part 10 bytes by part: "sr" the Structured Report, "sc" the heatmap capture.

        ``source`` is ``serving.dicom_output.read_source`` of the upload; raises
        ``DicomOutputError`` when highdicom cannot build a part from it.
        """
        from serving import dicom_output  # highdicom: loaded only when DICOM output is asked for

        datasets: dict[str, Any] = {}
        if "sr" in parts:
            datasets["sr"] = dicom_output.structured_report(source, result, dict(self.manifest.thresholds))
        if "sc" in parts:
            pixels = overlay_rgb(prepared.decoded.pixels, attention, self.preprocessing)
            datasets["sc"] = dicom_output.overlay_capture(source, pixels, result)
        return {part: dicom_output.to_bytes(dataset) for part, dataset in datasets.items()}

    def model_warnings(self) -> list[str]:
        """What every result of this model carries: labels that can never be positive, and why."""
        warnings = []
        if self.untrained_labels:
            warnings.append(UNTRAINED_WARNING.format(labels=", ".join(self.untrained_labels)))
        gate = self.manifest.validity_gate
        if gate is not None and self.not_validated_labels:
            level = f"{gate.ci_level * 100:g} %" if gate.ci_level else "95 %"
            why = (
                f"their validation AUROC was not shown to be above {gate.min_auroc_lower_bound}: "
                f"{level} CI lower bound, or no estimate"
                if gate.status == GATE_EVALUATED
                else f"no validation to check: {gate.reason}"
            )
            labels = ", ".join(self.not_validated_labels)
            warnings.append(NOT_VALIDATED_WARNING.format(labels=labels, why=why))
        return warnings

    def positive_labels(self, probabilities: dict[str, float]) -> list[str]:
        thresholds = self.manifest.thresholds
        never = set(self.untrained_labels) | set(self.not_validated_labels)
        return [
            label
            for label in self.manifest.labels
            if label in thresholds and label not in never and probabilities[label] >= thresholds[label]
        ]

    def model_summary(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "architecture": self.manifest.architecture,
            "variant": self.variant,
            "precision": self.model_file.precision,
            "sha256": self.model_file.sha256,
            "trained_labels": [label for label in self.manifest.labels if label not in self.untrained_labels],
            "untrained_labels": list(self.untrained_labels),
            "not_validated_labels": list(self.not_validated_labels),
            "backend": self.backend.description,
            "intended_use": self.manifest.intended_use,
        }

    def model_card(self) -> dict[str, Any]:
        """What ``GET /model`` returns."""
        return {
            **self.model_summary(),
            "labels": list(self.manifest.labels),
            "thresholds": dict(self.manifest.thresholds),
            "preprocessing": self.preprocessing.to_dict(),
            "training_data": self.manifest.training_data,
            "metrics": self.manifest.metrics,
            "source_checkpoint": self.manifest.source_checkpoint,
            "variants": sorted(self.manifest.models),
            "validity_gate": asdict(gate) if (gate := self.manifest.validity_gate) else dict(GATE_ABSENT),
        }


def load_predictor(repository: Path | None = None, **overrides: Any) -> Predictor:
    config = ServingConfig.from_env()
    values = {**config.__dict__, **overrides}
    if repository is not None:
        values["model_repository"] = repository
    return Predictor(ServingConfig(**values))
