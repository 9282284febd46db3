"""A real Orthanc (Debian's ``orthanc`` package) for the PACS tests: a generated configuration,
free loopback ports, a temporary store, no default /etc configuration and no plugins.

``make orthanc`` installs it (as ``make browser`` installs Chromium). Without it the tests
skip and say why; ``CXR_MSN_REQUIRE_ORTHANC=1`` (set by CI) turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.devserver import free_port, stop_process_group

REQUIRE_ENV = "CXR_MSN_REQUIRE_ORTHANC"
ORTHANC_AET = "ORTHANC"


def orthanc_binary() -> str | None:
    return os.environ.get("CXR_MSN_ORTHANC") or shutil.which("Orthanc") or _existing("/usr/sbin/Orthanc")


def _existing(path: str) -> str | None:
    return path if os.access(path, os.X_OK) else None


DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def dicomweb_plugin() -> str | None:
    """Debian's orthanc-dicomweb plugin, when installed."""
    return _existing_file(os.environ.get("CXR_MSN_ORTHANC_DICOMWEB") or DICOMWEB_PLUGIN)


def _existing_file(path: str) -> str | None:
    return path if os.path.isfile(path) else None


def require_orthanc() -> str:
    """The Orthanc binary, or a skip (a failure when CXR_MSN_REQUIRE_ORTHANC=1)."""
    binary = orthanc_binary()
    if binary is None:
        reason = "Orthanc is not installed (run `make orthanc`: apt-get install orthanc, as root)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return binary


@dataclass
class Orthanc:
    binary: str
    root: Path
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    modalities: dict[str, list[Any]] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        return {
            "Name": "cxr-msn-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": self.modalities,
            "DicomScuTimeout": 10,
            "Plugins": self.plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {}},
            "StableAge": 1,
            "SaveJobs": False,
            "HttpTimeout": 30,
        }

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=1))
        log = (self.root / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "--logdir=" + str(self.root), str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within 30 s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
        self.process = None

    def log(self) -> str:
        text = []
        for path in sorted(self.root.glob("*.log")):
            text.append(path.read_text(errors="replace"))
        return "\n".join(text)

    # -- REST --------------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def upload(self, data: bytes) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/instances", content=data, timeout=30)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def add_modality(self, name: str, ae_title: str, port: int) -> None:
        body = {"AET": ae_title, "Host": "127.0.0.1", "Port": port}
        httpx.put(f"{self.url}/modalities/{name}", json=body, timeout=30).raise_for_status()

    def add_dicomweb_server(self, name: str, url: str) -> None:
        httpx.put(f"{self.url}/dicom-web/servers/{name}", json={"Url": url}, timeout=30).raise_for_status()

    def stow_to(self, server: str, instance_ids: list[str]) -> httpx.Response:
        """Ask Orthanc's DICOMweb client to STOW-RS instances to a server (synchronously)."""
        body = {"Resources": instance_ids, "Synchronous": True}
        return httpx.post(f"{self.url}/dicom-web/servers/{server}/stow", json=body, timeout=120)

    def store_to(self, modality: str, instance_ids: list[str]) -> httpx.Response:
        """Ask Orthanc to C-STORE instances to a modality (synchronously)."""
        body = {"Resources": instance_ids, "Synchronous": True}
        return httpx.post(f"{self.url}/modalities/{modality}/store", json=body, timeout=120)

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study (main tags), found by its StudyInstanceUID."""
        found = httpx.post(
            f"{self.url}/tools/find",
            json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
            timeout=30,
        )
        found.raise_for_status()
        instances: list[dict[str, Any]] = found.json()
        return instances

    def study_series(self, study_uid: str) -> dict[str, list[str]]:
        """Modality -> the Orthanc ids of the study's instances of that modality."""
        found = httpx.post(
            f"{self.url}/tools/find",
            json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
            timeout=30,
        )
        found.raise_for_status()
        series: dict[str, list[str]] = {}
        for item in found.json():
            modality = item["MainDicomTags"].get("Modality", "")
            series.setdefault(modality, []).extend(item["Instances"])
        return series

    def instance_file(self, instance_id: str) -> bytes:
        response = httpx.get(f"{self.url}/instances/{instance_id}/file", timeout=30)
        response.raise_for_status()
        return response.content

    def all_instances(self) -> list[str]:
        instances: list[str] = self.get("/instances")
        return instances


# -- test instances ----------------------------------------------------------------------------

PATIENT_NAME_MARKER = "ZZMARKER^QUILLON"
PATIENT_ID_MARKER = "PIDZQ7731"


def chest_instance(**changes: Any) -> Any:
    """pydicom-data's real chest CR (RG1_UNCR) with fresh study, series and instance UIDs.

    ``changes`` set attributes (``ViewPosition="LL"``, ``PatientName=...``).
    """
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed")
    dataset = pydicom.dcmread(path)
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    return dataset


def corrupt_instance() -> Any:
    """A chest CR whose pixel data stops a quarter of the way through the image."""
    dataset = chest_instance()
    dataset.PixelData = bytes(dataset.PixelData)[: len(dataset.PixelData) // 4]
    return dataset


def other_modality_instance() -> Any:
    """pydicom's CT test file (Modality CT) with fresh UIDs."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    dataset = pydicom.dcmread(path)
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def to_bytes(dataset: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def sr_probabilities(data: bytes) -> dict[str, float]:
    """Label -> probability from a cxr-msn Structured Report, parsed with highdicom."""
    import io

    import highdicom as hd
    import pydicom

    report = hd.sr.EnhancedSR.from_dataset(pydicom.dcmread(io.BytesIO(data)))
    found = {}
    for group in report.content.get_image_measurement_groups():
        [measurement] = group.get_measurements()
        found[str(group.tracking_identifier)] = float(measurement.value)
    return found


def store_scu(port: int, datasets: list[Any], calling_ae: str = "TESTSCU") -> list[int | None]:
    """C-STORE datasets to the listener as a router would; the status of each (None: no answer)."""
    from pydicom.uid import CTImageStorage
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    classes = {str(dataset.SOPClassUID) for dataset in datasets} | {CTImageStorage}
    for sop_class in sorted(classes):
        ae.add_requested_context(sop_class)
    association = ae.associate("127.0.0.1", port, ae_title="CXRMSN")
    if not association.is_established:
        return [None] * len(datasets)
    statuses: list[int | None] = []
    try:
        for dataset in datasets:
            status = association.send_c_store(dataset)
            statuses.append(int(status.Status) if status is not None and "Status" in status else None)
    finally:
        association.release()
    return statuses
