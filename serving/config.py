"""Serving configuration, read once from the environment (documented in the README)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("onnxruntime", "triton-http", "triton-grpc")
#: CXR_MSN_OOD: what an image the out-of-distribution guard does not take for a chest radiograph
#: gets: refuse (422 not_a_chest_radiograph) or warn (served, with a warning; research use).
OOD_MODES = ("refuse", "warn")
MIN_DECODE_MEMORY_MIB = 64


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _env_float(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {raw!r}")
    return value


def default_decode_workers() -> int:
    """One more decode process than cores (so one slow upload leaves the others a process),
    at least 2 and at most 8."""
    return min(8, max(2, (os.cpu_count() or 1) + 1))


@dataclass(frozen=True)
class ServingConfig:
    """Where the model comes from and how the service runs it."""

    model_repository: Path = Path("model_repository")
    variant: str | None = None  # None: the manifest's default variant
    backend: str = "onnxruntime"
    triton_url: str = "localhost:8000"
    triton_model: str | None = None  # None: the manifest's Triton model for the variant
    providers: tuple[str, ...] = field(default_factory=tuple)  # empty: best available
    intra_op_threads: int = max(1, os.cpu_count() or 1)
    max_batch_size: int = 8
    max_upload_bytes: int = 64 * 1024 * 1024
    max_files_per_batch: int = 16
    # Decoding runs in this many worker processes (serving.decode_pool); 0 decodes in the
    # service process itself, without the deadline and memory limit below.
    decode_workers: int = field(default_factory=default_decode_workers)
    decode_deadline_s: float = 10.0  # per upload: decode + preprocess (+ DICOM header read)
    decode_memory_mib: int = 1536  # address space one decode may add to its worker
    ood_mode: str = "refuse"  # OOD_MODES

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.ood_mode not in OOD_MODES:
            raise ValueError(f"CXR_MSN_OOD must be one of {OOD_MODES}, got {self.ood_mode!r}")
        if self.decode_workers < 0:
            raise ValueError(f"decode_workers must be >= 0, got {self.decode_workers}")
        if not 0 < self.decode_deadline_s < float("inf"):
            raise ValueError(f"decode_deadline_s must be > 0, got {self.decode_deadline_s}")
        if self.decode_memory_mib < MIN_DECODE_MEMORY_MIB:
            raise ValueError(
                f"decode_memory_mib must be >= {MIN_DECODE_MEMORY_MIB}, got {self.decode_memory_mib}"
            )

    @classmethod
    def from_env(cls) -> ServingConfig:
        providers = os.environ.get("CXR_MSN_ORT_PROVIDERS", "")
        return cls(
            model_repository=Path(os.environ.get("MODEL_REPOSITORY", "model_repository")),
            variant=os.environ.get("CXR_MSN_VARIANT") or None,
            backend=os.environ.get("CXR_MSN_BACKEND", "onnxruntime"),
            triton_url=os.environ.get("CXR_MSN_TRITON_URL", "localhost:8000"),
            triton_model=os.environ.get("CXR_MSN_TRITON_MODEL") or None,
            providers=tuple(p.strip() for p in providers.split(",") if p.strip()),
            intra_op_threads=_env_int("CXR_MSN_ORT_THREADS", max(1, os.cpu_count() or 1)),
            max_batch_size=_env_int("CXR_MSN_MAX_BATCH_SIZE", 8),
            max_upload_bytes=_env_int("CXR_MSN_MAX_UPLOAD_BYTES", 64 * 1024 * 1024),
            max_files_per_batch=_env_int("CXR_MSN_MAX_FILES_PER_BATCH", 16),
            decode_workers=_env_int("CXR_MSN_DECODE_WORKERS", default_decode_workers(), minimum=0),
            decode_deadline_s=_env_float("CXR_MSN_DECODE_DEADLINE_S", 10.0, minimum=0.1),
            decode_memory_mib=_env_int("CXR_MSN_DECODE_MEMORY_MIB", 1536, minimum=MIN_DECODE_MEMORY_MIB),
            ood_mode=os.environ.get("CXR_MSN_OOD", "").strip().lower() or "refuse",
        )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--repository and --variant, as the offline commands (predict, listen) take them."""
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path(os.environ.get("MODEL_REPOSITORY", "model_repository")),
        help="model repository (env MODEL_REPOSITORY)",
    )
    parser.add_argument("--variant", default=None, help="model variant; default: the manifest's default")
