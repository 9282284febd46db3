"""DICOM output for PACS: a TID 1500 Structured Report of the findings and a Secondary Capture
of the attention overlay, both filed in the source image's study (highdicom; no torch).

Patient and study attributes reach the outputs only through highdicom's copy of the source's
Patient and Study modules (so a PACS files them with the study they came from); nothing else
identifying is added and nothing here logs element values.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom._standard_utils import get_sop_class_iod_map
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrmsn.errors import DecodeError, DicomOutputError
from cxrmsn.imaging.detect import detect_format
from cxrmsn.imaging.types import DecodedImage
from cxrmsn.labels import check_labels

# highdicom's modules log element values (UIDs, attributes copied): silence them all through
# their parent's level (a filter on the parent would not apply to the children's records).
logging.getLogger("highdicom").setLevel(logging.CRITICAL + 1)

MANUFACTURER = "cxr-msn"
PRIVATE_SCHEME = "99CXRMSN"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = "cxr-msn AI findings (research use only)"
SC_SERIES_DESCRIPTION = "cxr-msn attention heatmap (research use only)"
NOT_CLINICAL = "Research use only: not for clinical use unless validated locally."
REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")

#: Label -> finding code. Standard codes only where pydicom's dictionary has one that fits
#: (checked by the tests); the rest are private codes of the ``99CXRMSN`` scheme.
LABEL_CODES: dict[str, Code] = {
    "Atelectasis": Code("ATELECTASIS", PRIVATE_SCHEME, "Atelectasis"),
    "Cardiomegaly": codes.SCT.Cardiomegaly,
    "Consolidation": Code("CONSOLIDATION", PRIVATE_SCHEME, "Consolidation"),
    "Edema": codes.SCT.PulmonaryEdema,
    "Enlarged Cardiomediastinum": Code("ENL_CARDIOMED", PRIVATE_SCHEME, "Enlarged Cardiomediastinum"),
    "Fracture": Code("FRACTURE", PRIVATE_SCHEME, "Fracture"),
    "Lung Lesion": Code("LUNG_LESION", PRIVATE_SCHEME, "Lung Lesion"),
    "Lung Opacity": codes.DCM.Opacity,  # a chest CAD finding type (CID 6102)
    "Pleural Effusion": codes.SCT.PleuralEffusion,
    "Pneumonia": Code("PNEUMONIA", PRIVATE_SCHEME, "Pneumonia"),
    "Pneumothorax": codes.SCT.Pneumothorax,
    "Pleural Other": Code("PLEURAL_OTHER", PRIVATE_SCHEME, "Pleural Other"),
    "Support Devices": Code("SUPPORT_DEVICES", PRIVATE_SCHEME, "Support Devices"),
    "No Finding": Code("NO_FINDING", PRIVATE_SCHEME, "No Finding"),
}
PROBABILITY = codes.DCM.Probability
PRESENCE = codes.DCM.PresenceOfProperty
NOTE = codes.DCM.Comment
UNTRAINED_NOTE = "The model had no training signal for this label: never reported as present."
NO_THRESHOLD_NOTE = "No decision threshold for this label: presence not evaluated."
OVERRULED_NOTE = "Over its threshold but reported as not present: {reason}."
NOT_VALIDATED_NOTE = (
    "Not validated: this label's validation AUROC was not shown to be above the model's validity "
    "gate (lower bound of its 95 % CI): never reported as present."
)


# Their warnings can quote element values (patient data). Filtered process-wide as well as
# below: catch_warnings is global state, so a concurrent decode restoring its own filters
# could otherwise re-enable them in the middle of a build.
warnings.filterwarnings("ignore", module=r"(highdicom|pydicom)(\.|$)")
_BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def _guarded(what: str) -> Iterator[None]:
    """One build at a time, warnings silenced, and any pydicom/highdicom failure on an odd
    header turned into a 422 that names only the exception type (messages quote values)."""
    with _BUILD_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        except DecodeError:
            raise
        except Exception as exc:
            detail = (
                f"DICOM output: the {what} cannot be built from this file's header ({type(exc).__name__})"
            )
            raise DicomOutputError(detail) from None


@_guarded("source header")
def source_header(decoded: DecodedImage) -> Dataset:
    """The uploaded DICOM's header as the decoder parsed it (``decode(..., keep_header=True)``),
    so a request parses its upload once; ``DicomOutputError`` unless the upload is a DICOM that
    holds every UID referenced."""
    if decoded.info.format != "dicom" or decoded.header is None:
        raise DicomOutputError("DICOM output needs a DICOM upload; this file is not DICOM")
    return _referencable(decoded.header)


def read_source(data: bytes) -> Dataset:
    """The header of DICOM bytes without decoding the image (for callers holding only the
    bytes); ``DicomOutputError`` unless it is a DICOM that holds every UID referenced."""
    try:
        is_dicom = detect_format(data) == "dicom"
    except DecodeError:
        is_dicom = False
    if not is_dicom:
        raise DicomOutputError("DICOM output needs a DICOM upload; this file is not DICOM")
    try:
        source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        for _ in source.iterall():  # parse every element now: truncation fails here
            pass
    except Exception as exc:  # pydicom raises many types for malformed bytes
        raise DicomOutputError(f"DICOM output: the header is unreadable ({type(exc).__name__})") from None
    return _referencable(source)


def _referencable(source: Dataset) -> Dataset:
    _check_references(source)
    _blank_invalid_values(source)
    return source


# Type 2 attributes highdicom parses when it copies the patient and study modules.
_DATES = ("PatientBirthDate", "StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate")
_TIMES = ("PatientBirthTime", "StudyTime", "SeriesTime", "ContentTime", "AcquisitionTime")
_SEXES = ("M", "F", "O")


def _blank_invalid_values(source: Dataset) -> None:
    """Empty the values highdicom would refuse (a sex of "U", a date of "2020-01-01" ...).

    They are common in real and anonymised files; the outputs keep the attribute, empty, as
    Type 2 allows, instead of failing the request.
    """
    if str(source.get("PatientSex", "") or "") not in ("", *_SEXES):
        source.PatientSex = ""
    for keywords, parse in ((_DATES, pydicom.valuerep.DA), (_TIMES, pydicom.valuerep.TM)):
        for keyword in keywords:
            value = str(source.get(keyword, "") or "")
            try:
                if value:
                    parse(value)
            except ValueError:
                setattr(source, keyword, "")
    charsets = source.get("SpecificCharacterSet")
    if isinstance(charsets, pydicom.multival.MultiValue) and charsets and not charsets[0]:
        # An empty first value means the default repertoire, which highdicom wants named.
        source.SpecificCharacterSet = ["ISO 2022 IR 6", *charsets[1:]]


def _check_references(source: Dataset) -> None:
    missing = [keyword for keyword in REFERENCED_UIDS if not str(source.get(keyword, "") or "").strip()]
    if missing:
        raise DicomOutputError(
            f"DICOM output references the source by {', '.join(REFERENCED_UIDS)}; "
            f"the upload lacks {', '.join(missing)}"
        )
    # The table highdicom copies the patient and study modules by.
    if source.SOPClassUID not in get_sop_class_iod_map():
        raise DicomOutputError("DICOM output: the SOPClassUID is not a DICOM storage class")


@_guarded("Structured Report")
def structured_report(
    source: Dataset,
    result: dict[str, Any],
    thresholds: dict[str, float],
    *,
    series_number: int = SR_SERIES_NUMBER,
    instance_number: int = 1,
) -> hd.sr.EnhancedSR:
    """An Enhanced SR (TID 1500) with one measurement group per label, in the source's study.

    Presence (Yes/No) is the predictor's decision, ``result["positive"]`` (the consistency rule
    of ``serving.predictor.consistent_findings`` applied), never recomputed from ``thresholds``,
    which only name each label's operating point. Enhanced SR rather than Comprehensive 3D SR:
    there are no 3-D coordinates and more PACS accept it.
    """
    check_labels(result["labels"], source="the prediction result")
    model = result["model"]
    groups = [_measurement_group(label, result, thresholds, source) for label in result["labels"]]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_device_observer(model)),
        procedure_reported=codes.cid100.XRUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_note(_intended_use(model)))
    return hd.sr.EnhancedSR(
        evidence=[_evidence(source)],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=model["architecture"],
        software_versions=model["version"],
        coding_schemes=[_private_scheme()],
    )


def _measurement_group(
    label: str, result: dict[str, Any], thresholds: dict[str, float], source: Dataset
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    probability = float(result["probabilities"][label])
    threshold = thresholds.get(label)
    note = _no_presence_note(label, result["model"], threshold)
    evaluations = []
    if note is None and threshold is not None:
        present = codes.SCT.Yes if label in result["positive"] else codes.SCT.No
        evaluations.append(hd.sr.QualitativeEvaluation(PRESENCE, present))
        overruled = result.get("overruled", {}).get(label)
        if overruled is not None:
            note = OVERRULED_NOTE.format(reason=overruled.rstrip("."))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label),
        finding_type=LABEL_CODES[label],
        algorithm_id=_algorithm(result["model"], threshold),
        measurements=[hd.sr.Measurement(PROBABILITY, probability, codes.UCUM.NoUnits)],
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
    )
    if note is not None:
        group[0].ContentSequence.append(_note(note))
    return group


def _no_presence_note(label: str, model: dict[str, Any], threshold: float | None) -> str | None:
    """Why the SR gives ``label`` a comment instead of a Yes/No presence, or None when it does not."""
    if label in model["untrained_labels"]:
        return UNTRAINED_NOTE
    if label in model["not_validated_labels"]:
        return NOT_VALIDATED_NOTE
    return NO_THRESHOLD_NOTE if threshold is None else None


def _algorithm(model: dict[str, Any], threshold: float | None) -> hd.sr.AlgorithmIdentification:
    parameters = [f"architecture={model['architecture']}", f"precision={model['precision']}"]
    if threshold is not None:
        parameters.append(f"threshold={threshold}")
    return hd.sr.AlgorithmIdentification(
        name=model["name"],
        version=_version(model),
        parameters=parameters,
        family=codes.DCM.ArtificialIntelligence,
        manufacturer=MANUFACTURER,
    )


def _version(model: dict[str, Any]) -> str:
    return f"{model['version']} ({model['variant']}, sha256 {model['sha256'][:12]})"


def _device_observer(model: dict[str, Any]) -> hd.sr.ObserverContext:
    attributes = hd.sr.DeviceObserverIdentifyingAttributes(
        # The same model file always gets the same device UID.
        uid=generate_uid(prefix=None, entropy_srcs=[model["sha256"]]),
        name=f"{model['name']} {_version(model)}",
        manufacturer_name=MANUFACTURER,
        model_name=model["architecture"],
    )
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=attributes
    )


def _note(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=NOTE, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _intended_use(model: dict[str, Any]) -> str:
    stated = str(model.get("intended_use") or "").strip()
    return f"Intended use: {stated} {NOT_CLINICAL}" if stated else NOT_CLINICAL


def _private_scheme() -> CodingSchemeIdentificationItem:
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="cxr-msn CheXpert label codes",
        responsible_organization=MANUFACTURER,
    )


def _evidence(source: Dataset) -> Dataset:
    """The source header as highdicom's SR constructor needs it."""
    evidence = copy.deepcopy(source)
    # highdicom reads these Type 2 attributes unconditionally; absent means empty.
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
    ):
        if keyword not in evidence:
            setattr(evidence, keyword, None)
    # Without Manufacturer highdicom records no acquisition equipment (institution, station).
    if "Manufacturer" in evidence:
        del evidence.Manufacturer
    return evidence


@_guarded("Secondary Capture")
def overlay_capture(
    source: Dataset,
    overlay_rgb: np.ndarray,
    result: dict[str, Any],
    *,
    series_number: int = SC_SERIES_NUMBER,
    instance_number: int = 1,
) -> hd.sc.SCImage:
    """The attention overlay (uint8 [H, W, 3]) as an RGB Secondary Capture in the source's study."""
    model = result["model"]
    orientation = _patient_orientation(source)
    # Only the study UID: given the source, highdicom would also record its acquisition
    # equipment (institution, station); the patient and study modules are copied below.
    study = Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=study,
        pixel_array=overlay_rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SC_SERIES_DESCRIPTION,
        manufacturer_model_name=model["architecture"],
        software_versions=model["version"],
        specific_character_set=source.get("SpecificCharacterSet"),
    )
    capture.copy_patient_and_study_information(source)
    if orientation is None:
        capture.PatientOrientation = []  # unknown: Type 2, left empty rather than guessed
    _describe_capture(capture, source, model, overlay_rgb.shape, result["attention"]["shape"])
    return capture


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's orientation, which the resize and centre crop keep."""
    values = list(source.get("PatientOrientation") or [])
    if len(values) != 2:
        return None
    try:
        return (
            hd.PatientOrientationValuesBiped(values[0]).value,
            hd.PatientOrientationValuesBiped(values[1]).value,
        )
    except ValueError:
        return None


def _describe_capture(
    capture: Dataset, source: Dataset, model: dict[str, Any], shape: tuple[int, ...], grid: list[int]
) -> None:
    rows, columns = grid
    description = (
        f"Attention heatmap of {model['name']} {_version(model)} on the model's {rows} x {columns} "
        f"patch grid, blended over the region the model saw: the source image after its resize and "
        f"centre crop (the borders outside the crop are not shown), the model's input pixels shown "
        f"at {shape[1]} x {shape[0]}."
    )
    capture.DerivationDescription = f"{description} {NOT_CLINICAL}"
    capture.ImageComments = f"{description} {_intended_use(model)}"
    capture.BurnedInAnnotation = "NO"
    capture.ConversionType = "WSD"  # workstation: derived by software, not digitised
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [reference]


def to_bytes(dataset: Dataset) -> bytes:
    """DICOM Part 10 file bytes (preamble, file meta, explicit VR little endian)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
