"""Export a classifier checkpoint to ONNX variants and a Triton model repository.

Writes OUT/manifest.json (every file with its sha256, the labels, the preprocessing,
the source checkpoint, what each variant costs in accuracy and the per-label validity
gate) and one Triton model folder per variant: cxr_msn (fp32), cxr_msn_fp16,
cxr_msn_int8, each with config.pbtxt (CPU), configs/gpu.pbtxt (TensorRT FP16; fp32 and
fp16 only), labels.txt and 1/model.onnx, plus cxr_msn_python, a python-backend twin of
the fp32 model. The export checks itself (ONNX checker, parity with PyTorch at batch 1
and 8 within 1e-4) and replaces OUT only when everything succeeded. See docs/export.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "export a classifier checkpoint to ONNX (fp32, fp16, int8) and a Triton model repository"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="classifier checkpoint (.safetensors, core format)")
    parser.add_argument(
        "--out", type=Path, default=Path("model_repository"), help="repository folder to write"
    )
    parser.add_argument(
        "--variants",
        default="fp32,fp16,int8",
        help="comma-separated variants to write; fp32 is always written and is the default variant",
    )
    parser.add_argument(
        "--validation-manifest",
        type=Path,
        help="CSV with a 'path' column and one column per label (1, 0, -1 or blank; -1 and blank "
        "are masked): the fp16 and int8 macro AUROC change is measured on it. Without it only "
        "the max probability difference on generated inputs is recorded",
    )
    parser.add_argument(
        "--min-auroc-lower-bound",
        type=float,
        default=0.5,
        help="the validity gate: a trained label is validated only if the lower bound of the 95%% "
        "bootstrap CI of its validation AUROC is above this (default 0.5, better than chance); other "
        "trained labels are served as 'not validated' (probability returned, never positive). "
        "Without per-label validation CIs every trained label is not validated",
    )
    parser.add_argument(
        "--run-metrics",
        type=Path,
        help="metrics.json of the linear-eval or finetune run that wrote CHECKPOINT, for the "
        "validity gate (default: the checkpoint's own metadata, else metrics.json next to it); "
        "it must match the checkpoint's trained labels and thresholds",
    )
    parser.add_argument(
        "--ood-fit-manifest",
        type=Path,
        help="the training images for the out-of-distribution guard: a CSV with a 'path' column "
        "(a run's data manifest: its split=train rows; a 'view' column gives the covered DICOM "
        "ViewPositions). The graph then has a third output, ood_score, and the manifest the "
        "threshold, chosen on held-out in-distribution scores (docs/ood.md). Without it serving "
        "refuses nothing as out of distribution",
    )
    parser.add_argument("--max-batch-size", type=int, default=32, help="Triton max_batch_size")
    parser.add_argument(
        "--ort-optimised",
        choices=("auto", "always", "never"),
        default="never",
        help="also write an onnxruntime graph-optimised fp32 model: auto keeps it only if it is "
        "at least 10%% faster on this CPU at batch 1 and 8 (so the result depends on the CPU's "
        "load: the default never keeps exports reproducible)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing model repository at --out"
    )


def run(args: argparse.Namespace) -> int:
    """Exit status 0 on success, 2 for bad input (message on stderr), 1 if a self-check failed."""
    from export.build import ExportOptions, export_repository
    from export.errors import ExportError

    variants = tuple(name.strip() for name in args.variants.split(",") if name.strip())
    try:
        options = ExportOptions(
            variants=variants if "fp32" in variants else ("fp32", *variants),
            max_batch_size=args.max_batch_size,
            validation_manifest=args.validation_manifest,
            ort_optimised=args.ort_optimised,
            overwrite=args.overwrite,
            min_auroc_lower_bound=args.min_auroc_lower_bound,
            run_metrics=args.run_metrics,
            ood_fit_manifest=args.ood_fit_manifest,
        )
        manifest = export_repository(args.checkpoint, args.out, options)
    except ValueError as exc:  # bad input, including CheckpointError
        print(f"cxr-msn export: error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"cxr-msn export: self-check failed, nothing written: {exc}", file=sys.stderr)
        return 1
    for name, entry in manifest.models.items():
        print(f"{name:<16} {entry.path:<40} {entry.bytes / 1e6:8.2f} MB  sha256 {entry.sha256[:12]}")
    gate = manifest.validity_gate
    if gate is not None and gate.not_validated_labels:
        print(f"not validated ({gate.status}): {', '.join(gate.not_validated_labels)}")
    guard = manifest.ood_guard
    if guard is not None:
        print(f"out-of-distribution guard: {guard.score} over {guard.threshold:.3f} is refused")
    else:
        print("no out-of-distribution guard (no --ood-fit-manifest): nothing is refused as not a chest film")
    print(f"wrote {args.out}/manifest.json")
    return 0
