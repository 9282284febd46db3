"""The model repository manifest: what export writes and what serving trusts.

``model_repository/manifest.json`` lists every model file with its sha256, the labels,
the preprocessing, the thresholds, the per-label validity gate and where the weights came
from. Serving loads a model only through ``verified_model_path``, which refuses a file whose
hash does not match. Each model also records how far its probabilities were from the fp32
model's at export (``Fp32Agreement``), and ``regression.json`` (``RegressionRecord``) holds
fixed inputs with the fp32 model's probabilities for them: serving's start-up self-check runs
them through the variant it loads and refuses it beyond its tolerance. numpy-free and
torch-free: serving imports it.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxrmsn.fileio import atomic_write_text, sha256_file
from cxrmsn.labels import check_labels
from cxrmsn.preprocess import PreprocessConfig

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "cxr-msn-model-repository"
FORMAT_VERSION = 1


GATE_EVALUATED = "evaluated"
GATE_NOT_EVALUATED = "not_evaluated"

#: How far an fp32-precision model may be from the stored fp32 probabilities: the same arithmetic,
#: only summed in another order on another CPU (measured: about 1e-7).
FP32_TOLERANCE = 1e-5
#: A derived variant (int8, fp16) may differ from fp32 by this many times the largest difference
#: measured at export (the headroom covers inputs other than the export's check images) ...
TOLERANCE_FACTOR = 2.0
#: ... and, for a manifest that recorded no difference at all, by this much.
DEFAULT_DERIVED_TOLERANCE = 0.02
REGRESSION_FILE = "regression.json"
REGRESSION_INPUTS_FILE = "regression_inputs.npy"
REGRESSION_FORMAT_VERSION = 2
#: The /proc/cpuinfo flags that decide which int8 kernels ONNX Runtime runs on x86-64.
INT8_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")


class RepositoryError(ValueError):
    """A model repository that is missing, malformed or fails its integrity check."""


@dataclass
class ValidityGate:
    """Which trained labels were shown, on validation, to rank better than a floor (export writes it).

    A trained label is *validated* when the lower bound of the bootstrap CI of its AUROC on the
    ``split`` (95 % or wider) is above ``min_auroc_lower_bound``; every other trained label is in
    ``not_validated_labels``: its probability is served, it is never positive. ``not_evaluated``:
    the export had no per-label validation CIs, so every trained label is not validated.
    """

    status: str  # GATE_EVALUATED or GATE_NOT_EVALUATED
    min_auroc_lower_bound: float
    not_validated_labels: list[str]
    auroc_lower_bounds: dict[str, float | None] = field(default_factory=dict)  # trained label -> bound
    reasons: dict[str, str] = field(default_factory=dict)  # not validated label -> why
    split: str = "valid"
    ci_level: float | None = None
    images: int | None = None
    source: dict[str, Any] = field(default_factory=dict)  # where the validation metrics came from
    reason: str | None = None  # why the gate could not be evaluated (status not_evaluated)
    criterion: str = (
        "a trained label is validated when the lower bound of the bootstrap CI (95 % or wider) of its "
        "AUROC on the validation split is above min_auroc_lower_bound; a label that is not validated "
        "keeps its probability but is never positive"
    )

    def __post_init__(self) -> None:
        if self.status not in (GATE_EVALUATED, GATE_NOT_EVALUATED):
            raise RepositoryError(f"validity gate status must be {GATE_EVALUATED} or {GATE_NOT_EVALUATED}")
        if not 0.0 <= self.min_auroc_lower_bound < 1.0:
            raise RepositoryError(
                f"validity gate min_auroc_lower_bound must be in [0, 1), got {self.min_auroc_lower_bound}"
            )


def agreement_tolerance(max_abs_difference: float) -> float:
    """The self-check tolerance of a variant measured ``max_abs_difference`` from fp32 at export."""
    return max(TOLERANCE_FACTOR * max_abs_difference, FP32_TOLERANCE)


@dataclass
class Fp32Agreement:
    """A model's probabilities against the fp32 model's on the export's check images.

    ``tolerance`` (``agreement_tolerance`` of the maximum) is what serving's self-check holds
    the model to on ``regression.json``'s inputs; ``cpu`` is the exporting machine.
    """

    max_abs_difference: float
    mean_abs_difference: float
    tolerance: float
    compared_on: str  # e.g. "valid.csv (149 images)"
    cpu: dict[str, Any] = field(default_factory=dict)  # cpu_features() of the exporting machine
    output: str = "probabilities"

    def __post_init__(self) -> None:
        values = (self.max_abs_difference, self.mean_abs_difference, self.tolerance)
        if not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in values):
            raise RepositoryError(f"fp32_agreement needs finite differences >= 0, got {values}")
        if self.tolerance <= 0:
            raise RepositoryError(f"fp32_agreement tolerance must be > 0, got {self.tolerance}")


@dataclass(frozen=True)
class Tolerance:
    """How far a variant may be from the fp32 probabilities, and where that number came from."""

    value: float
    source: str


@dataclass
class ModelFile:
    """One servable model file, relative to the repository root."""

    path: str  # e.g. "cxr_msn/1/model.onnx"
    sha256: str
    bytes: int
    precision: str  # "fp32", "fp16", "int8"
    triton_model: str  # the Triton model folder that holds it, e.g. "cxr_msn"
    notes: dict[str, Any] = field(default_factory=dict)  # accuracy deltas, optimisation ...
    # None: exported before the agreement was recorded (variant_tolerance derives one).
    fp32_agreement: Fp32Agreement | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fp32_agreement, dict):
            self.fp32_agreement = Fp32Agreement(**self.fp32_agreement)


def variant_tolerance(entry: ModelFile) -> Tolerance:
    """The self-check tolerance of one model: recorded at export, else derived from what was."""
    agreement = entry.fp32_agreement
    if agreement is not None:
        return Tolerance(
            agreement.tolerance,
            f"recorded at export (max difference from fp32 {agreement.max_abs_difference:.3g} on "
            f"{agreement.compared_on}; tolerance {TOLERANCE_FACTOR:g} x that, at least {FP32_TOLERANCE:g})",
        )
    if entry.precision == "fp32":
        return Tolerance(FP32_TOLERANCE, "fp32 arithmetic")
    recorded = entry.notes.get("max_abs_diff_vs_fp32")
    measured = recorded.get("probabilities") if isinstance(recorded, dict) else None
    if isinstance(measured, int | float) and math.isfinite(measured):
        return Tolerance(
            agreement_tolerance(measured),
            f"derived: {TOLERANCE_FACTOR:g} x the max difference from fp32 in its export notes, "
            f"{measured:.3g} (the manifest predates fp32_agreement)",
        )
    return Tolerance(DEFAULT_DERIVED_TOLERANCE, "default: the manifest records no difference from fp32")


@dataclass
class OodGuard:
    """The out-of-distribution guard export built into the graph (``cxrmsn.ood``).

    ``output`` names the graph output that carries the score; an image whose score is above
    ``threshold``, or whose DICOM Modality or ViewPosition is outside ``modalities`` /
    ``view_positions``, is not served as a chest radiograph.
    """

    output: str
    score: str  # cxrmsn.ood.SCORE_KIND
    threshold: float
    threshold_rule: str
    fitted_on: dict[str, Any]  # source, images, embedding_dim, shrinkage
    threshold_on: dict[str, Any]  # held-out set -> summary (images, median, p99, max)
    modalities: list[str] = field(default_factory=list)
    view_positions: list[str] = field(default_factory=list)  # empty: the training views are unknown
    about: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, int | float) and math.isfinite(self.threshold)):
            raise RepositoryError(f"ood_guard threshold must be a finite number, got {self.threshold!r}")
        if not self.output:
            raise RepositoryError("ood_guard needs the name of its graph output")


@dataclass
class RepositoryManifest:
    name: str
    version: str
    architecture: str
    labels: list[str]
    preprocessing: dict[str, Any]
    models: dict[str, ModelFile]  # variant name ("fp32", "int8", ...) -> file
    default_variant: str = "fp32"
    trained_labels: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    intended_use: str = ""
    source_checkpoint: dict[str, Any] = field(default_factory=dict)  # path, sha256
    io: dict[str, Any] = field(default_factory=dict)  # input/output names, dtypes, shapes
    files: dict[str, str] = field(default_factory=dict)  # every other file -> sha256
    # None: a repository exported before the gate existed (no label is marked not validated).
    validity_gate: ValidityGate | None = None
    # Per-label temperature scaling folded into the exported head (empty: none recorded):
    # method, temperatures, fitted_on, folded_by ("linear-eval" or "export").
    calibration: dict[str, Any] = field(default_factory=dict)
    # None: exported without a guard (older repositories, or no --ood-fit-manifest): nothing is
    # refused as out of distribution.
    ood_guard: OodGuard | None = None
    created: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_labels(self.labels, source="model repository manifest")
        PreprocessConfig.from_dict(self.preprocessing)
        self.models = {
            name: entry if isinstance(entry, ModelFile) else ModelFile(**entry)
            for name, entry in self.models.items()
        }
        if self.default_variant not in self.models:
            raise RepositoryError(
                f"default variant {self.default_variant!r} is not among {sorted(self.models)}"
            )
        if isinstance(self.validity_gate, dict):
            self.validity_gate = ValidityGate(**self.validity_gate)
        if isinstance(self.ood_guard, dict):
            self.ood_guard = OodGuard(**self.ood_guard)
        if self.ood_guard is not None:
            outputs = [entry.get("name") for entry in self.io.get("outputs", [])]
            if outputs and self.ood_guard.output not in outputs:
                raise RepositoryError(
                    f"ood_guard reads the output {self.ood_guard.output!r}, the graph has {outputs}"
                )
        if self.validity_gate is not None:
            outside = set(self.validity_gate.not_validated_labels) - set(self.trained_labels)
            if outside:
                raise RepositoryError(f"validity gate lists labels that are not trained: {sorted(outside)}")

    @property
    def not_validated_labels(self) -> list[str]:
        """Trained labels the validity gate did not pass, in label order (none without a gate)."""
        failed = set(self.validity_gate.not_validated_labels) if self.validity_gate else set()
        return [label for label in self.labels if label in failed]

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocessing)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


@dataclass
class RegressionRecord:
    """``regression.json``: fixed inputs, the fp32 model's probabilities for them, and tolerances.

    Format version 2 stores the model inputs (float32 ``[N, 3, S, S]``, in ``reference``
    order) in ``inputs_file`` and pins only the fp32 probabilities; every variant, fp32
    included, is compared with those within ``tolerances[variant]``. Version 1 (written
    before the self-check) pinned each variant's own probabilities and stored no inputs: it
    is read as its fp32 values, with each other variant's tolerance from the manifest, and
    cannot drive the self-check (``inputs_file`` None).
    """

    reference: dict[str, dict[str, float]]  # input name -> label -> fp32 probability
    tolerances: dict[str, float]  # variant -> largest allowed |probability - reference|
    inputs_file: str | None = REGRESSION_INPUTS_FILE
    observed: dict[str, float] = field(default_factory=dict)  # variant -> max difference when written
    tolerance_sources: dict[str, str] = field(default_factory=dict)
    about: str = ""
    format_version: int = REGRESSION_FORMAT_VERSION

    @property
    def names(self) -> list[str]:
        return list(self.reference)

    def tolerance(self, variant: str, manifest: RepositoryManifest) -> Tolerance:
        """``variant``'s tolerance: as written here, else (a variant added later) the manifest's."""
        if variant in self.tolerances:
            return Tolerance(self.tolerances[variant], self.tolerance_sources.get(variant, REGRESSION_FILE))
        if variant not in manifest.models:
            raise RepositoryError(
                f"variant {variant!r} is not in the manifest; it has {sorted(manifest.models)}"
            )
        return variant_tolerance(manifest.models[variant])

    def to_json(self) -> str:
        document = {
            "about": self.about,
            "format_version": REGRESSION_FORMAT_VERSION,
            "inputs": {"file": self.inputs_file, "names": self.names, "dtype": "float32"},
            "reference": {"variant": "fp32", "probabilities": self.reference},
            "variants": {
                variant: {
                    "compared_with": "fp32",
                    "tolerance": tolerance,
                    "tolerance_from": self.tolerance_sources.get(variant, ""),
                    "max_abs_difference_when_written": self.observed.get(variant),
                }
                for variant, tolerance in sorted(self.tolerances.items())
            },
        }
        return json.dumps(document, indent=2) + "\n"


def read_regression_record(
    repository: str | os.PathLike[str], manifest: RepositoryManifest
) -> RegressionRecord | None:
    """``regression.json`` of ``repository`` (checked against the manifest), or None if there is none."""
    if not (Path(repository) / REGRESSION_FILE).is_file():
        return None
    path = verified_file(repository, manifest, REGRESSION_FILE)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        version = values.get("format_version", 1)
        if version not in (1, REGRESSION_FORMAT_VERSION):
            raise ValueError(
                f"format version {version}; this cxr-msn reads 1 and {REGRESSION_FORMAT_VERSION}"
            )
        record = _regression_v2(values) if version == 2 else _regression_v1(values, manifest)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise RepositoryError(f"{path} is invalid: {type(exc).__name__}: {exc}") from None
    for name, probabilities in record.reference.items():
        if list(probabilities) != manifest.labels:
            raise RepositoryError(f"{path}: the probabilities of {name!r} are not by the manifest's labels")
    return record


def _regression_v2(values: dict[str, Any]) -> RegressionRecord:
    reference = values["reference"]
    if reference["variant"] != "fp32":
        raise ValueError(f"the reference must be fp32, not {reference['variant']!r}")
    probabilities = {
        str(name): {str(label): float(p) for label, p in by_label.items()}
        for name, by_label in reference["probabilities"].items()
    }
    if list(values["inputs"]["names"]) != list(probabilities):
        raise ValueError("inputs.names and the reference probabilities name different inputs")
    variants = values["variants"]
    return RegressionRecord(
        reference=probabilities,
        tolerances={name: float(entry["tolerance"]) for name, entry in variants.items()},
        inputs_file=str(values["inputs"]["file"]),
        observed={
            name: float(entry["max_abs_difference_when_written"])
            for name, entry in variants.items()
            if entry.get("max_abs_difference_when_written") is not None
        },
        tolerance_sources={name: str(entry.get("tolerance_from", "")) for name, entry in variants.items()},
        about=str(values.get("about", "")),
    )


def _regression_v1(values: dict[str, Any], manifest: RepositoryManifest) -> RegressionRecord:
    variants = values["variants"]
    reference = {
        str(name): {str(label): float(p) for label, p in by_label.items()}
        for name, by_label in variants["fp32"].items()
    }
    tolerances = {"fp32": float(values["tolerance"])}
    sources = {"fp32": f"{REGRESSION_FILE} (format 1)"}
    for variant in variants:
        if variant != "fp32" and variant in manifest.models:
            derived = variant_tolerance(manifest.models[variant])
            tolerances[variant], sources[variant] = derived.value, derived.source
    return RegressionRecord(
        reference=reference,
        tolerances=tolerances,
        inputs_file=None,
        tolerance_sources=sources,
        about=str(values.get("about", "")),
        format_version=1,
    )


def write_manifest(repository: str | os.PathLike[str], manifest: RepositoryManifest) -> Path:
    path = Path(repository) / MANIFEST_NAME
    atomic_write_text(path, manifest.to_json())
    return path


def read_manifest(repository: str | os.PathLike[str]) -> RepositoryManifest:
    path = Path(repository) / MANIFEST_NAME
    if not path.is_file():
        raise RepositoryError(f"no {MANIFEST_NAME} in {repository}: not a cxr-msn model repository")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT_NAME:
        raise RepositoryError(f"{path} is not a {FORMAT_NAME} manifest")
    if values.get("format_version") != FORMAT_VERSION:
        raise RepositoryError(
            f"{path} has format version {values.get('format_version')}; "
            f"this cxr-msn reads version {FORMAT_VERSION}"
        )
    try:
        return RepositoryManifest(**values)
    except (TypeError, ValueError) as exc:
        raise RepositoryError(f"{path} is invalid: {exc}") from None


def verified_model_path(
    repository: str | os.PathLike[str], manifest: RepositoryManifest, variant: str | None = None
) -> Path:
    """The path of a model file whose size and sha256 match the manifest, or RepositoryError."""
    name = variant or manifest.default_variant
    if name not in manifest.models:
        raise RepositoryError(f"variant {name!r} is not in the manifest; it has {sorted(manifest.models)}")
    entry = manifest.models[name]
    path = Path(repository) / entry.path
    if not path.is_file():
        raise RepositoryError(f"model file {entry.path} listed in the manifest is missing")
    if path.stat().st_size != entry.bytes:
        raise RepositoryError(
            f"model file {entry.path} has {path.stat().st_size:,} bytes, the manifest says "
            f"{entry.bytes:,}: truncated or replaced; refusing to load it"
        )
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise RepositoryError(
            f"model file {entry.path} has sha256 {actual[:12]}..., the manifest says "
            f"{entry.sha256[:12]}...: modified or corrupt; refusing to load it"
        )
    return path


def verified_file(repository: str | os.PathLike[str], manifest: RepositoryManifest, relative: str) -> Path:
    """The path of a non-model file whose sha256 matches ``manifest.files``, or RepositoryError."""
    expected = manifest.files.get(relative)
    if expected is None:
        raise RepositoryError(f"{relative} is not listed in {MANIFEST_NAME}: refusing to trust it")
    path = Path(repository) / relative
    if not path.is_file():
        raise RepositoryError(f"{relative} listed in the manifest is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise RepositoryError(
            f"{relative} has sha256 {actual[:12]}..., the manifest says {expected[:12]}...: "
            "modified or corrupt; refusing to use it"
        )
    return path


def cpu_features(
    cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo", names: Sequence[str] = INT8_CPU_FLAGS
) -> dict[str, Any]:
    """This CPU as ONNX Runtime's int8 kernels see it: model name, machine and the x86 flags
    ``names`` (by default INT8_CPU_FLAGS), each True or False.

    A flag is None where ``cpuinfo`` lists no x86 flags (another OS or architecture).
    """
    flags: set[str] | None = None
    model = ""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and flags is None:
            flags = set(value.split())
        elif key.strip() == "model name" and not model:
            model = value.strip()
    return {
        "model": model or platform.processor() or "unknown",
        "machine": platform.machine(),
        "flags": {name: (name in flags if flags is not None else None) for name in names},
    }


def describe_cpu(cpu: dict[str, Any]) -> str:
    """``cpu_features()`` in words, e.g. "AMD EPYC (x86_64): avx2 yes, avx512f no, ..."."""
    flags = cpu.get("flags") or {}
    where = f"{cpu.get('model', 'unknown')} ({cpu.get('machine', '?')})"
    if all(value is None for value in flags.values()):
        return f"{where}: int8 CPU flags unknown (no x86 flags in /proc/cpuinfo)"
    return f"{where}: " + ", ".join(f"{name} {'yes' if value else 'no'}" for name, value in flags.items())
