"""Serving configuration, read once from the environment (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("onnxruntime", "triton-http", "triton-grpc")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


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

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

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
        )
