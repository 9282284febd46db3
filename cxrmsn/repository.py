"""The model repository manifest: what export writes and what serving trusts.

``model_repository/manifest.json`` lists every model file with its sha256, the labels,
the preprocessing, the thresholds and where the weights came from. Serving loads a
model only through ``verified_model_path``, which refuses a file whose hash does not
match. numpy-free and torch-free: serving imports it.
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


class RepositoryError(ValueError):
    """A model repository that is missing, malformed or fails its integrity check."""


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
