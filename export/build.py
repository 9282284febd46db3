"""Checkpoint in, Triton model repository out: the ``cxr-msn export`` pipeline.

1. Load the classifier strictly (``cxrmsn.checkpoint.load_classifier``); fold the checkpoint's
   per-label temperatures into the head where linear-eval has not (``export.calibration``).
2. Export fp32 ONNX, run the ONNX checker (full check), compare the interface and check
   parity with PyTorch at batch 1 and 8 (max abs difference <= 1e-4).
3. Derive fp16 (LayerNorm, Softmax and out-of-range nodes kept fp32) and int8 (dynamic
   quantisation, 7-bit per-channel weights that cannot saturate on any x86-64 CPU); compare
   each with fp32 on the validation set (macro AUROC change) or, without one, on generated
   inputs, and record each model's ``fp32_agreement``: its max and mean probability
   difference from fp32 and the tolerance serving's self-check holds it to.
4. Optionally an onnxruntime graph-optimised fp32 model, kept only where it is
   measurably faster on this CPU (``--ort-optimised auto``).
5. With ``--ood-fit-manifest`` (the training images), the out-of-distribution guard
   (``cxrmsn.ood``): a Gaussian of the frozen encoder's CLS embeddings of those images, its
   Mahalanobis distance as a third graph output ``ood_score`` and a threshold chosen on held-out
   in-distribution scores (out-of-fold training, validation), recorded as the manifest's
   ``ood_guard``. Without it the graph has no score and serving refuses nothing as out of
   distribution.
6. Triton folders (CPU config, GPU config, labels), the python-backend twin, and
   ``manifest.json`` with the sha256 of every file and the per-label validity gate
   (``export.validity``: trained labels whose validation AUROC is not shown above a floor).

Everything is written into a temporary folder next to the target, which then replaces
the target by rename: a failed export leaves no half-written repository behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.fileio import sha256_file
from cxrmsn.repository import (
    MANIFEST_NAME,
    Fp32Agreement,
    ModelFile,
    OodGuard,
    RepositoryManifest,
    ValidityGate,
    agreement_tolerance,
    cpu_features,
    write_manifest,
)
from export import triton
from export.calibration import fold_temperatures
from export.errors import ExportError
from export.onnx_export import OPSET, GraphInterface, check_onnx, expected_interface, export_onnx, save_onnx
from export.runtime import Outputs, cpu_session, generated_images, max_abs_difference, run
from export.validation import EvaluationSet, macro_auroc, read_image_manifest, read_validation_manifest
from export.validity import build_gate

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "fp16", "int8")
OPTIMISED = "fp32_optimised"
MODEL_NAME = "cxr_msn"
TRITON_MODELS = {
    "fp32": MODEL_NAME,
    "fp16": f"{MODEL_NAME}_fp16",
    "int8": f"{MODEL_NAME}_int8",
    OPTIMISED: f"{MODEL_NAME}_fp32_optimised",
}
TWIN_MODEL = f"{MODEL_NAME}_python"
MODEL_VERSION = "1"
OPTIMISED_MODES = ("auto", "always", "never")
#: The optimised fp32 model is kept by ``auto`` only if at least this much faster at every batch size.
OPTIMISED_MIN_SPEEDUP = 1.10


@dataclass(frozen=True)
class ExportOptions:
    variants: tuple[str, ...] = VARIANTS
    max_batch_size: int = 32
    validation_manifest: Path | None = None
    ort_optimised: str = "auto"
    overwrite: bool = False
    generated_inputs: int = 16  # compared on when there is no validation manifest
    # The validity gate: a trained label is validated when its validation AUROC's 95 % CI lower
    # bound is above this; run_metrics is the training run's metrics.json (default: beside it).
    min_auroc_lower_bound: float = 0.5
    run_metrics: Path | None = None
    # The out-of-distribution guard's fit set: a CSV with a path column (a run's data manifest:
    # its split=train rows); None exports without the guard.
    ood_fit_manifest: Path | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown or "fp32" not in self.variants:
            raise ValueError(
                f"variants must include fp32 and come from {list(VARIANTS)}, got {list(self.variants)}"
            )
        if not 1 <= self.max_batch_size <= 1024:
            raise ValueError(f"max_batch_size must be in [1, 1024], got {self.max_batch_size}")
        if self.ort_optimised not in OPTIMISED_MODES:
            raise ValueError(f"ort_optimised must be one of {OPTIMISED_MODES}, got {self.ort_optimised!r}")
        if self.generated_inputs < 1:
            raise ValueError(f"generated_inputs must be >= 1, got {self.generated_inputs}")
        if not 0.0 <= self.min_auroc_lower_bound < 1.0:
            raise ValueError(f"min_auroc_lower_bound must be in [0, 1), got {self.min_auroc_lower_bound}")


@dataclass
class _Context:
    """What every variant step needs: the staging folder, the reference outputs, the data."""

    staging: Path
    interface: GraphInterface
    metadata: dict[str, str]
    images: np.ndarray
    reference: Outputs
    evaluation: EvaluationSet | None
    reference_auroc: dict[str, Any] | None
    cpu: dict[str, Any]  # cpu_features() of this machine, recorded with every comparison


def export_repository(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], options: ExportOptions | None = None
) -> RepositoryManifest:
    """Write the model repository for ``checkpoint`` to ``out``; return its manifest."""
    options = options or ExportOptions()
    source, target = Path(checkpoint), Path(out)
    _check_target(target, overwrite=options.overwrite)
    model, metadata = _load_classifier(source)
    calibration = fold_temperatures(model, metadata)  # 1/T into the head, once
    model_size = int(model.encoder.patch_embed.img_size[0])
    if metadata.preprocess_config.crop != model_size:
        raise ValueError(
            f"{source}: preprocessing crops {metadata.preprocess_config.crop} px but "
            f"{metadata.architecture} takes {model_size} px images"
        )
    gate = build_gate(
        metadata, source, run_metrics=options.run_metrics, min_auroc_lower_bound=options.min_auroc_lower_bound
    )
    log.info("validity gate %s: not validated %s", gate.status, gate.not_validated_labels)
    evaluation = None
    if options.validation_manifest is not None:
        evaluation = read_validation_manifest(options.validation_manifest, metadata.preprocess_config)
    guard = None
    if options.ood_fit_manifest is not None:
        model, guard = _fit_guard(model, metadata, options.ood_fit_manifest, evaluation)
    else:
        log.warning("no --ood-fit-manifest: exporting without the out-of-distribution guard")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=target.parent))
    try:
        manifest = _build(staging, model, metadata, source, options, evaluation, gate, calibration, guard)
        _replace(target, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s with variants %s", target, sorted(manifest.models))
    return manifest


def _build(
    staging: Path,
    model: Any,
    metadata: Any,
    source: Path,
    options: ExportOptions,
    evaluation: EvaluationSet | None,
    gate: ValidityGate,
    calibration: dict[str, Any] | None = None,
    guard: OodGuard | None = None,
) -> RepositoryManifest:
    image_size = int(metadata.preprocess_config.crop)
    interface = expected_interface(
        image_size=image_size,
        num_labels=len(metadata.labels),
        grid=model.grid_size,
        ood_score=guard is not None,
    )
    onnx_metadata = _onnx_metadata(metadata, sha256_file(source), guard)
    fp32_path, fp32_notes = _export_fp32(staging, model, interface, onnx_metadata, image_size)
    images = (
        evaluation.images if evaluation else generated_images(options.generated_inputs, image_size=image_size)
    )
    reference = run(cpu_session(fp32_path), images)
    reference_auroc = macro_auroc(reference[0], evaluation.labels) if evaluation else None
    context = _Context(
        staging, interface, onnx_metadata, images, reference, evaluation, reference_auroc, cpu_features()
    )
    files: dict[str, ModelFile] = {
        "fp32": _model_file(
            staging, fp32_path, "fp32", fp32_notes | _fp32_accuracy(context), _agreement(context, reference)
        )
    }
    if "fp16" in options.variants:
        files["fp16"] = _fp16_variant(context, fp32_path)
    if "int8" in options.variants:
        files["int8"] = _int8_variant(context, fp32_path)
    optimised, decision = _optimised_variant(context, fp32_path, options.ort_optimised)
    files["fp32"].notes["ort_offline_optimisation"] = decision
    if optimised is not None:
        files[OPTIMISED] = optimised
    _write_triton_folders(staging, interface, files, metadata.labels, options.max_batch_size)
    _write_twin(staging, interface, files["fp32"], metadata.labels, options.max_batch_size)
    manifest = _manifest(staging, files, metadata, source, interface, options)
    manifest = replace(manifest, validity_gate=gate, calibration=dict(calibration or {}), ood_guard=guard)
    write_manifest(staging, manifest)
    return manifest


def _onnx_metadata(metadata: Any, source_sha256: str, guard: OodGuard | None) -> dict[str, str]:
    """What every exported ONNX file carries in its metadata_props."""
    onnx_metadata = {
        "cxr_msn.architecture": metadata.architecture,
        "cxr_msn.labels": json.dumps(list(metadata.labels)),
        "cxr_msn.preprocessing": json.dumps(metadata.preprocessing, sort_keys=True),
        "cxr_msn.source_checkpoint_sha256": source_sha256,
        "cxr_msn.intended_use": metadata.intended_use,
    }
    if guard is not None:
        onnx_metadata["cxr_msn.ood_threshold"] = repr(guard.threshold)
    return onnx_metadata


def _manifest(
    staging: Path,
    files: dict[str, ModelFile],
    metadata: Any,
    source: Path,
    interface: Any,
    options: ExportOptions,
) -> RepositoryManifest:
    """The manifest of the staged repository, before its gate, calibration and guard records."""
    return RepositoryManifest(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        architecture=metadata.architecture,
        labels=list(metadata.labels),
        preprocessing=dict(metadata.preprocessing),
        models=files,
        default_variant="fp32",
        trained_labels=list(metadata.trained_labels),
        thresholds=dict(metadata.thresholds),
        training_data=dict(metadata.training_data),
        metrics=dict(metadata.metrics),
        intended_use=metadata.intended_use,
        source_checkpoint={
            "path": str(source),
            "sha256": sha256_file(source),
            "bytes": source.stat().st_size,
            "architecture": metadata.architecture,
            "kind": metadata.kind,
        },
        io={
            **interface.to_dict(),
            "opset": OPSET,
            "max_batch_size": options.max_batch_size,
            "python_twin": TWIN_MODEL,
        },
        files=_other_files(staging, files),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _embeddings(model: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The frozen encoder's CLS embeddings [N, D] (what the head reads) of preprocessed images."""
    import torch

    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            tokens = model.eval().forward_features(torch.from_numpy(images[start : start + batch_size]))
            parts.append(model.forward_head(tokens, pre_logits=True).numpy())
    return np.concatenate(parts).astype(np.float64)


def _fit_guard(
    model: Any, metadata: Any, fit_manifest: Path, evaluation: EvaluationSet | None
) -> tuple[Any, OodGuard]:
    """The classifier wrapped with its out-of-distribution score, and the manifest's record."""
    from cxrmsn import ood
    from cxrmsn.model import GuardedClassifier

    fit_set = read_image_manifest(fit_manifest, metadata.preprocess_config, split="train")
    if "every row" in fit_set.source:  # no split column: nothing keeps test images out of the fit
        log.warning(
            "--ood-fit-manifest %s has no 'split' column: the guard is fitted on every row; "
            "make sure it lists training images only",
            fit_manifest,
        )
    train = _embeddings(model, fit_set.images)
    valid = _embeddings(model, evaluation.images) if evaluation is not None else None
    fit = ood.fit_guard(train, valid)
    held_out = {
        "train_out_of_fold": {
            "source": fit_set.source,
            **ood.summary(fit.held_out_scores["train_out_of_fold"]),
        }
    }
    if evaluation is not None:
        held_out["valid"] = {"source": evaluation.source, **ood.summary(fit.held_out_scores["valid"])}
    guard = OodGuard(
        output=ood.OOD_OUTPUT,
        score=ood.SCORE_KIND,
        threshold=round(fit.threshold, 4),
        threshold_rule=ood.THRESHOLD_RULE,
        fitted_on={
            "source": fit_set.source,
            "images": len(train),
            "embedding_dim": int(train.shape[1]),
            "covariance": "Ledoit-Wolf shrinkage (sklearn.covariance.LedoitWolf)",
            "shrinkage": round(fit.shrinkage, 6),
        },
        threshold_on=held_out,
        modalities=list(ood.RADIOGRAPH_MODALITIES),
        view_positions=ood.covered_views(fit_set.views),
        about="Mahalanobis distance of the frozen encoder's CLS embedding from a Gaussian of the "
        "training images' embeddings, computed in the graph (output ood_score); an image over the "
        "threshold, or a DICOM whose Modality or ViewPosition is outside these, is not served as a "
        "chest radiograph (docs/ood.md)",
    )
    log.info(
        "out-of-distribution guard: fitted on %d images, threshold %.3f (%s)",
        len(train),
        guard.threshold,
        {name: entry["max"] for name, entry in held_out.items()},
    )
    return GuardedClassifier(model, fit.mean, fit.whitening), guard


def _export_fp32(
    staging: Path, model: Any, interface: GraphInterface, metadata: dict[str, str], image_size: int
) -> tuple[Path, dict[str, Any]]:
    from export.parity import check_parity

    path = _model_path(staging, "fp32")
    log.info("exporting fp32 ONNX (opset %d)", OPSET)
    export_onnx(model, path, image_size=image_size)
    proto = check_onnx(path, interface)
    save_onnx(proto, path, metadata | {"cxr_msn.precision": "fp32"})
    parity = check_parity(model, path, image_size=image_size)
    log.info("parity with PyTorch: %s", parity)
    return path, {"parity_vs_pytorch": parity, "exporter": "torch.onnx.export(dynamo=True)", "opset": OPSET}


def _fp16_variant(context: _Context, fp32_path: Path) -> ModelFile:
    import onnx

    from export.fp16 import convert_to_fp16

    log.info("converting to fp16")
    probe = context.images[: min(8, len(context.images))]
    converted, notes = convert_to_fp16(onnx.load(str(fp32_path)), probe)
    path = _model_path(context.staging, "fp16")
    save_onnx(converted, path, context.metadata | {"cxr_msn.precision": "fp16"})
    check_onnx(path, context.interface)
    comparison, agreement = _compare(context, path)
    return _model_file(context.staging, path, "fp16", notes | comparison, agreement)


def _int8_variant(context: _Context, fp32_path: Path) -> ModelFile:
    import onnx

    from export.int8 import quantise_int8

    log.info("quantising to int8")
    path = _model_path(context.staging, "int8")
    notes = quantise_int8(fp32_path, path)
    bound = notes["int16_pair_sums"]
    if not bound["saturation_free"]:
        raise ExportError(
            f"int8 weights reach u8 x s8 pair sums of {bound['min']}..{bound['max']}, outside int16: "
            "CPUs without VNNI would saturate them (quantise with reduce_range)"
        )
    save_onnx(onnx.load(str(path)), path, context.metadata | {"cxr_msn.precision": "int8"})
    check_onnx(path, context.interface)
    comparison, agreement = _compare(context, path)
    log.info(
        "int8 vs fp32: max %.4g, mean %.4g probability difference (self-check tolerance %.4g)",
        agreement.max_abs_difference,
        agreement.mean_abs_difference,
        agreement.tolerance,
    )
    return _model_file(context.staging, path, "int8", notes | comparison, agreement)


def _optimised_variant(
    context: _Context, fp32_path: Path, mode: str
) -> tuple[ModelFile | None, dict[str, Any]]:
    """An onnxruntime-optimised (level EXTENDED) fp32 model, if ``mode`` and the timings say so."""
    import onnx
    import onnxruntime as ort

    from export.benchmark import interleaved_medians

    if mode == "never":
        return None, {"measured": False, "kept": False, "reason": "--ort-optimised never"}
    path = _model_path(context.staging, OPTIMISED)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"])
    speedups = {}
    for batch in (1, 8):
        images = generated_images(batch, image_size=context.interface.inputs[0].shape[-1], seed=batch)
        base, fast = interleaved_medians(
            cpu_session(fp32_path), cpu_session(path), images, repeats=15, warmup=2
        )
        speedups[f"batch_{batch}"] = round(base / fast, 3)
    kept = keep_optimised(mode, speedups)
    decision = {
        "measured": True,
        "speedup_vs_fp32": speedups,
        "kept": kept,
        "min_speedup": OPTIMISED_MIN_SPEEDUP,
    }
    log.info("onnxruntime offline optimisation: %s", decision)
    if not kept:
        shutil.rmtree(path.parent.parent)
        return None, decision
    save_onnx(onnx.load(str(path)), path, context.metadata | {"cxr_msn.precision": "fp32"})
    check_onnx(path, context.interface, full_check=False)
    notes = {
        "optimisation": "onnxruntime ORT_ENABLE_EXTENDED, CPU execution provider only",
        "why": "onnxruntime applies these optimisations itself when it loads the fp32 model; "
        "this file saves that work at load time and is kept only where timing favoured it",
    } | decision
    comparison, agreement = _compare(context, path)
    return _model_file(context.staging, path, "fp32", notes | comparison, agreement), decision


def keep_optimised(mode: str, speedups: dict[str, float]) -> bool:
    """``always``, or ``auto`` with at least OPTIMISED_MIN_SPEEDUP at every measured batch size."""
    return mode == "always" or (mode == "auto" and min(speedups.values()) >= OPTIMISED_MIN_SPEEDUP)


def _fp32_accuracy(context: _Context) -> dict[str, Any]:
    if context.reference_auroc is None or context.evaluation is None:
        return {}
    return {"validation_set": context.evaluation.source, "auroc": context.reference_auroc}


def _compared_on(context: _Context) -> str:
    return context.evaluation.source if context.evaluation else f"{len(context.images)} generated inputs"


def _agreement(context: _Context, outputs: Outputs) -> Fp32Agreement:
    """``outputs``' probabilities against fp32's on the check images, with the self-check tolerance."""
    difference = np.abs(outputs[0].astype(np.float64) - context.reference[0])
    largest = float(difference.max())
    return Fp32Agreement(
        max_abs_difference=largest,
        mean_abs_difference=float(difference.mean()),
        tolerance=agreement_tolerance(largest),
        compared_on=_compared_on(context),
        cpu=context.cpu,
    )


def _compare(context: _Context, path: Path) -> tuple[dict[str, Any], Fp32Agreement]:
    """A variant's difference from fp32 and, with a validation set, its macro AUROC change."""
    outputs = run(cpu_session(path), context.images)
    difference = max_abs_difference(outputs, context.reference)
    if not all(np.isfinite(value) for value in difference.values()):
        raise ExportError(f"{path.name} gives non-finite outputs where fp32 does not: {difference}")
    agreement = _agreement(context, outputs)
    notes: dict[str, Any] = {"max_abs_diff_vs_fp32": difference, "compared_on": _compared_on(context)}
    reference = context.reference_auroc
    if context.evaluation is None or reference is None:
        notes["auroc"] = "not measured: no --validation-manifest was given"
        return notes, agreement
    auroc = macro_auroc(outputs[0], context.evaluation.labels)
    if auroc["macro_auroc"] is None or reference["macro_auroc"] is None:
        notes["auroc"] = "not measured: no label has both positives and negatives in the validation set"
        return notes, agreement
    notes["auroc"] = {
        "macro_auroc": auroc["macro_auroc"],
        "macro_auroc_fp32": reference["macro_auroc"],
        "macro_auroc_change": auroc["macro_auroc"] - reference["macro_auroc"],
        "per_label_change": {
            label: value - reference["per_label"][label] for label, value in auroc["per_label"].items()
        },
        "skipped_labels": auroc["skipped_labels"],
    }
    return notes, agreement


def _write_triton_folders(
    staging: Path,
    interface: GraphInterface,
    files: dict[str, ModelFile],
    labels: list[str],
    max_batch_size: int,
) -> None:
    for variant, entry in files.items():
        folder = staging / entry.triton_model
        (folder / triton.CPU_CONFIG).write_text(
            triton.cpu_config(entry.triton_model, interface, max_batch_size=max_batch_size), encoding="utf-8"
        )
        if variant in ("fp32", "fp16"):  # int8 (dynamic) and the ORT-optimised model are CPU-only
            gpu = folder / triton.GPU_CONFIG
            gpu.parent.mkdir(parents=True, exist_ok=True)
            gpu.write_text(
                triton.gpu_config(entry.triton_model, interface, max_batch_size=max_batch_size), "utf-8"
            )
        (folder / triton.LABELS_FILE).write_text(triton.labels_text(labels), encoding="utf-8")


def _write_twin(
    staging: Path, interface: GraphInterface, fp32: ModelFile, labels: list[str], max_batch_size: int
) -> None:
    folder = staging / TWIN_MODEL
    (folder / MODEL_VERSION).mkdir(parents=True)
    config = triton.twin_config(
        TWIN_MODEL, interface, max_batch_size=max_batch_size, onnx_path=fp32.path, onnx_sha256=fp32.sha256
    )
    (folder / triton.CPU_CONFIG).write_text(config, encoding="utf-8")
    (folder / triton.LABELS_FILE).write_text(triton.labels_text(labels), encoding="utf-8")
    shutil.copyfile(triton.TWIN_MODEL_SOURCE, folder / MODEL_VERSION / "model.py")


def _model_path(staging: Path, variant: str) -> Path:
    path = staging / TRITON_MODELS[variant] / MODEL_VERSION / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _model_file(
    staging: Path, path: Path, precision: str, notes: dict[str, Any], agreement: Fp32Agreement
) -> ModelFile:
    relative = path.relative_to(staging)
    return ModelFile(
        path=relative.as_posix(),
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        precision=precision,
        triton_model=relative.parts[0],
        notes=notes,
        fp32_agreement=agreement,
    )


def _other_files(staging: Path, files: dict[str, ModelFile]) -> dict[str, str]:
    models = {entry.path for entry in files.values()}
    others = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        relative = path.relative_to(staging).as_posix()
        if relative != MANIFEST_NAME and relative not in models:
            others[relative] = sha256_file(path)
    return others


def _load_classifier(source: Path) -> tuple[Any, Any]:
    from cxrmsn.checkpoint import load_classifier, read_metadata

    metadata = read_metadata(source)
    if metadata.kind != "classifier":
        raise ValueError(
            f"{source} holds an {metadata.kind} without a trained head; export needs a classifier "
            "(train a linear head on it first, or `cxr-msn import-weights --kind classifier` "
            "for an untrained head)"
        )
    return load_classifier(source)


def _check_target(target: Path, *, overwrite: bool) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"{target} exists and is not a folder")
    if not any(target.iterdir()):
        return
    if not (target / MANIFEST_NAME).is_file():
        raise ValueError(
            f"{target} exists, is not empty and is not a cxr-msn model repository: refusing to replace it"
        )
    if not overwrite:
        raise ValueError(f"{target} already holds a model repository; pass --overwrite to replace it")


def _replace(target: Path, staging: Path) -> None:
    """Move ``staging`` to ``target``; an existing ``target`` is set aside first, then removed."""
    if not target.exists():
        os.replace(staging, target)
        return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside)
