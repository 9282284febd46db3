"""Decoding in worker processes with a deadline and a memory limit (issue 15, item 3).

Real worker processes and a real ``bentoml serve``; the slow input is a real hostile file:
a progressive JPEG whose one scan is repeated thousands of times (each copy costs libjpeg
a pass over every block of a 6000 x 6000 image, for a few dozen bytes of upload).
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import threading
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from PIL import Image

from cxrmsn.errors import CorruptInputError, DecodeError
from cxrmsn.preprocess import PreprocessConfig
from serving.config import ServingConfig
from serving.decode_pool import (
    MAX_SOURCE_HEADER_BYTES,
    DecodePool,
    DecodeTimeoutError,
    DecodeTooLargeError,
    DecodeUnavailableError,
    prepare,
)
from tests.helpers import chest_like_picture, make_dicom, to_png

if TYPE_CHECKING:
    from tests.serving.conftest import RunningServer
# Workers import this module to run crash() and raise_with_marker(): it must not import torch
# (tests.serving.conftest does), which cannot map its libraries within a worker's memory limit.

PNG = to_png(chest_like_picture(96, 96))
PREPROCESSING = PreprocessConfig()
DEADLINE_S = 1.0
MARKER = "ZZPOOLMARKER5521"


@cache
def repeated_scan_jpeg(repeats: int = 10_000, side: int = 6000) -> bytes:
    """A progressive JPEG whose smallest scan (a refinement scan of end-of-band runs, a few
    dozen bytes) is repeated: libjpeg decodes every copy over the whole image."""
    pixels = np.full((side, side), 128, np.uint8)
    pixels[: side // 2] = 100
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    scans, position = [], 2
    while data[position + 1] != 0xD9:  # EOI
        marker = data[position + 1]
        end = position + 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker == 0xDA:  # SOS: entropy-coded data runs to the next marker that is not RST/stuffing
            while not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
            scans.append((position, end))
        position = end
    start, end = min(scans, key=lambda scan: scan[1] - scan[0])
    return data[:end] + data[start:end] * repeats + data[end:]


def crash(data: bytes) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def raise_with_marker(data: bytes) -> None:
    raise ValueError(f"a message quoting a file value: {MARKER}")


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    with DecodePool(2, deadline_s=DEADLINE_S, memory_mib=512) as running:
        running.wait_ready()
        yield running


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_slow_upload_hits_the_deadline_and_its_worker_is_replaced(pool: DecodePool) -> None:
    pids, replaced = set(pool.worker_pids()), pool.replaced
    started = time.monotonic()
    with pytest.raises(DecodeTimeoutError) as caught:
        prepare(pool, repeated_scan_jpeg(), PREPROCESSING)
    assert time.monotonic() - started < DEADLINE_S + 10  # generous: the decode alone takes far longer
    assert (caught.value.code, caught.value.http_status) == ("decode_timeout", 422)
    assert pool.replaced == replaced + 1
    [killed] = pids - set(pool.worker_pids())
    assert_gone(killed)
    for _ in range(3):  # both workers, the new one included, decode a normal PNG
        prepared, source = prepare(pool, PNG, PREPROCESSING)
        assert prepared.decoded.info.format == "png" and source is None
        assert prepared.model_input.shape == (3, PREPROCESSING.crop, PREPROCESSING.crop)


def test_other_uploads_are_decoded_while_one_runs_out_its_deadline(pool: DecodePool) -> None:
    outcome: dict[str, tuple[str, float]] = {}

    def hostile() -> None:
        try:
            prepare(pool, repeated_scan_jpeg(), PREPROCESSING)
        except DecodeError as error:
            outcome["hostile"] = (error.code, time.monotonic())

    thread = threading.Thread(target=hostile)
    thread.start()
    time.sleep(0.2)
    for _ in range(3):
        prepared, _ = prepare(pool, PNG, PREPROCESSING)
        assert prepared.decoded.info.width == 96
    normal_done = time.monotonic()
    thread.join(timeout=60)
    code, hostile_done = outcome["hostile"]
    assert code == "decode_timeout"
    assert normal_done < hostile_done


def test_memory_hog_is_decode_too_large_and_the_pool_recovers() -> None:
    # A legitimate 4000 x 4000 16-bit image, against a 64 MiB limit: Pillow alone needs 32 MB
    # for it, the float32 copy 64 MB.
    big = to_png(np.kron(chest_like_picture(100, 100).astype(np.uint16) * 200, np.ones((40, 40), np.uint16)))
    with DecodePool(1, deadline_s=30, memory_mib=64) as small:
        [pid] = small.worker_pids()
        with pytest.raises(DecodeTooLargeError) as caught:
            prepare(small, big, PREPROCESSING)
        assert (caught.value.code, caught.value.http_status) == ("decode_too_large", 413)
        assert small.replaced == 1
        assert_gone(pid)
        prepared, _ = prepare(small, PNG, PREPROCESSING)
        assert prepared.decoded.info.width == 96
        [pid] = small.worker_pids()
    assert_gone(pid)  # closing the pool stops its workers
    with pytest.raises(DecodeUnavailableError):
        prepare(small, PNG, PREPROCESSING)


def test_a_worker_that_dies_is_decode_too_large_and_replaced(pool: DecodePool) -> None:
    replaced = pool.replaced
    with pytest.raises(DecodeTooLargeError):
        pool.run(crash, b"")
    assert pool.replaced == replaced + 1
    assert prepare(pool, PNG, PREPROCESSING)[0].decoded.info.width == 96


def test_decode_errors_come_back_with_their_class_code_and_detail(pool: DecodePool) -> None:
    replaced = pool.replaced
    for data, code in [(b"", "empty_input"), (PNG[: len(PNG) // 2], "corrupt_input"), (b"GIF89a" * 8, None)]:
        with pytest.raises(DecodeError) as in_pool:
            prepare(pool, data, PREPROCESSING)
        with pytest.raises(DecodeError) as here:
            prepare(None, data, PREPROCESSING)
        assert type(in_pool.value) is type(here.value)
        assert (in_pool.value.code, in_pool.value.http_status, in_pool.value.detail) == (
            here.value.code,
            here.value.http_status,
            here.value.detail,
        )
        assert code is None or in_pool.value.code == code
    with pytest.raises(CorruptInputError) as caught:
        pool.run(raise_with_marker, b"")
    assert "ValueError" in caught.value.detail and MARKER not in caught.value.detail
    assert pool.replaced == replaced  # a refused upload costs no worker


def test_dicom_header_comes_back_for_dicom_output_within_a_bound(pool: DecodePool) -> None:
    pixels = chest_like_picture(64, 64).astype(np.uint16) * 16
    data = make_dicom(pixels, PatientName=MARKER)
    prepared, source = prepare(pool, data, PREPROCESSING, read_source=True)
    assert prepared.decoded.info.format == "dicom"
    assert str(source.PatientName) == MARKER and source.get("PixelData") is None
    assert len(pickle.dumps(source)) < len(data)  # not the upload (pydicom keeps it in .buffer)
    # A header too large to copy into the outputs (it is not needed to classify the image).
    huge = make_dicom(pixels, TextValue="x" * (MAX_SOURCE_HEADER_BYTES + 1))  # UT: unlimited
    with pytest.raises(DecodeTooLargeError, match="header"):
        prepare(pool, huge, PREPROCESSING, read_source=True)
    assert prepare(pool, huge, PREPROCESSING)[0].decoded.info.format == "dicom"


def test_decode_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_MSN_DECODE_WORKERS", "0")
    monkeypatch.setenv("CXR_MSN_DECODE_DEADLINE_S", "2.5")
    monkeypatch.setenv("CXR_MSN_DECODE_MEMORY_MIB", "512")
    config = ServingConfig.from_env()
    assert (config.decode_workers, config.decode_deadline_s, config.decode_memory_mib) == (0, 2.5, 512)
    for name, value in [
        ("CXR_MSN_DECODE_WORKERS", "-1"),
        ("CXR_MSN_DECODE_DEADLINE_S", "0"),
        ("CXR_MSN_DECODE_DEADLINE_S", "nan"),
        ("CXR_MSN_DECODE_MEMORY_MIB", "8"),
    ]:
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(ValueError, match=name):
                ServingConfig.from_env()
    monkeypatch.delenv("CXR_MSN_DECODE_WORKERS")
    assert 2 <= ServingConfig.from_env().decode_workers <= 8


@pytest.fixture(scope="module")
def pool_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from tests.serving.conftest import start_server, stop_server

    log_path = tmp_path_factory.mktemp("decode-pool-server") / "server.log"
    running = start_server(
        model_repository,
        log_path,
        CXR_MSN_DECODE_WORKERS="2",
        CXR_MSN_DECODE_DEADLINE_S="3",
    )
    yield running
    stop_server(running)


def test_hostile_upload_is_422_while_a_normal_one_is_answered(pool_server: RunningServer) -> None:
    finished: dict[str, tuple[float, httpx.Response]] = {}

    def post(name: str, content: bytes) -> None:
        with httpx.Client(base_url=pool_server.url, timeout=60) as client:
            response = client.post("/predict", files={"file": (f"{name}.bin", content)})
        finished[name] = (time.monotonic(), response)

    with httpx.Client(base_url=pool_server.url, timeout=60) as client:  # warm the model up
        assert client.post("/predict", files={"file": ("x.png", PNG)}).status_code == 200
    hostile = threading.Thread(target=post, args=("hostile", repeated_scan_jpeg()))
    hostile.start()
    time.sleep(0.3)
    post("normal", PNG)
    hostile.join(timeout=60)
    normal_done, normal = finished["normal"]
    hostile_done, refused = finished["hostile"]
    assert normal.status_code == 200, normal.text
    assert refused.status_code == 422, refused.text
    assert refused.json() == {
        "error": "decode_timeout",
        "detail": "decoding this upload took longer than 3 s; the decoder was stopped",
    }
    assert normal_done < hostile_done
    with httpx.Client(base_url=pool_server.url, timeout=60) as client:
        assert client.post("/predict", files={"file": ("x.png", PNG)}).status_code == 200
        metrics = client.get("/metrics").text
    assert 'cxr_msn_errors_total{code="decode_timeout"} 1.0' in metrics
    assert "passed its 3 s deadline" in pool_server.log()
