"""The PACS round trip against a real Orthanc: Orthanc C-STOREs a chest film to `cxr-msn listen`
(the real command, in its own process, with a decode worker), which stores the SR and the
heatmap SC back into the same study. Orthanc is started by the tests on free loopback ports
with a generated configuration (tests/serving/orthanc.py); without it they skip.

Set CXR_MSN_PACS_MEASURE_N to time more images in test_throughput_and_latency (default 4).
"""

from __future__ import annotations

import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from serving.pacs.listener import CANNOT_UNDERSTAND, SUCCESS
from serving.predictor import Predictor, load_predictor
from tests.serving.conftest import REPO_ROOT, free_port
from tests.serving.orthanc import (
    ORTHANC_AET,
    PATIENT_ID_MARKER,
    PATIENT_NAME_MARKER,
    Orthanc,
    chest_instance,
    corrupt_instance,
    other_modality_instance,
    require_orthanc,
    sr_probabilities,
    store_scu,
    to_bytes,
)

pytestmark = pytest.mark.slow
LISTENER_AET = "CXRMSN"
SC_MODALITY = "OT"  # highdicom's Secondary Capture


@dataclass
class ListenerProcess:
    port: int
    outbox: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        output = subprocess.run(
            [_cxr_msn(), "listen", "--status", "--outbox", str(self.outbox)],
            check=True,
            capture_output=True,
            cwd=REPO_ROOT,
        ).stdout
        result: dict[str, Any] = json.loads(output)
        return result


def _cxr_msn() -> str:
    return str(Path(sys.executable).with_name("cxr-msn"))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    binary = require_orthanc()
    server = Orthanc(binary, tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def listener(
    orthanc: Orthanc, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ListenerProcess]:
    root = tmp_path_factory.mktemp("listener")
    port = free_port()
    log_path = root / "listener.log"
    command = [
        _cxr_msn(),
        "--verbose",  # DEBUG: the log must hold no patient data even then
        "listen",
        "--ae-title",
        LISTENER_AET,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--destination",
        f"127.0.0.1:{orthanc.dicom_port}:{ORTHANC_AET}",
        "--allow-caller",
        ORTHANC_AET,
        "--allow-caller",
        "TESTSCU",
        "--outbox",
        str(root / "outbox"),
        "--retry-base-s",
        "0.2",
        "--retry-max-s",
        "1",
        "--repository",
        str(model_repository),
        "--decode-workers",
        "1",
    ]
    environment = {**os.environ, "CXR_MSN_ORT_THREADS": "2", "OMP_NUM_THREADS": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = ListenerProcess(port, root / "outbox", process, log_path)
    _wait(lambda: "ready on port" in running.log() or process.poll() is not None, 60, "listener start")
    if process.poll() is not None:
        raise RuntimeError(f"cxr-msn listen exited with {process.returncode}:\n{running.log()[-3000:]}")
    orthanc.add_modality("cxrmsn", LISTENER_AET, port)
    yield running
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def predictor(model_repository: Path) -> Predictor:
    return load_predictor(model_repository, fallback="none")


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _results_arrived(orthanc: Orthanc, study_uid: str) -> Callable[[], bool]:
    def arrived() -> bool:
        series = orthanc.study_series(study_uid)
        return bool(series.get("SR")) and bool(series.get(SC_MODALITY))

    return arrived


def _expected(predictor: Predictor, data: bytes) -> dict[str, float]:
    import numpy as np

    prepared = predictor.prepare(data)
    probabilities, attention = predictor.infer(np.stack([prepared.model_input]))
    return dict(predictor.result(prepared, probabilities[0], attention[0], overlay=False)["probabilities"])


def test_round_trip_through_orthanc(
    orthanc: Orthanc, listener: ListenerProcess, predictor: Predictor
) -> None:
    dataset = chest_instance(PatientName=PATIENT_NAME_MARKER, PatientID=PATIENT_ID_MARKER)
    data = to_bytes(dataset)
    uploaded = orthanc.upload(data)
    response = orthanc.store_to("cxrmsn", [uploaded["ID"]])
    assert response.status_code == 200, response.text
    study = str(dataset.StudyInstanceUID)
    _wait(_results_arrived(orthanc, study), 30, "the SR and SC in Orthanc")
    series = orthanc.study_series(study)
    assert {key: len(value) for key, value in series.items()} == {"CR": 1, "SR": 1, SC_MODALITY: 1}

    report_bytes = orthanc.instance_file(series["SR"][0])
    assert sr_probabilities(report_bytes) == pytest.approx(_expected(predictor, data), abs=1e-6)
    report = pydicom.dcmread(io.BytesIO(report_bytes))
    capture = pydicom.dcmread(io.BytesIO(orthanc.instance_file(series[SC_MODALITY][0])))
    for output in (report, capture):
        assert output.StudyInstanceUID == study
        assert (str(output.PatientName), output.PatientID) == (PATIENT_NAME_MARKER, PATIENT_ID_MARKER)
        _assert_markers_only_in_patient_module(output)
    # The same instance again (a resend): one result, still.
    assert orthanc.store_to("cxrmsn", [uploaded["ID"]]).status_code == 200
    time.sleep(1.0)
    assert {key: len(value) for key, value in orthanc.study_series(study).items()} == {
        "CR": 1,
        "SR": 1,
        SC_MODALITY: 1,
    }
    log = listener.log()
    assert "already processed" in log
    for marker in (PATIENT_NAME_MARKER, "ZZMARKER", "QUILLON", PATIENT_ID_MARKER):
        assert marker not in log


def _assert_markers_only_in_patient_module(dataset: pydicom.Dataset) -> None:
    patient_module = {"PatientName", "PatientID"}
    for element in dataset.iterall():
        if element.keyword in patient_module:
            continue
        text = str(element.value) if element.VR != "SQ" else ""
        assert PATIENT_NAME_MARKER not in text and "ZZMARKER" not in text, element.keyword
        assert PATIENT_ID_MARKER not in text, element.keyword


def test_other_modalities_lateral_views_and_corrupt_files(
    orthanc: Orthanc, listener: ListenerProcess
) -> None:
    ct, lateral = other_modality_instance(), chest_instance(ViewPosition="LL")
    ids = [orthanc.upload(to_bytes(dataset))["ID"] for dataset in (ct, lateral)]
    assert orthanc.store_to("cxrmsn", ids).status_code == 200  # accepted: Orthanc does not retry
    time.sleep(0.5)
    for dataset in (ct, lateral):
        assert "SR" not in orthanc.study_series(str(dataset.StudyInstanceUID))
    log = listener.log()
    assert "skipped: not a chest radiograph: modality CT" in log
    assert "skipped: a lateral view (ViewPosition LL)" in log

    before = listener.status()
    corrupt = corrupt_instance()
    corrupt_id = orthanc.upload(to_bytes(corrupt))["ID"]
    refused = orthanc.store_to("cxrmsn", [corrupt_id])
    assert refused.status_code >= 400  # Orthanc reports the failed C-STORE
    assert store_scu(listener.port, [corrupt]) == [CANNOT_UNDERSTAND]  # the status itself
    after = listener.status()
    assert (after["pending"], after["sent"], after["failed"]) == (
        before["pending"],
        before["sent"],
        before["failed"],
    )
    assert "SR" not in orthanc.study_series(str(corrupt.StudyInstanceUID))
    assert "refused (0xC000)" in listener.log()


def test_throughput_and_latency(orthanc: Orthanc, listener: ListenerProcess) -> None:
    """Images per minute through the listener and the time from C-STORE to the SR in Orthanc."""
    count = int(os.environ.get("CXR_MSN_PACS_MEASURE_N", "4"))
    datasets = [chest_instance() for _ in range(count)]
    ids = [orthanc.upload(to_bytes(dataset))["ID"] for dataset in datasets]
    latencies = []
    for instance_id, dataset in zip(ids, datasets, strict=True):
        started = time.monotonic()
        assert orthanc.store_to("cxrmsn", [instance_id]).status_code == 200
        _wait(_results_arrived(orthanc, str(dataset.StudyInstanceUID)), 30, "the SR in Orthanc")
        latencies.append(time.monotonic() - started)
    batch = [chest_instance() for _ in range(count)]
    batch_ids = [orthanc.upload(to_bytes(dataset))["ID"] for dataset in batch]
    started = time.monotonic()
    assert orthanc.store_to("cxrmsn", batch_ids).status_code == 200  # one association, in order
    for dataset in batch:
        _wait(_results_arrived(orthanc, str(dataset.StudyInstanceUID)), 60, "the SRs in Orthanc")
    elapsed = time.monotonic() - started
    print(
        f"\nPACS listener: {count} images one at a time, C-STORE to SR in Orthanc: median "
        f"{statistics.median(latencies):.3f} s (min {min(latencies):.3f}, max {max(latencies):.3f}); "
        f"{count} images in one Orthanc store job: {elapsed:.2f} s, {count / elapsed * 60:.0f} images/min"
    )


def test_an_outage_of_the_pacs_loses_nothing_and_sends_nothing_twice(
    orthanc: Orthanc, listener: ListenerProcess
) -> None:
    studies = [chest_instance() for _ in range(3)]
    orthanc.stop()
    try:
        assert store_scu(listener.port, studies) == [SUCCESS, SUCCESS, SUCCESS]  # a router sends meanwhile
        _wait(lambda: listener.status()["retrying"] == 6, 20, "six results retrying")
        status = listener.status()
        assert (status["pending"], status["failed"]) == (6, 0)
        time.sleep(1.5)  # a few more failed rounds (back-off 0.2 s doubling, at most 1 s)
        during = listener.status()
    finally:
        orthanc.start()  # same ports, same store
    restarted = time.monotonic()
    for dataset in studies:
        _wait(_results_arrived(orthanc, str(dataset.StudyInstanceUID)), 30, "results after the outage")
    print(
        f"\nPACS outage: outbox while Orthanc was down: pending {during['pending']}, retrying "
        f"{during['retrying']}, failed {during['failed']}, sent so far {during['sent']}; all "
        f"{len(studies) * 2} results in Orthanc {time.monotonic() - restarted:.2f} s after its restart"
    )
    _wait(lambda: listener.status()["pending"] == 0, 10, "an empty outbox")
    time.sleep(1.0)
    for dataset in studies:
        series = orthanc.study_series(str(dataset.StudyInstanceUID))
        assert {key: len(value) for key, value in series.items()} == {"SR": 1, SC_MODALITY: 1}
    assert listener.status()["failed"] == 0
    assert "not delivered (attempt" in listener.log()
