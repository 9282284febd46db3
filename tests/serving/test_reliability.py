"""Reliability: load with good and bad files, slow clients, early 413, no patient data at DEBUG."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from pydicom.dataset import Dataset

from tests.bad_inputs import bad_inputs
from tests.helpers import chest_like_picture, dicom_bytes, make_dataset, to_png
from tests.serving.conftest import REPO_ROOT, RunningServer, start_server, stop_server

PICTURE = chest_like_picture(256, 240)
MARKER = "QQPATIENT5521"


def raw_connection(url: str) -> socket.socket:
    address = urlparse(url)
    return socket.create_connection((address.hostname, address.port), timeout=30)


def test_bounded_load_mixing_good_and_bad_files(server: RunningServer, tmp_path: Path) -> None:
    files = []
    for index in range(4):
        path = tmp_path / f"good{index}.png"
        path.write_bytes(to_png(chest_like_picture(300, 280, seed=index)))
        files.append(path)
    for name, data, _, _ in bad_inputs()[:8]:
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        files.append(path)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "cxr-msn"),
            "loadtest",
            server.url,
            *map(str, files),
            "--clients",
            "8",
            "--duration",
            "8",
            "--pid",
            str(server.process.pid),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
    )
    report = json.loads(result.stdout)
    assert result.returncode == 0, report
    assert report["server_errors"] == 0 and report["dropped"] == 0
    assert report["by_status"].get("200", 0) > 0 and report["by_status"].get("415", 0) > 0
    assert report["requests"] > 20 and report["latency_ms"]["p99"] is not None
    assert report["rss_mb"]["end"] is not None


def test_slow_clients_do_not_block_other_requests(server: RunningServer) -> None:
    stalled = []
    try:
        for _ in range(32):
            connection = raw_connection(server.url)
            connection.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n"
            )
            stalled.append(connection)
        started = time.monotonic()
        response = httpx.post(f"{server.url}/predict", files={"file": ("a.png", to_png(PICTURE))}, timeout=30)
        assert response.status_code == 200
        assert time.monotonic() - started < 10
    finally:
        for connection in stalled:
            connection.close()


def test_oversize_upload_is_refused_before_the_body_is_sent(server: RunningServer) -> None:
    with raw_connection(server.url) as connection:
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 500000000\r\n\r\n"
        )
        reply = b""
        while chunk := connection.recv(4096):  # the server closes the connection after its 413
            reply += chunk
    reply_text = reply.decode()
    assert reply_text.startswith("HTTP/1.1 413") and "upload_too_large" in reply_text


def test_chunked_oversize_upload_is_refused(server: RunningServer) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(20):
            yield b"\x00" * (1024 * 1024)

    response = httpx.post(
        f"{server.url}/predict",
        content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        timeout=60,
    )
    assert response.status_code == 413 and response.json()["error"] == "upload_too_large"


def _marker_dicom() -> bytes:
    ds: Dataset = make_dataset(
        PICTURE,
        PatientName=f"{MARKER}^NAME",
        PatientID=MARKER,
        PatientBirthDate="19020304",
        AccessionNumber=MARKER[:16],
        InstitutionName=MARKER,
        ReferringPhysicianName=MARKER,
    )
    block = ds.private_block(0x0011, "CXR MSN TEST", create=True)
    block.add_new(0x01, "LO", MARKER)
    return dicom_bytes(ds)


@pytest.fixture(scope="module")
def verbose_server(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("verbose") / "server.log"
    running = start_server(model_repository, log_path, verbose=True)
    yield running
    stop_server(running)


def test_patient_identifiers_appear_nowhere_at_debug_level(verbose_server: RunningServer) -> None:
    data = _marker_dicom()
    with httpx.Client(base_url=verbose_server.url, timeout=60) as client:
        responses = [
            client.post("/predict", files={"file": (f"{MARKER}.dcm", data)}, data={"overlay": "true"}),
            client.post("/predict", files={"file": (f"{MARKER}.dcm", data[: len(data) - 200])}),
            client.post("/predict", files={"file": (f"{MARKER}.dcm", data[:400])}),
            client.post(
                "/predict_batch", files=[("files", (f"{MARKER}.dcm", data)), ("files", ("x", b"GIF89a"))]
            ),
        ]
        metrics = client.get("/metrics").text
    assert [r.status_code for r in responses] == [200, 400, 422, 200]
    time.sleep(1)  # let the log flush
    log = verbose_server.log()
    assert "DEBUG" in log  # the server really logged at debug level
    for text in [*(r.text for r in responses), metrics, log]:
        assert MARKER not in text and "19020304" not in text
