"""The prediction path shared by the HTTP service and ``cxr-msn predict``: no torch.

bytes -> ``cxrmsn.imaging.decode`` -> ``cxrmsn.preprocess.preprocess`` -> backend ->
a JSON-ready result. The model file is verified against the manifest's sha256 before
it is loaded.

Then the self-check: the repository's stored regression inputs (``regression.json``) go
through the loaded variant, and its probabilities must be within the variant's tolerance
of the stored fp32 probabilities (fp32: 1e-5; int8: twice what export measured). An int8
model can compute other integers on another CPU (x86-64 without VNNI saturates int16);
this is where that shows. A variant that fails is refused (``VariantRefusedError``, one line
naming the CPU's int8 flags) or, with ``CXR_MSN_VARIANT_FALLBACK=fp32``, replaced by fp32
with a warning. A repository without regression inputs is served unchecked, with a note.

The out-of-distribution guard (``cxrmsn.ood``, docs/ood.md): ``screen`` applies its rule to
one image's ``ood_score`` (a third output of a guarded graph) and DICOM header; with
CXR_MSN_OOD=refuse (the default) an image it does not take for a chest radiograph raises
``NotAChestRadiographError`` (422), with CXR_MSN_OOD=warn it is served with a warning. Every
result says how close it came (``ood``: score and threshold). A repository exported without
the guard is served with a warning; its DICOM Modality check still refuses.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.errors import NotAChestRadiographError
from cxrmsn.imaging import DecodedImage, decode
from cxrmsn.ood import SCORE_KIND, Verdict, decide
from cxrmsn.preprocess import PreprocessConfig, preprocess
from cxrmsn.repository import (
    GATE_EVALUATED,
    REGRESSION_FILE,
    RepositoryError,
    RepositoryManifest,
    cpu_features,
    describe_cpu,
    read_manifest,
    read_regression_record,
    verified_file,
    verified_model_path,
)
from serving.backends import Backend, Scored, create_backend
from serving.config import ServingConfig
from serving.overlay import model_view, overlay_png, overlay_rgb, png_bytes

UNTRAINED_WARNING = (
    "the model had no training signal for: {labels}; their probabilities are reported "
    "but never counted as positive"
)
NOT_VALIDATED_WARNING = (
    "not validated: {labels} ({why}); their probabilities are reported but never counted as positive"
)
GATE_ABSENT = {
    "status": "absent",
    "reason": "this model repository was exported before the validity gate; no label is marked not validated",
}
NO_FINDING = "No Finding"
#: Labels that do not contradict No Finding: CheXpert's labeller sets No Finding when no
#: pathology is present, support devices aside.
COMPATIBLE_WITH_NO_FINDING = frozenset({NO_FINDING, "Support Devices"})
CONTRADICTION_NOTE = (
    "No Finding was over its threshold ({probability:.3f} >= {threshold:.3f}) while {findings} "
    "{verb} positive: a positive finding outranks No Finding, which is reported as not positive"
)
FALLBACK_ENV = "CXR_MSN_VARIANT_FALLBACK"
FALLBACK_WARNING = (
    "served {served} instead of {requested}: {requested} failed its start-up self-check on this CPU"
)
PASSED, FAILED, SKIPPED, NOT_RUN = "passed", "failed", "skipped", "not run"
NO_GUARD_WARNING = (
    "this model repository has no out-of-distribution guard (exported without --ood-fit-manifest "
    "or before it existed): images that are not chest radiographs are classified too"
)
OOD_WARNING = (
    "not taken for a chest radiograph ({detail}); served because CXR_MSN_OOD=warn: "
    "these probabilities have no meaning for such an image"
)
#: ``ood.status`` of a result.
OOD_PASSED, OOD_FLAGGED, OOD_NO_GUARD, OOD_NOT_SCORED = "passed", "flagged", "no_guard", "not_scored"
LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Findings:
    """The decision for one image: what is positive, and what was over its threshold but overruled.

    ``overruled``: label -> why it is not positive although over its threshold (the consistency
    rule); each reason is also one of ``warnings``.
    """

    positive: list[str]
    overruled: dict[str, str]
    warnings: list[str]


def consistent_findings(
    labels: Collection[str],
    probabilities: dict[str, float],
    thresholds: dict[str, float],
    never: Collection[str] = (),
) -> Findings:
    """THE decision rule, used by the JSON, /ui (which renders ``positive``), the SR and the CLI.

    1. A label is over its threshold when it is trained, validated (not in ``never``), has a
       threshold, and its probability is at or above it.
    2. No Finding is positive only when no trained, validated finding is: if any label other
       than No Finding and Support Devices is positive, No Finding is reported as not positive,
       with a warning naming the findings (a finding outranks the absence of findings).
    """
    never = set(never)
    over = [
        label
        for label in labels
        if label in thresholds and label not in never and probabilities[label] >= thresholds[label]
    ]
    findings = [label for label in over if label not in COMPATIBLE_WITH_NO_FINDING]
    if NO_FINDING not in over or not findings:
        return Findings(over, {}, [])
    note = CONTRADICTION_NOTE.format(
        probability=probabilities[NO_FINDING],
        threshold=thresholds[NO_FINDING],
        findings=", ".join(findings),
        verb="is" if len(findings) == 1 else "are",
    )
    return Findings([label for label in over if label != NO_FINDING], {NO_FINDING: note}, [note])


class VariantRefusedError(RepositoryError):
    """The variant to serve is further from the stored fp32 probabilities than it may be, here."""


@dataclass(frozen=True)
class SelfCheck:
    """The start-up self-check of one variant: passed, failed, skipped (nothing to run) or not run."""

    variant: str
    status: str
    detail: str
    max_abs_difference: float | None = None
    tolerance: float | None = None


def variant_fallback_from_env() -> str | None:
    """The variant ``CXR_MSN_VARIANT_FALLBACK`` names (``fp32``), or None (unset, empty, ``none``)."""
    value = os.environ.get(FALLBACK_ENV, "").strip()
    return None if value.lower() in ("", "none") else value


def run_self_check(
    repository: Path,
    manifest: RepositoryManifest,
    variant: str,
    infer: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> SelfCheck:
    """Run the stored regression inputs through ``infer`` and compare with the stored fp32 probabilities."""
    record = read_regression_record(repository, manifest)  # RepositoryError if tampered
    if record is None:
        return SelfCheck(variant, SKIPPED, f"no {REGRESSION_FILE} in {repository}: nothing to compare with")
    if record.inputs_file is None:
        return SelfCheck(
            variant,
            SKIPPED,
            f"{REGRESSION_FILE} is format {record.format_version}, written before the self-check: "
            "it stores no model inputs (write them again: recipes.bundled_model.write_regression_values)",
        )
    inputs = np.load(verified_file(repository, manifest, record.inputs_file), allow_pickle=False)
    if inputs.dtype != np.float32 or inputs.ndim != 4 or len(inputs) != len(record.names):
        raise RepositoryError(
            f"{record.inputs_file} holds {inputs.dtype} {list(inputs.shape)}, not float32 "
            f"[{len(record.names)}, 3, S, S] as {REGRESSION_FILE} says"
        )
    try:
        probabilities, _ = infer(inputs)
    except Exception as error:  # ONNX Runtime raises its own types; the variant cannot be served
        detail = f"{variant} failed to run its regression inputs ({type(error).__name__}: {error})"
        return SelfCheck(variant, FAILED, " ".join(detail.split())[:300])
    reference = [[record.reference[name][label] for label in manifest.labels] for name in record.names]
    difference = np.abs(np.asarray(probabilities, dtype=np.float64) - np.asarray(reference))
    worst = float(difference.max()) if np.isfinite(difference).all() else float("inf")
    tolerance = record.tolerance(variant, manifest)
    detail = (
        f"{variant} is up to {worst:.3g} from the stored fp32 probabilities on {len(record.names)} "
        f"regression inputs, tolerance {tolerance.value:.3g}"
    )
    status = PASSED if worst <= tolerance.value else FAILED
    return SelfCheck(variant, status, detail, worst, tolerance.value)


@dataclass(frozen=True)
class PreparedImage:
    decoded: DecodedImage
    model_input: np.ndarray  # float32 [3, crop, crop]


def prepare_image(
    data: bytes, preprocessing: PreprocessConfig, *, keep_header: bool = False
) -> PreparedImage:
    """Decode and preprocess; raises ``cxrmsn.errors.DecodeError`` for bad input. ``keep_header``:
    a DICOM's header stays in ``decoded.header`` (for DICOM output).

    A top-level function (no model needed) so that ``serving.decode_pool`` workers run it.
    """
    # Reduced where the codec can.
    decoded = decode(data, min_size=preprocessing.decode_min_side(), keep_header=keep_header)
    return PreparedImage(decoded, preprocess(decoded.pixels, preprocessing, extent=decoded.extent))


class Predictor:
    """One loaded, verified model and everything needed to turn bytes into a result."""

    def __init__(
        self, config: ServingConfig, *, self_check: bool = True, fallback: str | None = None
    ) -> None:
        """Load and self-check ``config``'s variant; ``fallback`` is served instead if it fails.

        Raises ``VariantRefusedError`` when the variant fails its self-check and there is no
        fallback (or the fallback fails too); ``RepositoryError`` for a damaged repository.
        """
        self.config = config
        self.manifest: RepositoryManifest = read_manifest(config.model_repository)
        self.requested_variant = config.variant or self.manifest.default_variant
        if fallback is not None and fallback not in self.manifest.models:
            raise RepositoryError(
                f"{FALLBACK_ENV}={fallback}: no such variant in {config.model_repository}; "
                f"it has {sorted(self.manifest.models)}"
            )
        self.variant = self.requested_variant
        self.fallback_reason: str | None = None
        self.backend: Backend
        self.backend, self.self_check = self._load(self.variant, self_check)
        if self.self_check.status == FAILED:
            failed = self.self_check
            if fallback is None or fallback == self.variant:
                raise VariantRefusedError(refusal_message(config.model_repository, failed))
            LOGGER.warning(
                "variant %s failed its self-check: %s; CPU %s; serving %s instead (%s=%s)",
                self.variant,
                failed.detail,
                describe_cpu(cpu_features()),
                fallback,
                FALLBACK_ENV,
                fallback,
            )
            self.fallback_reason = FALLBACK_WARNING.format(served=fallback, requested=self.variant)
            self.variant = fallback
            self.backend, self.self_check = self._load(fallback, self_check)
            if self.self_check.status == FAILED:
                raise VariantRefusedError(refusal_message(config.model_repository, failed, self.self_check))
        self.model_file = self.manifest.models[self.variant]
        self.preprocessing = self.manifest.preprocess_config
        trained = set(self.manifest.trained_labels)
        self.untrained_labels = [label for label in self.manifest.labels if label not in trained]
        self.not_validated_labels = self.manifest.not_validated_labels
        self.guard = self.manifest.ood_guard
        if self.guard is not None and not self.backend.has_ood_score:
            raise RepositoryError(
                f"{config.model_repository}: the manifest records an out-of-distribution guard but "
                f"the {self.variant} graph has no {self.guard.output} output"
            )
        if self.guard is None:  # every result carries it as a warning
            LOGGER.info("%s", NO_GUARD_WARNING)

    def _load(self, variant: str, check: bool) -> tuple[Backend, SelfCheck]:
        repository = self.config.model_repository
        model_path = verified_model_path(repository, self.manifest, variant)
        explicit = self.config.triton_model if variant == self.requested_variant else None
        backend = create_backend(
            self.config,
            model_path,
            explicit or self.manifest.models[variant].triton_model,
            ood_score=self.manifest.ood_guard is not None,
        )
        if not check:
            return backend, SelfCheck(variant, NOT_RUN, "self-check turned off by the caller")
        if self.config.backend != "onnxruntime":
            result = SelfCheck(variant, SKIPPED, "the model runs on the Triton server, not in this process")
        else:
            result = run_self_check(repository, self.manifest, variant, backend.infer)
        if result.status == SKIPPED:
            LOGGER.info("self-check of %s skipped: %s", variant, result.detail)
        elif result.status == PASSED:
            LOGGER.info("self-check passed: %s", result.detail)
        return backend, result

    def prepare(self, data: bytes, *, keep_header: bool = False) -> PreparedImage:
        """Decode and preprocess; raises ``cxrmsn.errors.DecodeError`` for bad input."""
        return prepare_image(data, self.preprocessing, keep_header=keep_header)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.backend.infer(batch)

    def infer_scored(self, batch: np.ndarray) -> Scored:
        """(probabilities, attention, ood_score [B] or None without the guard) of one batch."""
        return self.backend.infer_scored(batch)

    def verdict(self, prepared: PreparedImage, score: float | None) -> Verdict:
        """The guard's rule (``cxrmsn.ood.decide``) for one image and its score."""
        info = prepared.decoded.info
        guard = self.guard
        dicom = info.format == "dicom"
        return decide(
            None if guard is None or score is None else float(score),
            None if guard is None else guard.threshold,
            modality=info.modality if dicom else None,
            view_position=info.view_position if dicom else None,
            views=guard.view_positions if guard is not None else (),
        )

    def screen(self, prepared: PreparedImage, score: float | None) -> Verdict:
        """``verdict``, raising ``NotAChestRadiographError`` for a refused image unless
        CXR_MSN_OOD=warn (then the result carries a warning)."""
        verdict = self.verdict(prepared, score)
        if verdict.refused and self.config.ood_mode == "refuse":
            raise NotAChestRadiographError(
                f"not taken for a chest radiograph: {verdict.detail()}",
                score=verdict.score,
                threshold=verdict.threshold,
            )
        return verdict

    def ood_summary(self, verdict: Verdict) -> dict[str, Any]:
        """The result's ``ood`` object: how the image fared against the guard."""
        if verdict.refused:
            status = OOD_FLAGGED
        elif self.guard is None:
            status = OOD_NO_GUARD
        elif verdict.score is None:
            status = OOD_NOT_SCORED
        else:
            status = OOD_PASSED
        return {
            "status": status,
            "score": None if verdict.score is None else round(verdict.score, 4),
            "threshold": verdict.threshold,
            "score_kind": SCORE_KIND if self.guard is not None else None,
            "mode": self.config.ood_mode,
            "reasons": list(verdict.reasons),
        }

    def result(
        self,
        prepared: PreparedImage,
        probabilities: np.ndarray,
        attention: np.ndarray,
        *,
        overlay: bool,
        image: bool = False,
        ood: Verdict | None = None,
    ) -> dict[str, Any]:
        """The JSON result; ``ood`` is ``screen``'s verdict (None: the header rules only, no score)."""
        labels = self.manifest.labels
        by_label = {label: round(float(p), 6) for label, p in zip(labels, probabilities, strict=True)}
        attention = np.asarray(attention, dtype=np.float64)
        total = float(attention.sum())
        normalised = attention / total if total > 0 else np.full_like(attention, 1.0 / attention.size)
        findings = self.findings(by_label)
        verdict = ood if ood is not None else self.verdict(prepared, None)
        warnings = list(prepared.decoded.info.warnings)
        if verdict.refused:
            warnings.insert(0, OOD_WARNING.format(detail=verdict.detail()))
        warnings += self.model_warnings()
        warnings += findings.warnings
        result: dict[str, Any] = {
            "labels": list(labels),
            "probabilities": by_label,
            "attention": {
                "shape": list(normalised.shape),
                "values": np.round(normalised, 7).tolist(),
            },
            "positive": findings.positive,
            "overruled": findings.overruled,
            "model": self.model_summary(),
            "input": prepared.decoded.info.to_dict(),
            "ood": self.ood_summary(verdict),
            "warnings": warnings,
        }
        if overlay:
            png = overlay_png(prepared.decoded.pixels, attention, self.preprocessing, prepared.decoded.extent)
            result["overlay_png_base64"] = base64.b64encode(png).decode("ascii")
        if image:
            view = png_bytes(model_view(prepared.decoded.pixels, self.preprocessing, prepared.decoded.extent))
            result["image_png_base64"] = base64.b64encode(view).decode("ascii")
        return result

    def dicom_outputs(
        self,
        prepared: PreparedImage,
        attention: np.ndarray,
        result: dict[str, Any],
        source: Any,
        parts: Collection[str] = ("sr", "sc"),
    ) -> dict[str, bytes]:
        """DICOM Part 10 bytes by part: "sr" the Structured Report, "sc" the heatmap capture.

        ``source`` is ``serving.dicom_output.source_header`` of the upload; raises
        ``DicomOutputError`` when highdicom cannot build a part from it, and
        ``NotAChestRadiographError`` for an image the guard flagged (``CXR_MSN_OOD=warn``): a
        PACS report carries no warnings, so none is written for it.
        """
        from serving import dicom_output  # highdicom: loaded only when DICOM output is asked for

        ood = result.get("ood") or {}
        if ood.get("status") == OOD_FLAGGED:
            reasons = "; ".join(ood.get("reasons") or []) or "flagged by the out-of-distribution guard"
            raise NotAChestRadiographError(
                f"no DICOM output for an image the guard flagged ({reasons}); "
                "CXR_MSN_OOD=warn serves it as JSON only",
                score=ood.get("score"),
                threshold=ood.get("threshold"),
            )

        datasets: dict[str, Any] = {}
        if "sr" in parts:
            datasets["sr"] = dicom_output.structured_report(source, result, dict(self.manifest.thresholds))
        if "sc" in parts:
            pixels = overlay_rgb(
                prepared.decoded.pixels, attention, self.preprocessing, prepared.decoded.extent
            )
            datasets["sc"] = dicom_output.overlay_capture(source, pixels, result)
        return {part: dicom_output.to_bytes(dataset) for part, dataset in datasets.items()}

    def model_warnings(self) -> list[str]:
        """What every result of this model carries: labels that can never be positive, and why."""
        warnings = [self.fallback_reason] if self.fallback_reason else []
        if self.guard is None:
            warnings.append(NO_GUARD_WARNING)
        if self.untrained_labels:
            warnings.append(UNTRAINED_WARNING.format(labels=", ".join(self.untrained_labels)))
        gate = self.manifest.validity_gate
        if gate is not None and self.not_validated_labels:
            level = f"{gate.ci_level * 100:g} %" if gate.ci_level else "95 %"
            why = (
                f"their validation AUROC was not shown to be above {gate.min_auroc_lower_bound}: "
                f"{level} CI lower bound, or no estimate"
                if gate.status == GATE_EVALUATED
                else f"no validation to check: {gate.reason}"
            )
            labels = ", ".join(self.not_validated_labels)
            warnings.append(NOT_VALIDATED_WARNING.format(labels=labels, why=why))
        return warnings

    def findings(self, probabilities: dict[str, float]) -> Findings:
        """The decision every surface reports (``consistent_findings`` with this model's gate)."""
        never = set(self.untrained_labels) | set(self.not_validated_labels)
        return consistent_findings(self.manifest.labels, probabilities, dict(self.manifest.thresholds), never)

    def positive_labels(self, probabilities: dict[str, float]) -> list[str]:
        """Trained, validated labels at or over their threshold, before the No Finding rule
        (``findings`` applies it; results report that)."""
        findings = self.findings(probabilities)
        return sorted([*findings.positive, *findings.overruled], key=list(self.manifest.labels).index)

    def model_summary(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "architecture": self.manifest.architecture,
            "variant": self.variant,
            "precision": self.model_file.precision,
            "sha256": self.model_file.sha256,
            "trained_labels": [label for label in self.manifest.labels if label not in self.untrained_labels],
            "untrained_labels": list(self.untrained_labels),
            "not_validated_labels": list(self.not_validated_labels),
            "backend": self.backend.description,
            "intended_use": self.manifest.intended_use,
        }

    def model_card(self) -> dict[str, Any]:
        """What ``GET /model`` returns."""
        return {
            **self.model_summary(),
            "labels": list(self.manifest.labels),
            "thresholds": dict(self.manifest.thresholds),
            "calibration": dict(self.manifest.calibration),
            "ood_guard": asdict(guard) if (guard := self.manifest.ood_guard) else None,
            "ood_mode": self.config.ood_mode,
            "preprocessing": self.preprocessing.to_dict(),
            "training_data": self.manifest.training_data,
            "metrics": self.manifest.metrics,
            "source_checkpoint": self.manifest.source_checkpoint,
            "variants": sorted(self.manifest.models),
            "validity_gate": asdict(gate) if (gate := self.manifest.validity_gate) else dict(GATE_ABSENT),
        }


def refusal_message(repository: Path, check: SelfCheck, fallback: SelfCheck | None = None) -> str:
    """One line: which variant is refused, by how much, and this CPU's int8 flags."""
    if fallback is None:
        what, hint = check.detail, f" (set {FALLBACK_ENV}=fp32 to serve fp32 instead)"
    else:
        what, hint = f"{check.detail}; the fallback failed too: {fallback.detail}", ""
    return (
        f"refusing variant {check.variant} of {repository}: {what}; CPU {describe_cpu(cpu_features())}{hint}"
    )


def load_predictor(
    repository: Path | None = None, *, self_check: bool = True, fallback: str | None = None, **overrides: Any
) -> Predictor:
    """A Predictor configured from the environment.

    ``fallback``: the variant served if the chosen one fails its self-check; None reads
    CXR_MSN_VARIANT_FALLBACK, ``"none"`` refuses whatever the environment says.
    """
    config = ServingConfig.from_env()
    values = {**config.__dict__, **overrides}
    if repository is not None:
        values["model_repository"] = repository
    if fallback is None:
        fallback = variant_fallback_from_env()
    elif fallback.lower() == "none":
        fallback = None
    return Predictor(ServingConfig(**values), self_check=self_check, fallback=fallback)
