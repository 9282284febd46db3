"""DICOMweb STOW-RS into the service (`POST /dicomweb/studies`), against a real Orthanc: from a
hand-built STOW-RS request and from Orthanc's own DICOMweb client (the orthanc-dicomweb plugin);
the SR and SC come back into the study in Orthanc by C-STORE through the outbox."""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from serving.pacs import stow
from serving.pacs.listener import CANNOT_UNDERSTAND
from tests.serving.conftest import RunningServer, start_server, stop_server
from tests.serving.orthanc import (
    ORTHANC_AET,
    Orthanc,
    chest_instance,
    corrupt_instance,
    dicomweb_plugin,
    require_orthanc,
    sr_probabilities,
    to_bytes,
)

pytestmark = pytest.mark.slow
SC_MODALITY = "OT"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    binary = require_orthanc()
    plugin = dicomweb_plugin()
    server = Orthanc(binary, tmp_path_factory.mktemp("orthanc-stow"), plugins=[plugin] if plugin else [])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(
    orthanc: Orthanc, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("stow-service")
    running = start_server(
        model_repository,
        root / "server.log",
        CXR_MSN_PACS_DESTINATION=f"127.0.0.1:{orthanc.dicom_port}:{ORTHANC_AET}",
        CXR_MSN_OUTBOX=str(root / "outbox"),
        CXR_MSN_DECODE_WORKERS="1",
    )
    yield running
    stop_server(running)


def multipart_related(parts: list[bytes]) -> tuple[str, bytes]:
    boundary = secrets.token_hex(12)
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
        for part in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


def _wait_for_results(orthanc: Orthanc, study_uid: str, timeout_s: float = 30) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        series = orthanc.study_series(study_uid)
        if series.get("SR") and series.get(SC_MODALITY):
            return series
        time.sleep(0.05)
    raise AssertionError("the SR and SC did not arrive in Orthanc")


def _tag(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def test_stow_rs_request_answers_ps3_18_and_results_reach_orthanc(
    orthanc: Orthanc, service: RunningServer
) -> None:
    good, corrupt = chest_instance(), corrupt_instance()
    content_type, body = multipart_related([to_bytes(good), to_bytes(corrupt)])
    response = httpx.post(
        f"{service.url}/dicomweb/studies", content=body, headers={"Content-Type": content_type}, timeout=60
    )
    assert response.status_code == 202, response.text  # one stored, one refused
    assert response.headers["content-type"].startswith("application/dicom+json")
    payload = response.json()
    [stored] = payload[stow.REFERENCED_SOP_SEQUENCE]["Value"]
    [failed] = payload[stow.FAILED_SOP_SEQUENCE]["Value"]
    assert _tag(stored, stow.SOP_INSTANCE) == good.SOPInstanceUID
    assert _tag(failed, stow.SOP_INSTANCE) == corrupt.SOPInstanceUID
    assert _tag(failed, stow.FAILURE_REASON) == CANNOT_UNDERSTAND

    series = _wait_for_results(orthanc, str(good.StudyInstanceUID))
    report = orthanc.instance_file(series["SR"][0])
    assert pydicom.dcmread(io.BytesIO(report)).StudyInstanceUID == good.StudyInstanceUID
    assert set(sr_probabilities(report)) >= {"Cardiomegaly", "Pleural Effusion", "No Finding"}
    assert "SR" not in orthanc.study_series(str(corrupt.StudyInstanceUID))
    deadline = time.monotonic() + 10
    while (counts := httpx.get(f"{service.url}/dicomweb/outbox", timeout=10).json())["pending"]:
        assert time.monotonic() < deadline, counts
        time.sleep(0.05)
    assert counts["sent"] >= 2 and counts["failed"] == 0


def test_stow_rs_refuses_other_shapes(service: RunningServer) -> None:
    response = httpx.post(
        f"{service.url}/dicomweb/studies", content=b"x", headers={"Content-Type": "application/dicom"}
    )
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


def test_orthanc_dicomweb_client_stows_to_the_service(orthanc: Orthanc, service: RunningServer) -> None:
    if dicomweb_plugin() is None:
        pytest.skip("the orthanc-dicomweb plugin is not installed (make orthanc installs it)")
    orthanc.add_dicomweb_server("cxrmsn", f"{service.url}/dicomweb/")
    dataset = chest_instance()
    instance = orthanc.upload(to_bytes(dataset))["ID"]
    response = orthanc.stow_to("cxrmsn", [instance])
    assert response.status_code == 200, response.text
    series = _wait_for_results(orthanc, str(dataset.StudyInstanceUID))
    assert {key: len(value) for key, value in series.items()} == {"CR": 1, "SR": 1, SC_MODALITY: 1}
