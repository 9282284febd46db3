"""The model repository manifest: what export writes and what serving trusts.

``model_repository/manifest.json`` lists every model file with its sha256, the labels,
the preprocessing, the thresholds, the per-label validity gate and where the weights came
from. Serving loads a model only through ``verified_model_path``, which refuses a file whose
hash does not match. numpy-free and torch-free: serving imports it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxrmsn.fileio import atomic_write_text, sha256_file
from cxrmsn.labels import check_labels
from cxrmsn.preprocess import PreprocessConfig

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "cxr-msn-model-repository"
FORMAT_VERSION = 1


GATE_EVALUATED = "evaluated"
GATE_NOT_EVALUATED = "not_evaluated"


class RepositoryError(ValueError):
    """A model repository that is missing, malformed or fails its integrity check."""


@dataclass
class ValidityGate:
    """Which trained labels were shown, on validation, to rank better than a floor (export writes it).

    A trained label is *validated* when the lower bound of the bootstrap CI of its AUROC on the
    ``split`` (95 % or wider) is above ``min_auroc_lower_bound``; every other trained label is in
    ``not_validated_labels``: its probability is served, it is never positive. ``not_evaluated``:
    the export had no per-label validation CIs, so every trained label is not validated.
    """

    status: str  # GATE_EVALUATED or GATE_NOT_EVALUATED
    min_auroc_lower_bound: float
    not_validated_labels: list[str]
    auroc_lower_bounds: dict[str, float | None] = field(default_factory=dict)  # trained label -> bound
    reasons: dict[str, str] = field(default_factory=dict)  # not validated label -> why
    split: str = "valid"
    ci_level: float | None = None
    images: int | None = None
    source: dict[str, Any] = field(default_factory=dict)  # where the validation metrics came from
    reason: str | None = None  # why the gate could not be evaluated (status not_evaluated)
    criterion: str = (
        "a trained label is validated when the lower bound of the bootstrap CI (95 % or wider) of its "
        "AUROC on the validation split is above min_auroc_lower_bound; a label that is not validated "
        "keeps its probability but is never positive"
    )

    def __post_init__(self) -> None:
        if self.status not in (GATE_EVALUATED, GATE_NOT_EVALUATED):
            raise RepositoryError(f"validity gate status must be {GATE_EVALUATED} or {GATE_NOT_EVALUATED}")
        if not 0.0 <= self.min_auroc_lower_bound < 1.0:
            raise RepositoryError(
                f"validity gate min_auroc_lower_bound must be in [0, 1), got {self.min_auroc_lower_bound}"
            )


@dataclass
class ModelFile:
    """One servable model file, relative to the repository root."""

    path: str  # e.g. "cxr_msn/1/model.onnx"
    sha256: str
    bytes: int
    precision: str  # "fp32", "fp16", "int8"
    triton_model: str  # the Triton model folder that holds it, e.g. "cxr_msn"
    notes: dict[str, Any] = field(default_factory=dict)  # accuracy deltas, optimisation ...


@dataclass
class RepositoryManifest:
    name: str
    version: str
    architecture: str
    labels: list[str]
    preprocessing: dict[str, Any]
    models: dict[str, ModelFile]  # variant name ("fp32", "int8", ...) -> file
    default_variant: str = "fp32"
    trained_labels: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    intended_use: str = ""
    source_checkpoint: dict[str, Any] = field(default_factory=dict)  # path, sha256
    io: dict[str, Any] = field(default_factory=dict)  # input/output names, dtypes, shapes
    files: dict[str, str] = field(default_factory=dict)  # every other file -> sha256
    # None: a repository exported before the gate existed (no label is marked not validated).
    validity_gate: ValidityGate | None = None
    created: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_labels(self.labels, source="model repository manifest")
        PreprocessConfig.from_dict(self.preprocessing)
        self.models = {
            name: entry if isinstance(entry, ModelFile) else ModelFile(**entry)
            for name, entry in self.models.items()
        }
        if self.default_variant not in self.models:
            raise RepositoryError(
                f"default variant {self.default_variant!r} is not among {sorted(self.models)}"
            )
        if isinstance(self.validity_gate, dict):
            self.validity_gate = ValidityGate(**self.validity_gate)
        if self.validity_gate is not None:
            outside = set(self.validity_gate.not_validated_labels) - set(self.trained_labels)
            if outside:
                raise RepositoryError(f"validity gate lists labels that are not trained: {sorted(outside)}")

    @property
    def not_validated_labels(self) -> list[str]:
        """Trained labels the validity gate did not pass, in label order (none without a gate)."""
        failed = set(self.validity_gate.not_validated_labels) if self.validity_gate else set()
        return [label for label in self.labels if label in failed]

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocessing)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def write_manifest(repository: str | os.PathLike[str], manifest: RepositoryManifest) -> Path:
    path = Path(repository) / MANIFEST_NAME
    atomic_write_text(path, manifest.to_json())
    return path


def read_manifest(repository: str | os.PathLike[str]) -> RepositoryManifest:
    path = Path(repository) / MANIFEST_NAME
    if not path.is_file():
        raise RepositoryError(f"no {MANIFEST_NAME} in {repository}: not a cxr-msn model repository")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT_NAME:
        raise RepositoryError(f"{path} is not a {FORMAT_NAME} manifest")
    if values.get("format_version") != FORMAT_VERSION:
        raise RepositoryError(
            f"{path} has format version {values.get('format_version')}; "
            f"this cxr-msn reads version {FORMAT_VERSION}"
        )
    try:
        return RepositoryManifest(**values)
    except (TypeError, ValueError) as exc:
        raise RepositoryError(f"{path} is invalid: {exc}") from None


def verified_model_path(
    repository: str | os.PathLike[str], manifest: RepositoryManifest, variant: str | None = None
) -> Path:
    """The path of a model file whose size and sha256 match the manifest, or RepositoryError."""
    name = variant or manifest.default_variant
    if name not in manifest.models:
        raise RepositoryError(f"variant {name!r} is not in the manifest; it has {sorted(manifest.models)}")
    entry = manifest.models[name]
    path = Path(repository) / entry.path
    if not path.is_file():
        raise RepositoryError(f"model file {entry.path} listed in the manifest is missing")
    if path.stat().st_size != entry.bytes:
        raise RepositoryError(
            f"model file {entry.path} has {path.stat().st_size:,} bytes, the manifest says "
            f"{entry.bytes:,}: truncated or replaced; refusing to load it"
        )
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise RepositoryError(
            f"model file {entry.path} has sha256 {actual[:12]}..., the manifest says "
            f"{entry.sha256[:12]}...: modified or corrupt; refusing to load it"
        )
    return path
