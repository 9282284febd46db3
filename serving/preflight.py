"""The start-up check: is this model repository safe to serve? One sentence if not."""

from __future__ import annotations

from pathlib import Path


def preflight(repository: Path, variant: str | None, backend: str) -> str | None:
    """None if the repository can be served, else one sentence saying why not.

    Checks manifest.json, the served file's size and sha256 and, for the in-process
    backend, that ONNX Runtime can load the file.
    """
    from cxrmsn.repository import RepositoryError, read_manifest, verified_model_path

    if not (repository / "manifest.json").is_file():
        return (
            f"no model in {repository}/ (no manifest.json). No trained model is bundled yet; "
            "export one with `cxr-msn export CHECKPOINT --out DIR` and set MODEL_REPOSITORY=DIR. "
            "Refusing to serve random weights."
        )
    try:
        manifest = read_manifest(repository)
        path = verified_model_path(repository, manifest, variant)
    except RepositoryError as error:
        return f"refusing to serve {repository}: {error}"
    if backend != "onnxruntime":
        return None
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types for invalid graphs
        return f"refusing to serve {path}: ONNX Runtime cannot load it ({type(error).__name__})"
    return None
