"""Typed API responses: each Field description becomes part of the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class AttentionMap(BaseModel):
    shape: list[int] = Field(description="[rows, columns] of the patch grid, e.g. [14, 14]")
    values: list[list[float]] = Field(
        description="last-layer CLS-to-patch attention averaged over heads, normalised to sum to 1"
    )


class ModelInfo(BaseModel):
    name: str = Field(description="model name in the repository")
    version: str = Field(description="model version")
    architecture: str = Field(description="encoder architecture, e.g. vit_small_patch16_224")
    variant: str = Field(description="served variant: fp32, fp16, int8 ...")
    precision: str = Field(description="numeric precision of the served file")
    sha256: str = Field(description="sha256 of the served model file, verified at start-up")
    trained_labels: list[str] = Field(description="labels the model had training signal for")
    untrained_labels: list[str] = Field(description="labels without training signal: never positive")
    not_validated_labels: list[str] = Field(
        description="trained labels that failed the validity gate (lower bound of the 95 % CI of "
        "their validation AUROC not above the gate's floor, or not estimable): probability "
        "reported, never positive; see GET /model validity_gate",
    )
    backend: str = Field(description="the inference backend, e.g. onnxruntime (CPUExecutionProvider)")
    intended_use: str = Field(description="intended use; not for clinical use unless validated")


class InputInfo(BaseModel):
    format: str = Field(description="dicom, png or jpeg (detected from the bytes)")
    width: int
    height: int
    photometric: str = Field(description="MONOCHROME1, MONOCHROME2, RGB or PALETTE COLOR")
    bits_stored: int
    modality: str | None = Field(default=None, description="DICOM Modality (CR, DX ...)")
    view_position: str | None = Field(default=None, description="DICOM ViewPosition (PA, AP ...)")
    transfer_syntax_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    warnings: list[str] = Field(default_factory=list, description="what the decoder changed or assumed")
    decode_reduction: int = Field(
        default=1,
        description="1: decoded at full size; k > 1: the codec decoded at 1/k of each side (JPEG 2000 "
        "resolution levels, JPEG DCT scaling), still at least twice the model's resize",
    )


class OodInfo(BaseModel):
    status: str = Field(
        description="passed (score at or under the threshold); flagged (not taken for a chest "
        "radiograph, served because CXR_MSN_OOD=warn); no_guard (the repository has no "
        "out-of-distribution score; only the DICOM header is checked); not_scored"
    )
    score: float | None = Field(
        default=None,
        description="Mahalanobis distance of the image's CLS embedding from the training images' "
        "Gaussian (in the ONNX graph); over threshold: not a chest radiograph",
    )
    threshold: float | None = Field(default=None, description="the model's operating threshold (docs/ood.md)")
    score_kind: str | None = None
    mode: str = Field(description="CXR_MSN_OOD: refuse (422 not_a_chest_radiograph) or warn")
    reasons: list[str] = Field(default_factory=list, description="why it was flagged (empty: it was not)")


class PredictResponse(BaseModel):
    labels: list[str] = Field(description="the 14 CheXpert labels, in model order")
    probabilities: dict[str, float] = Field(description="label -> sigmoid probability")
    attention: AttentionMap
    positive: list[str] = Field(
        description="trained, validated labels at or over their saved threshold "
        "(never an untrained or not validated label), after the consistency rule: No Finding is "
        "positive only when no finding (any label but No Finding and Support Devices) is"
    )
    overruled: dict[str, str] = Field(
        default_factory=dict,
        description="label -> why it is not positive although over its threshold (No Finding "
        "when a finding is positive); the reason is also in warnings",
    )
    model: ModelInfo
    input: InputInfo = Field(description="facts about the upload; never patient identifiers")
    ood: OodInfo | None = Field(
        default=None, description="the out-of-distribution guard's score and threshold for this image"
    )
    warnings: list[str] = Field(description="decoder and model warnings for this result")
    overlay_png_base64: str | None = Field(
        default=None,
        description="with overlay=true: the attention heatmap over the image, PNG, base64",
    )
    image_png_base64: str | None = Field(
        default=None,
        description=(
            "with image=true: the region the model saw (resize and centre crop) as a grey PNG "
            "at 448 x 448, base64; the attention grid maps onto it"
        ),
    )


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable code, e.g. unsupported_format")
    detail: str = Field(description="human-readable message")


class BatchItem(BaseModel):
    index: int = Field(description="position of the file in the request (0-based)")
    status: int = Field(description="HTTP status this file alone would have had")
    result: PredictResponse | None = None
    error: ErrorResponse | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem] = Field(description="one entry per uploaded file, in order")


class ValidityGateInfo(BaseModel):
    status: str = Field(
        description="evaluated; not_evaluated (no per-label validation CIs at export: every trained "
        "label is not validated); absent (a repository exported before the gate: none is)"
    )
    min_auroc_lower_bound: float | None = Field(
        default=None, description="a label is validated when its AUROC CI's lower bound is above this"
    )
    split: str | None = Field(default=None, description="the split the AUROC was measured on")
    ci_level: float | None = Field(default=None, description="the bootstrap CI's level, e.g. 0.95")
    images: int | None = Field(default=None, description="images in that split")
    auroc_lower_bounds: dict[str, float | None] = Field(
        default_factory=dict, description="trained label -> lower CI bound of its AUROC (null: none)"
    )
    not_validated_labels: list[str] = Field(default_factory=list)
    reasons: dict[str, str] = Field(default_factory=dict, description="not validated label -> why")
    reason: str | None = Field(default=None, description="why the gate was not evaluated")
    source: dict[str, Any] = Field(default_factory=dict, description="where the validation metrics came from")
    criterion: str | None = None


class ModelCard(BaseModel):
    model_config = {"protected_namespaces": ()}

    name: str
    version: str
    architecture: str
    variant: str
    precision: str
    sha256: str
    labels: list[str]
    trained_labels: list[str]
    untrained_labels: list[str]
    not_validated_labels: list[str] = Field(description="trained labels that failed the validity gate")
    validity_gate: ValidityGateInfo = Field(description="the per-label validity gate written at export")
    thresholds: dict[str, float] = Field(description="operating threshold per label (chosen on validation)")
    calibration: dict[str, Any] = Field(
        default_factory=dict,
        description="per-label temperature scaling folded into the model (method, temperatures, the "
        "split they were fitted on); probabilities and thresholds are on the calibrated scale; "
        "empty: a model exported without calibration",
    )
    ood_guard: dict[str, Any] | None = Field(
        default=None,
        description="the out-of-distribution guard written at export (score, threshold, how it was "
        "chosen, fitted sample sizes, covered modalities and views); null: none",
    )
    ood_mode: str | None = Field(default=None, description="CXR_MSN_OOD: refuse or warn")
    preprocessing: dict[str, Any]
    training_data: dict[str, Any]
    metrics: dict[str, Any]
    source_checkpoint: dict[str, Any]
    variants: list[str]
    backend: str
    intended_use: str
