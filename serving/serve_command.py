"""Check the model repository, then run the BentoML service (``bentoml serve``).

The check (``serving.preflight.startup_check``) loads the model once as the service will:
manifest.json, the served file's size and sha256, an ONNX Runtime session, then the
self-check, which runs the repository's regression inputs through the variant and compares
them with the stored fp32 probabilities (``serving.predictor``). Any problem is one clear
message and exit status 2, before a server starts; a variant that
fails its self-check is served as ``--variant-fallback`` instead, if given. Options
override the environment variables documented in the README.

The server runs as ``python -m serving.serve_command``: ``bentoml serve`` with a Prometheus
multiprocess directory of its own (a temporary directory, removed at exit). BentoML's
default is one directory under BENTOML_HOME, emptied by every server that starts, so two
servers of one user would each show the other's counters on /metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

from serving.preflight import CHECKED_ENV, startup_check

HELP = "verify the model repository and serve it over HTTP with BentoML"
SERVICE = "serving.service:CXRService"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path(os.environ.get("MODEL_REPOSITORY", "model_repository")),
        help="model repository to serve (env MODEL_REPOSITORY)",
    )
    parser.add_argument(
        "--variant",
        default=os.environ.get("CXR_MSN_VARIANT"),
        help="model variant (fp32, fp16, int8 ...); default: the manifest's default (env CXR_MSN_VARIANT)",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("CXR_MSN_BACKEND", "onnxruntime"),
        choices=["onnxruntime", "triton-http", "triton-grpc"],
        help="run the model in-process with ONNX Runtime, or on a Triton server (env CXR_MSN_BACKEND)",
    )
    parser.add_argument(
        "--triton-url",
        default=os.environ.get("CXR_MSN_TRITON_URL", "localhost:8000"),
        help="Triton address, host:port of its HTTP or gRPC endpoint (env CXR_MSN_TRITON_URL)",
    )
    parser.add_argument(
        "--triton-model",
        default=os.environ.get("CXR_MSN_TRITON_MODEL"),
        help="Triton model name; default: the manifest's for the variant (env CXR_MSN_TRITON_MODEL)",
    )
    parser.add_argument(
        "--variant-fallback",
        default=os.environ.get("CXR_MSN_VARIANT_FALLBACK"),
        metavar="VARIANT",
        help="serve this variant (fp32) when the chosen one fails its start-up self-check on this CPU; "
        "default: refuse to start (env CXR_MSN_VARIANT_FALLBACK)",
    )
    parser.add_argument(
        "--ood",
        choices=("refuse", "warn"),
        default=os.environ.get("CXR_MSN_OOD", "").strip().lower() or None,
        help="an image the out-of-distribution guard does not take for a chest radiograph: refuse "
        "it (422 not_a_chest_radiograph) or serve it with a warning (research use); default: refuse "
        "(env CXR_MSN_OOD; docs/ood.md)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "3000")), help="HTTP port (env PORT)"
    )
    parser.add_argument("--check-only", action="store_true", help="verify the repository and exit")


def run(args: argparse.Namespace) -> int:
    env = {
        "MALLOC_ARENA_MAX": "2",  # glibc: one malloc arena per thread otherwise inflates RSS
        **os.environ,
        "MODEL_REPOSITORY": str(args.repository),
        "CXR_MSN_BACKEND": args.backend,
        "CXR_MSN_TRITON_URL": args.triton_url,
    }
    if args.variant:
        env["CXR_MSN_VARIANT"] = args.variant
    if args.triton_model:
        env["CXR_MSN_TRITON_MODEL"] = args.triton_model
    if args.variant_fallback:
        env["CXR_MSN_VARIANT_FALLBACK"] = args.variant_fallback
    if args.ood:
        env["CXR_MSN_OOD"] = args.ood
    problem, outcome = _upload_settings_problem(), ""
    if not problem:
        problem, outcome = _startup_check(args)
    if problem:
        print(f"cxr-msn serve: {problem}", file=sys.stderr)
        return 2
    print(f"cxr-msn serve: {outcome}", file=sys.stderr)
    print(f"cxr-msn serve: {args.repository} verified; {_guard_line(args)}", file=sys.stderr)
    if args.check_only:
        return 0
    env[CHECKED_ENV] = "1"  # the service's on-deployment hook need not check again
    command = [sys.executable, "-m", "serving.serve_command", SERVICE, "--host", args.host]
    os.execvpe(command[0], [*command, "--port", str(args.port)], env)


def _guard_line(args: argparse.Namespace) -> str:
    """What the out-of-distribution guard will do, in words."""
    from cxrmsn.repository import read_manifest

    guard = read_manifest(args.repository).ood_guard
    if guard is None:
        return "no out-of-distribution guard in this repository (only the DICOM Modality is checked)"
    mode = args.ood or "refuse"
    return f"out-of-distribution guard: score over {guard.threshold:.3f} -> {mode} (CXR_MSN_OOD)"


def _upload_settings_problem() -> str | None:
    """Why the CXR_MSN_UPLOAD_* / CXR_MSN_MAX_CONCURRENCY settings are refused, or None
    (the service reads them again at import)."""
    from serving.middleware import UploadSettings

    try:
        UploadSettings.from_env()
    except ValueError as error:
        return str(error)
    return None


def serve_with_own_metrics_directory(bentoml_serve_args: list[str]) -> None:
    """``bentoml serve ARGS`` in this process, with a fresh Prometheus multiprocess directory
    (BentoML's pytest plugin sets it the same way); the directory is removed when it exits."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    with tempfile.TemporaryDirectory(prefix="cxr-msn-metrics-") as directory:
        BentoMLContainer.prometheus_multiproc_dir.set(directory)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        cli.main(["serve", *bentoml_serve_args], prog_name="bentoml")  # exits with SystemExit


def _startup_check(args: argparse.Namespace) -> tuple[str | None, str]:
    """(one line why the repository is refused, or None; what the check found)."""
    from serving.config import ServingConfig

    fallback = args.variant_fallback if (args.variant_fallback or "none").lower() != "none" else None
    try:
        config = dataclasses.replace(
            ServingConfig.from_env(),
            model_repository=args.repository,
            variant=args.variant,
            backend=args.backend,
            ood_mode=args.ood or "refuse",
        )
        return None, startup_check(config, fallback)
    except ValueError as error:  # StartupRefusedError, a malformed environment variable
        return str(error), ""


if __name__ == "__main__":
    serve_with_own_metrics_directory(sys.argv[1:])
