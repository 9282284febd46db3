"""What the server records (issue 15, items 9 and 10): each `cxr-msn serve` instance reports
its own counters on /metrics, refusals made before the service runs are counted, and no form
value or file name reaches the log."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.middleware import FRAMEWORK_ERROR_LOGGER, withhold_framework_error_details
from tests.helpers import chest_like_picture, to_png
from tests.serving.conftest import RunningServer, launch, stop_server

PNG = to_png(chest_like_picture(64, 64))
MARKER = "QQLOGMARKER7731"
NOT_AN_IMAGE = b"GIF89a" + b"\x00" * 64  # 415 unsupported_format, counted by the service


def error_count(client: httpx.Client, code: str) -> float:
    """cxr_msn_errors_total{code=CODE} on /metrics (0 before the first)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "cxr_msn_errors_total" and sample.labels.get("code") == code:
                return float(sample.value)
    return 0.0


def start_cxr_msn_serve(repository: Path, log_path: Path, bentoml_home: Path) -> RunningServer:
    """`cxr-msn serve` (not `bentoml serve`): the command that sets up the metrics directory."""
    command = [str(Path(sys.executable).with_name("cxr-msn")), "serve", "--repository", str(repository)]
    environment = {"CXR_MSN_ORT_THREADS": "1", "BENTOML_HOME": str(bentoml_home)}
    return launch(command, log_path, environment, name="cxr-msn serve", ready_s=120)


def metrics_directory(server: RunningServer) -> Path:
    """The PROMETHEUS_MULTIPROC_DIR the server's worker process was started with."""
    for child in Path(f"/proc/{server.process.pid}/task").glob("*/children"):
        for pid in child.read_text().split():
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            for entry in environment:
                if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                    return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError("no worker process with PROMETHEUS_MULTIPROC_DIR")


@pytest.fixture
def two_servers(model_repository: Path, tmp_path: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    home = tmp_path / "shared-bentoml-home"  # two servers of one user share ~/bentoml
    first = start_cxr_msn_serve(model_repository, tmp_path / "first.log", home)
    try:
        with httpx.Client(base_url=first.url, timeout=60) as client:
            assert client.post("/predict", files={"file": ("a.gif", NOT_AN_IMAGE)}).status_code == 415
        second = start_cxr_msn_serve(model_repository, tmp_path / "second.log", home)
        try:
            yield first, second
        finally:
            stop_server(second)
    finally:
        stop_server(first)


@pytest.mark.slow
def test_two_servers_each_report_their_own_counters(two_servers: tuple[RunningServer, RunningServer]) -> None:
    first, second = two_servers
    with httpx.Client(base_url=second.url, timeout=60) as client:
        for _ in range(3):
            assert client.post("/predict", files={"file": ("a.gif", NOT_AN_IMAGE)}).status_code == 415
        assert error_count(client, "unsupported_format") == 3
    with httpx.Client(base_url=first.url, timeout=60) as client:
        assert error_count(client, "unsupported_format") == 1  # its own, not the second's
    directories = [metrics_directory(first), metrics_directory(second)]
    assert directories[0] != directories[1]
    assert all(directory.is_dir() and "bentoml-home" not in str(directory) for directory in directories)
    stop_server(first)
    stop_server(second)
    assert not any(directory.exists() for directory in directories)  # removed at exit


def test_refusals_before_the_service_are_counted(client: httpx.Client) -> None:
    refusals = {
        "invalid_request": lambda: client.post("/predict", files={"files": ("x.png", PNG)}),
        "unsupported_media_type": lambda: client.post("/predict", data={"file": "x"}),
        "method_not_allowed": lambda: client.get("/predict_batch"),
    }
    for code, refuse in refusals.items():
        before = error_count(client, code)
        response = refuse()
        assert response.json()["error"] == code
        assert error_count(client, code) == before + 1, code


def test_form_values_and_file_names_never_reach_the_log(client: httpx.Client, server: RunningServer) -> None:
    requests = [
        # refused by the shape check: the value is never parsed by BentoML
        client.post("/predict", files={"file": ("x.png", PNG)}, data={"overlay": MARKER}),
        # a file name too long for a temporary file's name: BentoML raised OSError quoting it (500)
        client.post("/predict", files={"file": (MARKER + "x" * 300 + ".png", PNG)}),
        # a case the shape check let through and pydantic refused, logging input_value='SR'
        client.post("/predict_dicom", files={"file": ("x.dcm", PNG)}, data={"output": "SR"}),
    ]
    for response in requests:
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["error"] == "invalid_request" and isinstance(body["detail"], str), body
        assert MARKER not in response.text
    time.sleep(1)  # let the log flush
    log = server.log()
    assert MARKER not in log and "input_value" not in log


def test_bentomls_exception_log_keeps_only_the_exception_type(caplog: pytest.LogCaptureFixture) -> None:
    """The safety net behind the shape check: BentoML's log_exception() record (logged with
    the traceback, whose message may quote a form value) keeps only the exception's type."""
    withhold_framework_error_details()
    logger = logging.getLogger(FRAMEWORK_ERROR_LOGGER)
    with caplog.at_level(logging.ERROR, logger=FRAMEWORK_ERROR_LOGGER):
        try:
            raise ValueError(f"input_value='{MARKER}'")
        except ValueError:
            logger.error("Exception on %s [%s]", "/predict", "POST", exc_info=True)
    assert "ValueError" in caplog.text and "/predict" in caplog.text
    assert MARKER not in caplog.text
