"""The start-up check: can this model repository be served, here? One sentence if not.

It runs once per start, before any worker: in ``cxr-msn serve`` (which then starts the
server with ``CXR_MSN_STARTUP_CHECKED=1``), or, for a plain ``bentoml serve``, in the
service's on-deployment hook (``serving.service``); never when a module is imported. The
worker then loads the model once (``serving.predictor.Predictor``, which checks again the
size and sha256 of the file it loads).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.config import ServingConfig

#: Set by ``cxr-msn serve`` for the server it starts: the check has been made.
CHECKED_ENV = "CXR_MSN_STARTUP_CHECKED"


class StartupRefusedError(ValueError):
    """The repository cannot be served; the message is one sentence for the operator."""


def startup_check(config: ServingConfig, fallback: str | None) -> str:
    """Check ``config``'s repository as the service will load it; one line on what was found.

    For the in-process backend this is one load of the model, as the service makes it:
    manifest.json, the file's size and sha256, an ONNX Runtime session, and the self-check
    against regression.json (``fallback`` is served if the variant fails it). For Triton,
    the file's size and sha256 (the model runs on the Triton server). Raises
    ``StartupRefusedError``.
    """
    from cxrmsn.repository import RepositoryError, read_manifest, verified_model_path

    repository = config.model_repository
    if not (repository / "manifest.json").is_file():
        raise StartupRefusedError(
            f"no model in {repository}/ (no manifest.json). No trained model is bundled yet; "
            "export one with `cxr-msn export CHECKPOINT --out DIR` and set MODEL_REPOSITORY=DIR. "
            "Refusing to serve random weights."
        )
    try:
        if config.backend != "onnxruntime":
            verified_model_path(repository, read_manifest(repository), config.variant)
            return "the model runs on the Triton server: its file's size and sha256 checked here"
        return _load_and_self_check(config, fallback)
    except RepositoryError as error:
        raise StartupRefusedError(f"refusing to serve {repository}: {error}") from None


def _load_and_self_check(config: ServingConfig, fallback: str | None) -> str:
    from cxrmsn.repository import RepositoryError
    from serving.predictor import Predictor, VariantRefusedError

    try:
        predictor = Predictor(config, fallback=fallback)
    except VariantRefusedError as error:  # one line that says whom it refuses and why
        raise StartupRefusedError(str(error)) from None
    except RepositoryError:
        raise
    except Exception as error:  # ONNX Runtime raises its own exception types for invalid graphs
        raise StartupRefusedError(
            f"refusing to serve {config.model_repository}: ONNX Runtime cannot load its model "
            f"({type(error).__name__})"
        ) from None
    check = predictor.self_check
    if predictor.fallback_reason:
        return f"{predictor.fallback_reason}; {check.variant} {check.status}: {check.detail}"
    return f"self-check of {check.variant} {check.status}: {check.detail}"
