"""The one error export raises when its own self-checks fail."""

from __future__ import annotations


class ExportError(RuntimeError):
    """An exported model failed a self-check (ONNX checker, parity, non-finite outputs)."""
