"""DICOM SR and Secondary Capture output, written to bytes and read back with pydicom and highdicom."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import EnhancedSRStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from cxrmsn.errors import DicomOutputError
from cxrmsn.labels import LABELS
from serving import dicom_output
from serving.dicom_output import LABEL_CODES, PRIVATE_SCHEME
from tests.helpers import chest_like_picture, dicom_bytes, make_dataset, make_dicom, to_png

UNTRAINED = ["Fracture", "Pleural Other"]
NOT_VALIDATED = ["Cardiomegaly"]  # trained, failed the validity gate
MARKER = "ZZMARKER"
SHA256 = "0123456789abcdef" * 4


def rg1_bytes() -> bytes:
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    return Path(path).read_bytes()


def marked_dataset() -> Dataset:
    """A generated DX whose patient name/ID and institution carry MARKER."""
    return make_dataset(
        chest_like_picture(64, 64),
        PatientName=f"{MARKER}^PATIENT",
        PatientID=f"{MARKER}ID",
        InstitutionName=f"{MARKER} HOSPITAL",
        StationName=f"{MARKER}ST",
        Manufacturer="Acme",
    )


def make_result(seed: int = 0) -> dict[str, Any]:
    """What ``Predictor.result`` returns, with probabilities on both sides of a 0.5 threshold."""
    probabilities = np.random.default_rng(seed).random(len(LABELS))
    by_label = {label: round(float(p), 6) for label, p in zip(LABELS, probabilities, strict=True)}
    by_label["Fracture"] = 0.99  # untrained, over its threshold: still never present
    by_label["Cardiomegaly"] = 0.97  # not validated, over its threshold: never present either
    thresholds = make_thresholds()
    return {
        "labels": list(LABELS),
        "probabilities": by_label,
        "positive": [
            label
            for label in LABELS
            if label in thresholds
            and label not in UNTRAINED + NOT_VALIDATED
            and by_label[label] >= thresholds[label]
        ],
        "attention": {"shape": [2, 2], "values": [[0.25, 0.25], [0.25, 0.25]]},
        "model": {
            "name": "cxr_msn",
            "version": "1.4.0",
            "architecture": "vit_small_msn",
            "variant": "fp32",
            "precision": "fp32",
            "sha256": SHA256,
            "trained_labels": [label for label in LABELS if label not in UNTRAINED],
            "untrained_labels": list(UNTRAINED),
            "not_validated_labels": list(NOT_VALIDATED),
            "backend": "onnxruntime CPUExecutionProvider",
            "intended_use": "Research and demonstration only: not for clinical use.",
        },
        "input": {"format": "dicom", "width": 64, "height": 64},
        "warnings": [],
    }


def make_thresholds() -> dict[str, float]:
    return {label: 0.5 for label in LABELS if label != "Lung Lesion"}  # one label without a threshold


@pytest.fixture(params=["rg1", "generated"])
def source_bytes(request: pytest.FixtureRequest) -> bytes:
    return rg1_bytes() if request.param == "rg1" else dicom_bytes(marked_dataset())


def text_values(items: Any) -> list[str]:
    values: list[str] = []
    for item in items:
        if "TextValue" in item:
            values.append(str(item.TextValue))
        values += text_values(item.get("ContentSequence", []))
    return values


def measurement_report(data: bytes) -> hd.sr.MeasurementReport:
    content = hd.sr.srread(data).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def build_sr(data: bytes, result: dict[str, Any]) -> tuple[Dataset, bytes]:
    source = dicom_output.read_source(data)
    return source, dicom_output.to_bytes(dicom_output.structured_report(source, result, make_thresholds()))


def test_sr_references_the_source_in_its_study(source_bytes: bytes) -> None:
    source, data = build_sr(source_bytes, make_result())
    sr = pydicom.dcmread(io.BytesIO(data))
    assert data[128:132] == b"DICM" and sr.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sr.SOPClassUID == EnhancedSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.SOPInstanceUID != source.SOPInstanceUID
    assert "research use only" in sr.SeriesDescription
    report = hd.sr.srread(data)
    assert report.get_evidence(current_procedure_only=True) == [
        (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, source.SOPClassUID)
    ]
    for group in measurement_report(data).get_image_measurement_groups():
        assert [image.referenced_sop_instance_uid for image in group.source_images] == [source.SOPInstanceUID]


def test_sr_has_one_group_per_label_with_its_probability_and_presence(source_bytes: bytes) -> None:
    result = make_result(seed=3)
    _, data = build_sr(source_bytes, result)
    report = measurement_report(data)
    assert len(report.get_image_measurement_groups()) == len(LABELS)
    present = []
    for label in LABELS:
        (group,) = report.get_image_measurement_groups(finding_type=LABEL_CODES[label])
        assert group.tracking_identifier == label
        (measurement,) = group.get_measurements(name=codes.DCM.Probability)
        assert measurement.value == result["probabilities"][label]
        assert measurement.unit == codes.UCUM.NoUnits
        evaluations = group.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)
        notes = " ".join(text_values(group))
        if label in UNTRAINED + NOT_VALIDATED or label == "Lung Lesion":
            assert evaluations == []
            expected = (
                "no training signal"
                if label in UNTRAINED
                else "Not validated"
                if label in NOT_VALIDATED
                else "No decision threshold"
            )
            assert expected in notes
        else:
            (evaluation,) = evaluations
            assert evaluation.value in (codes.SCT.Yes, codes.SCT.No)
            assert "Not validated" not in notes and "no training signal" not in notes
            if evaluation.value == codes.SCT.Yes:
                present.append(label)
    assert present == result["positive"] and present
    assert "Fracture" not in present and "Cardiomegaly" not in present


def test_sr_identifies_the_model_and_its_intended_use(source_bytes: bytes) -> None:
    _, data = build_sr(source_bytes, make_result())
    report = hd.sr.srread(data)
    (observer,) = measurement_report(data).get_observer_contexts(observer_type=codes.DCM.Device)
    attributes = observer.observer_identifying_attributes
    assert isinstance(attributes, hd.sr.DeviceObserverIdentifyingAttributes)
    assert attributes.name is not None and "cxr_msn 1.4.0" in attributes.name
    assert attributes.manufacturer_name == "cxr-msn" and attributes.model_name == "vit_small_msn"
    texts = text_values(report.ContentSequence)
    assert "1.4.0 (fp32, sha256 0123456789ab)" in texts  # algorithm version, in every group
    assert any("Research and demonstration only" in text and "not for clinical use" in text for text in texts)
    assert report.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME


def test_outputs_add_no_identifiers_beyond_the_copied_patient_module() -> None:
    source_bytes = dicom_bytes(marked_dataset())
    source, data = build_sr(source_bytes, make_result())
    sr = pydicom.dcmread(io.BytesIO(data))
    assert sr.PatientName == f"{MARKER}^PATIENT" and sr.PatientID == f"{MARKER}ID"
    assert not any(MARKER in text for text in text_values(sr.ContentSequence))
    assert data.count(MARKER.encode()) == 2  # patient name and ID; no institution or station
    capture = dicom_output.to_bytes(
        dicom_output.overlay_capture(source, np.zeros((448, 448, 3), np.uint8), make_result())
    )
    assert capture.count(MARKER.encode()) == 2


def test_secondary_capture_holds_the_overlay(source_bytes: bytes) -> None:
    source = dicom_output.read_source(source_bytes)
    overlay = np.random.default_rng(1).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    data = dicom_output.to_bytes(dicom_output.overlay_capture(source, overlay, make_result()))
    capture = pydicom.dcmread(io.BytesIO(data))
    assert capture.SOPClassUID == SecondaryCaptureImageStorage
    assert capture.PhotometricInterpretation == "RGB" and capture.BitsAllocated == 8
    assert capture.pixel_array.shape == (448, 448, 3)
    np.testing.assert_array_equal(capture.pixel_array, overlay)
    assert capture.StudyInstanceUID == source.StudyInstanceUID
    assert capture.SeriesInstanceUID != source.SeriesInstanceUID
    assert capture.SOPInstanceUID != source.SOPInstanceUID
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert capture.BurnedInAnnotation == "NO" and capture.ConversionType == "WSD"
    assert "research use only" in capture.SeriesDescription
    assert "Attention heatmap" in capture.DerivationDescription
    assert "centre crop" in capture.DerivationDescription
    assert list(capture.PatientOrientation) == list(source.get("PatientOrientation") or [])
    image = hd.imread(io.BytesIO(data))
    np.testing.assert_array_equal(image.get_frame(1), overlay)


def test_sr_and_capture_get_distinct_series() -> None:
    source = dicom_output.read_source(rg1_bytes())
    sr = dicom_output.structured_report(source, make_result(), make_thresholds())
    capture = dicom_output.overlay_capture(source, np.zeros((448, 448, 3), np.uint8), make_result())
    assert sr.SeriesInstanceUID != capture.SeriesInstanceUID
    assert sr.SeriesNumber != capture.SeriesNumber


def test_label_codes_are_standard_or_declared_private() -> None:
    assert list(LABEL_CODES) == list(LABELS)
    for label, code in LABEL_CODES.items():
        if code.scheme_designator == PRIVATE_SCHEME:
            assert code.meaning == label and len(code.value) <= 16
            continue
        scheme = getattr(codes, code.scheme_designator)
        assert any(getattr(scheme, keyword) == code for keyword in scheme.dir()), label
    standard = {label for label, code in LABEL_CODES.items() if code.scheme_designator != PRIVATE_SCHEME}
    assert standard == {"Cardiomegaly", "Edema", "Lung Opacity", "Pleural Effusion", "Pneumothorax"}


def test_read_source_accepts_a_bare_data_set_without_file_meta() -> None:
    ds = marked_dataset()
    buffer = io.BytesIO()
    del ds.file_meta
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    assert buffer.getvalue()[128:132] != b"DICM"
    source = dicom_output.read_source(buffer.getvalue())
    assert source.SOPInstanceUID == ds.SOPInstanceUID
    assert "PixelData" not in source


def without(keyword: str) -> bytes:
    ds = marked_dataset()
    delattr(ds, keyword)
    return dicom_bytes(ds)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (to_png(chest_like_picture(32, 32)), "not DICOM"),
        (b"", "not DICOM"),
        (bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8)), "not DICOM"),
        (without("SOPInstanceUID"), r"lacks SOPInstanceUID$"),
        (without("StudyInstanceUID"), r"lacks StudyInstanceUID$"),
        (without("SeriesInstanceUID"), r"lacks SeriesInstanceUID$"),
        (make_dicom(chest_like_picture(32, 32), SOPClassUID="1.2.3.4"), "not a DICOM storage class"),
    ],
    ids=["png", "empty", "garbage", "no-sop-instance", "no-study", "no-series", "unknown-sop-class"],
)
def test_read_source_rejects_what_cannot_be_referenced(data: bytes, expected: str) -> None:
    with pytest.raises(DicomOutputError, match=expected) as caught:
        dicom_output.read_source(data)
    assert caught.value.code == "dicom_output_unavailable" and caught.value.http_status == 422


def test_read_source_rejects_a_truncated_header() -> None:
    data = rg1_bytes()
    with pytest.raises(DicomOutputError, match=r"lacks StudyInstanceUID, SeriesInstanceUID$"):
        dicom_output.read_source(data[:1000])  # cut inside the header, before the study UID


def test_nothing_logged_or_warned_quotes_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    ds = marked_dataset()
    ds.PatientName = f"{MARKER} PATIENT"  # no caret: highdicom warns, quoting the name
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source, _ = build_sr(dicom_bytes(ds), make_result())
        dicom_output.overlay_capture(source, np.zeros((448, 448, 3), np.uint8), make_result())
    assert not [record for record in caplog.records if record.name.startswith("highdicom")]
    assert MARKER not in caplog.text
    assert not [warning for warning in caught if MARKER in str(warning.message)]


@pytest.mark.parametrize("in_pool", [False, True], ids=["in-process", "decode-worker"])
def test_dicom_output_parses_the_upload_once(in_pool: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import cxrmsn.imaging.dicom as dicom_decoder
    from cxrmsn.preprocess import PreprocessConfig
    from serving import decode_pool

    data = rg1_bytes()
    reads: list[int] = []
    real_dcmread = pydicom.dcmread

    def counted(*args: Any, **kwargs: Any) -> Dataset:
        reads.append(1)
        return real_dcmread(*args, **kwargs)

    if in_pool:  # a real worker process: it parses; the header comes back pickled
        pool = decode_pool.DecodePool(1, deadline_s=30, memory_mib=1024)
        try:
            pool.wait_ready()
            prepared, source = decode_pool.prepare(pool, data, PreprocessConfig(), read_source=True)
        finally:
            pool.close()
    else:
        monkeypatch.setattr(dicom_decoder.pydicom, "dcmread", counted)
        prepared, source = decode_pool.prepare(None, data, PreprocessConfig(), read_source=True)
        assert len(reads) == 1
    assert source == dicom_output.read_source(data)  # the same header a separate parse gives
    assert (
        "PixelData" not in source
        and source.file_meta.TransferSyntaxUID == real_dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID
    )
    assert prepared.decoded.header is None if in_pool else prepared.decoded.header is source
