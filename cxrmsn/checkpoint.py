"""The core checkpoint format: one safetensors file with JSON metadata in its header.

The metadata says what the weights are (architecture, labels, preprocessing), what
they were trained on, which labels had training signal and the operating thresholds,
so that export and serving never have to guess. Files are written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save as save_tensors
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("cxrmsn.checkpoint needs torch and safetensors: pip install 'cxr-msn[train]'") from exc

from cxrmsn.fileio import atomic_write_bytes
from cxrmsn.labels import LABELS, check_labels
from cxrmsn.preprocess import DEFAULT_PREPROCESS, PreprocessConfig

FORMAT_NAME = "cxr-msn-checkpoint"
FORMAT_VERSION = 1
_METADATA_KEY = "cxr_msn"

UNTRAINED_NOTICE = "randomly initialised: untrained, for testing only"
NOT_FOR_CLINICAL_USE = (
    "Research and demonstration model: not for clinical use unless validated "
    "for the intended population and setting."
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match what the caller expects."""


@dataclass
class CheckpointMetadata:
    """What travels with the weights. ``kind`` is "classifier" or "encoder"."""

    architecture: str
    kind: str = "classifier"
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    preprocessing: dict[str, Any] = field(default_factory=DEFAULT_PREPROCESS.to_dict)
    trained_labels: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=lambda: {"summary": UNTRAINED_NOTICE})
    metrics: dict[str, Any] = field(default_factory=dict)
    intended_use: str = NOT_FOR_CLINICAL_USE
    extra: dict[str, Any] = field(default_factory=dict)
    # Per-label temperature scaling: {"method": "temperature", "temperatures": {label: T},
    # "fitted_on": split, "applied_to_head": bool}; empty: uncalibrated. With applied_to_head
    # false, export folds 1/T into the head (``export.calibration``).
    calibration: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.kind not in ("classifier", "encoder"):
            raise CheckpointError(f"kind must be 'classifier' or 'encoder', got {self.kind!r}")
        check_labels(self.labels, source="checkpoint metadata")
        unknown = set(self.trained_labels) - set(self.labels)
        if unknown:
            raise CheckpointError(f"trained_labels names unknown labels {sorted(unknown)}")
        PreprocessConfig.from_dict(self.preprocessing)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocessing)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> CheckpointMetadata:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: metadata is not valid JSON ({exc})") from None
        if values.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{source}: not a {FORMAT_NAME} file (format={values.get('format')!r})")
        if values.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: format version {values.get('format_version')} is not supported "
                f"(this cxr-msn reads version {FORMAT_VERSION})"
            )
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: invalid metadata: {exc}") from None


def save_checkpoint(
    path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], metadata: CheckpointMetadata
) -> None:
    """Write weights and metadata to ``path`` atomically."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    atomic_write_bytes(path, save_tensors(tensors, metadata={_METADATA_KEY: metadata.to_json()}))


def read_metadata(path: str | os.PathLike[str]) -> CheckpointMetadata:
    """Read only the metadata (cheap: the header, not the weights)."""
    with _open(path) as handle:
        header = handle.metadata() or {}
    if _METADATA_KEY not in header:
        raise CheckpointError(f"{path}: a safetensors file without cxr-msn metadata")
    return CheckpointMetadata.from_json(header[_METADATA_KEY], source=str(path))


def load_checkpoint(
    path: str | os.PathLike[str], *, architecture: str | None = None, kind: str | None = None
) -> tuple[dict[str, torch.Tensor], CheckpointMetadata]:
    """Weights and metadata; fails clearly if the architecture or kind is not the expected one."""
    metadata = read_metadata(path)
    if architecture is not None and metadata.architecture != architecture:
        raise CheckpointError(
            f"{path} holds a {metadata.architecture} model, not the expected {architecture}"
        )
    if kind is not None and metadata.kind != kind:
        raise CheckpointError(f"{path} holds an {metadata.kind}, not a {kind}")
    with _open(path) as handle:
        state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    return state, metadata


def load_classifier(
    path: str | os.PathLike[str], *, architecture: str | None = None
) -> tuple[torch.nn.Module, CheckpointMetadata]:
    """A ``CXRClassifier`` in eval mode with every weight loaded strictly."""
    from cxrmsn.model import CXRClassifier

    state, metadata = load_checkpoint(path, architecture=architecture, kind="classifier")
    model = CXRClassifier(metadata.architecture, num_labels=len(metadata.labels))
    load_state_strictly(model, state, source=str(path))
    return model.eval(), metadata


def load_state_strictly(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{name}: {tuple(state[name].shape)} != {tuple(expected[name].shape)}"
        for name in set(state) & set(expected)
        if state[name].shape != expected[name].shape
    )
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"wrong shapes {wrong_shape[:5]}"
        )
    model.load_state_dict(state, strict=True)


def _open(path: str | os.PathLike[str]) -> Any:
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
