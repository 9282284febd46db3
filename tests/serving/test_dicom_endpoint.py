"""POST /predict_dicom on the real server: DICOM in, Structured Report / Secondary Capture out."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from tests.helpers import chest_like_picture, dicom_bytes, make_dataset, to_png
from tests.serving.conftest import RunningServer

pytestmark = pytest.mark.slow
MARKER = "ZZPATIENT4412"


@pytest.fixture(scope="module")
def chest_cr() -> bytes:
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    return Path(path).read_bytes()


def post_dicom(client: httpx.Client, data: bytes, output: str = "sr") -> httpx.Response:
    return client.post("/predict_dicom", files={"file": ("upload.dcm", data)}, data={"output": output})


def probabilities_in(report: pydicom.Dataset) -> dict[str, float]:
    """Label -> probability, read back through highdicom's TID 1500 parser."""
    parsed = hd.sr.EnhancedSR.from_dataset(report)
    found = {}
    for group in parsed.content.get_image_measurement_groups():
        [measurement] = group.get_measurements()
        found[group.tracking_identifier] = measurement.value  # the label
    return found


def test_structured_report_matches_the_json_prediction(client: httpx.Client, chest_cr: bytes) -> None:
    response = post_dicom(client, chest_cr)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert 'filename="cxr-msn-report-sr.dcm"' in response.headers["content-disposition"]
    report = pydicom.dcmread(io.BytesIO(response.content))
    source = pydicom.dcmread(io.BytesIO(chest_cr), stop_before_pixels=True)
    assert report.Modality == "SR" and report.StudyInstanceUID == source.StudyInstanceUID
    assert report.SeriesInstanceUID != source.SeriesInstanceUID
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source.SeriesInstanceUID
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    json_result = client.post("/predict", files={"file": ("x.dcm", chest_cr)}).json()
    in_report = probabilities_in(report)
    assert len(in_report) == 14
    assert in_report == pytest.approx(json_result["probabilities"], abs=1e-6)


def text_values(items: Any) -> list[str]:
    """Every TEXT content item's value under ``items``, depth first."""
    values: list[str] = []
    for item in items:
        if "TextValue" in item:
            values.append(str(item.TextValue))
        values += text_values(item.get("ContentSequence", []))
    return values


def test_structured_report_gives_a_not_validated_label_a_note_not_yes_no(
    client: httpx.Client, chest_cr: bytes
) -> None:
    report = hd.sr.srread(post_dicom(client, chest_cr).content).content
    assert isinstance(report, hd.sr.MeasurementReport)
    json_result = client.post("/predict", files={"file": ("x.dcm", chest_cr)}).json()
    assert json_result["model"]["not_validated_labels"] == ["No Finding"]
    for label, presence in (("No Finding", []), ("Cardiomegaly", [codes.SCT.Yes])):
        [group] = [g for g in report.get_image_measurement_groups() if g.tracking_identifier == label]
        evaluations = group.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)
        assert [evaluation.value for evaluation in evaluations] == presence, label
        notes = text_values(group)
        assert any(note.startswith("Not validated") for note in notes) == (not presence), label


def test_secondary_capture_holds_the_same_overlay_as_the_json_api(
    client: httpx.Client, chest_cr: bytes
) -> None:
    response = post_dicom(client, chest_cr, "sc")
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    capture = pydicom.dcmread(io.BytesIO(response.content))
    assert capture.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert capture.PhotometricInterpretation == "RGB" and capture.Modality == "OT"
    body = client.post("/predict", files={"file": ("x.dcm", chest_cr)}, data={"overlay": "true"}).json()
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"]))))
    assert np.array_equal(capture.pixel_array, png)


def test_both_come_as_a_zip_of_two_dicom_files(client: httpx.Client, chest_cr: bytes) -> None:
    response = post_dicom(client, chest_cr, "both")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = sorted(archive.namelist())
        assert names == ["cxr-msn-heatmap-sc.dcm", "cxr-msn-report-sr.dcm"]
        modalities = {pydicom.dcmread(io.BytesIO(archive.read(name))).Modality for name in names}
    assert modalities == {"SR", "OT"}


def test_inputs_that_cannot_give_dicom_output_get_a_clear_4xx(client: httpx.Client) -> None:
    png = post_dicom(client, to_png(chest_like_picture()))
    assert png.status_code == 422 and png.json()["error"] == "dicom_output_unavailable"
    assert "not DICOM" in png.json()["detail"]
    gif = post_dicom(client, b"GIF89a" + b"\x00" * 40)
    assert gif.status_code == 415 and gif.json()["error"] == "unsupported_format"
    dataset = make_dataset(chest_like_picture(128, 120))
    del dataset.StudyInstanceUID
    missing = post_dicom(client, dicom_bytes(dataset))
    assert missing.status_code == 422 and "StudyInstanceUID" in missing.json()["detail"]
    wrong_option = post_dicom(client, dicom_bytes(make_dataset(chest_like_picture(128, 120))), "xml")
    assert 400 <= wrong_option.status_code < 500


@pytest.mark.parametrize(
    "header",
    [
        {"PatientSex": "U"},  # common, but not one of DICOM's M/F/O
        {"PatientBirthDate": "notadate", "StudyDate": "2020-01-01", "StudyTime": "25:99"},
        {"SpecificCharacterSet": ["", "ISO 2022 IR 87"], "PatientName": "Yamada^Tarou"},
    ],
    ids=["sex-U", "bad-dates", "multi-charset"],
)
def test_odd_but_common_headers_still_get_their_report(
    client: httpx.Client, header: dict[str, object]
) -> None:
    dataset = make_dataset(chest_like_picture(160, 150))
    for keyword, value in header.items():
        setattr(dataset, keyword, value)
    response = post_dicom(client, dicom_bytes(dataset), "both")
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        report = pydicom.dcmread(io.BytesIO(archive.read("cxr-msn-report-sr.dcm")))
    assert report.StudyInstanceUID == dataset.StudyInstanceUID


def test_a_header_highdicom_refuses_is_a_422_that_quotes_no_value(
    client: httpx.Client, server: RunningServer
) -> None:
    dataset = make_dataset(chest_like_picture(160, 150), PatientName=f"{MARKER}^BOB")
    dataset.SpecificCharacterSet = "ISO_IR_100"  # misspelt (the standard says "ISO_IR 100")
    log_before = len(server.log())
    response = post_dicom(client, dicom_bytes(dataset))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "dicom_output_unavailable" and "Structured Report" in body["detail"]
    assert "ISO_IR_100" not in body["detail"] and MARKER not in server.log()
    assert "Traceback" not in server.log()[log_before:]


def test_patient_data_goes_only_into_the_dicom_header_never_the_logs(
    client: httpx.Client, server: RunningServer
) -> None:
    dataset = make_dataset(chest_like_picture(160, 150), PatientName=f"{MARKER}^ANN", PatientID=MARKER)
    dataset.StudyInstanceUID = generate_uid()
    response = post_dicom(client, dicom_bytes(dataset), "both")
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        report = pydicom.dcmread(io.BytesIO(archive.read("cxr-msn-report-sr.dcm")))
    # The patient module is copied so that a PACS files the report with its study ...
    assert report.PatientID == MARKER
    # ... but no content item repeats it, and the server never logs it.
    assert MARKER not in str(report.ContentSequence)
    assert MARKER not in server.log()


def test_openapi_lists_the_dicom_endpoint(client: httpx.Client) -> None:
    paths = client.get("/docs.json").json()["paths"]
    assert "/predict_dicom" in paths
