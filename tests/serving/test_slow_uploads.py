"""Slow and large uploads against a real `bentoml serve` (issue 15, items 4 and 8).

A client still sending its body holds no work slot and is answered 408 ``upload_too_slow``
at its deadline; a large chunked body is spooled to disk, not held in the server's memory.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.middleware import UploadSettings, WorkLimitMiddleware
from tests.helpers import chest_like_picture, to_png
from tests.serving.conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.slow

PNG = to_png(chest_like_picture(256, 240))
GRACE_S = 5.0
TIMEOUT_S = 9.0
WORK_LIMIT = 2
# More than BentoML's traffic max_concurrency (64), which counted uploads still in transit.
SLOW_CONNECTIONS = 70
LARGE_BODY_MB = 60
SLOW_HEAD = (
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    b"Content-Length: %d\r\n\r\n--b\r\n"
)


@pytest.fixture(scope="module")
def upload_server(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    running = start_server(
        model_repository,
        tmp_path_factory.mktemp("uploads") / "server.log",
        CXR_MSN_UPLOAD_TIMEOUT_S=str(TIMEOUT_S),
        CXR_MSN_UPLOAD_GRACE_S=str(GRACE_S),
        CXR_MSN_MAX_CONCURRENCY=str(WORK_LIMIT),
        CXR_MSN_MAX_UPLOAD_BYTES=str((LARGE_BODY_MB + 4) * 1024 * 1024),
    )
    yield running
    stop_server(running)


FILE_PART_HEAD = b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'


def slow_connection(url: str, length: int = 100_000, more: bytes = b"") -> socket.socket:
    """Headers and the first body bytes (5, and ``more``) of a request, then nothing."""
    address = urlparse(url)
    connection = socket.create_connection((address.hostname, address.port), timeout=30)
    connection.sendall(SLOW_HEAD % length + more)
    return connection


def read_reply(connection: socket.socket) -> tuple[int, dict[str, Any], bool]:
    """(status, JSON body, whether the server then closed the connection)."""
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        chunk = connection.recv(4096)
        if not chunk:
            break
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    try:
        closed = connection.recv(4096) == b""
    except ConnectionResetError:  # closed with bytes the client sent still unread
        closed = True
    return int(head.split()[1]), json.loads(body), closed


def test_slow_uploads_hold_no_work_slot_and_are_refused_at_their_deadline(
    upload_server: RunningServer,
) -> None:
    opened = time.monotonic()
    stalled = [slow_connection(upload_server.url) for _ in range(SLOW_CONNECTIONS)]
    try:
        time.sleep(0.5)
        response = httpx.post(f"{upload_server.url}/predict", files={"file": ("a.png", PNG)}, timeout=30)
        assert response.status_code == 200, response.text
        assert time.monotonic() - opened < GRACE_S  # answered while every slow upload was open
        for connection in stalled:
            status, body, closed = read_reply(connection)
            assert (status, body["error"], closed) == (408, "upload_too_slow", True), body
            assert set(body) == {"error", "detail"}
        # 5 bytes in: under the minimum rate once the grace period is over
        assert GRACE_S - 0.5 < time.monotonic() - opened < GRACE_S + 4
    finally:
        for connection in stalled:
            connection.close()


def requests_in_progress(server: RunningServer, path: str) -> float:
    """BentoML's bentoml_service_request_in_progress gauge for ``path``."""
    metrics = httpx.get(f"{server.url}/metrics").text
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "bentoml_service_request_in_progress" and sample.labels["endpoint"] == path:
                return float(sample.value)
    return 0.0


def test_a_client_leaving_mid_upload_ends_its_request_at_once(upload_server: RunningServer) -> None:
    """Nothing waits for a client that is gone (BentoML's timeout middleware used to hold such
    a request, and a server's shutdown, for its 120 s)."""
    leaving = [slow_connection(upload_server.url) for _ in range(8)]
    time.sleep(0.5)
    assert requests_in_progress(upload_server, "/predict") == len(leaving)
    for connection in leaving:
        connection.close()
    deadline = time.monotonic() + 3
    while requests_in_progress(upload_server, "/predict") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert requests_in_progress(upload_server, "/predict") == 0


def test_an_upload_trickling_above_the_minimum_rate_is_refused_at_the_total_deadline(
    upload_server: RunningServer,
) -> None:
    connection = slow_connection(upload_server.url, length=10_000_000, more=FILE_PART_HEAD)
    opened = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:  # file content at 4 KB/s, over the 1 KB/s minimum
        while not stop.wait(0.25):
            try:
                connection.sendall(b"x" * 1024)
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        status, body, _ = read_reply(connection)
    finally:
        stop.set()
        sender.join()
        connection.close()
    assert (status, body["error"]) == (408, "upload_too_slow")
    assert TIMEOUT_S - 0.5 < time.monotonic() - opened < TIMEOUT_S + 4


def test_requests_past_the_work_limit_get_429_overloaded(upload_server: RunningServer) -> None:
    files = [("files", (f"{index}.png", PNG)) for index in range(8)]
    responses: list[httpx.Response] = []

    def post() -> None:
        responses.append(httpx.post(f"{upload_server.url}/predict_batch", files=files, timeout=60))

    threads = [threading.Thread(target=post) for _ in range(4 * WORK_LIMIT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) >= WORK_LIMIT, statuses
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.json()["error"] == "overloaded" and refused.headers["retry-after"] == "1"
    assert httpx.get(f"{upload_server.url}/readyz").status_code == 200


def worker_pid(server: RunningServer) -> int:
    for children in Path(f"/proc/{server.process.pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            if b"_bentoml_impl.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
    raise AssertionError("no BentoML worker process")


def peak_rss_growth_mb(pid: int, action: Callable[[], None]) -> float:
    """How far the process's peak RSS (VmHWM, reset first) rose over its RSS during ``action``."""

    def status(field: str) -> float:
        line = next(
            line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field)
        )
        return int(line.split()[1]) / 1024

    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError as error:
        pytest.skip(f"cannot reset the peak RSS: {error}")
    start = status("VmRSS:")
    action()
    return status("VmHWM:") - start


def test_a_large_chunked_upload_is_spooled_not_held_in_memory(upload_server: RunningServer) -> None:
    def body() -> Iterator[bytes]:  # chunked: no Content-Length
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(LARGE_BODY_MB):
            yield b"\x89PNG" + bytes(1024 * 1024 - 4)
        # refused by the shape check once the whole body is in, before BentoML reads it
        yield b'\r\n--b\r\nContent-Disposition: form-data; name="unexpected"\r\n\r\nx\r\n--b--\r\n'

    def upload() -> None:
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        response = httpx.post(f"{upload_server.url}/predict", content=body(), headers=headers, timeout=60)
        assert response.status_code == 400 and response.json()["error"] == "invalid_request", response.text

    growth = peak_rss_growth_mb(worker_pid(upload_server), upload)
    assert growth < 16, f"peak RSS grew {growth:.0f} MB for a {LARGE_BODY_MB} MB upload"


def test_the_work_limit_counts_requests_being_worked_on_and_never_health_checks() -> None:
    async def scenario() -> list[tuple[str, int]]:
        release = anyio.Event()
        answered: list[tuple[str, int]] = []

        async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})

        limiter = WorkLimitMiddleware(slow_app, max_concurrency=1)

        async def call(path: str) -> None:
            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    answered.append((path, message["status"]))

            await limiter({"type": "http", "path": path, "method": "POST"}, _no_body, send)

        async with anyio.create_task_group() as group:
            group.start_soon(call, "/predict")
            await anyio.sleep(0.05)
            await call("/predict")  # refused at once: the first holds the only slot
            group.start_soon(call, "/readyz")
            await anyio.sleep(0.05)
            release.set()
        return answered

    answered = anyio.run(scenario)
    assert answered[0] == ("/predict", 429)
    assert sorted(answered[1:]) == [("/predict", 200), ("/readyz", 200)]


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_upload_settings_deadline_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = UploadSettings(receive_seconds=30, grace_seconds=5, min_bytes_per_second=1000)
    assert settings.seconds_left(received=0, elapsed=0) == 5  # the grace period
    assert settings.seconds_left(received=20_000, elapsed=4) == 16  # 20 KB at 1 KB/s lasts to 20 s
    assert settings.seconds_left(received=10**9, elapsed=1) == 29  # never past the total deadline
    monkeypatch.setenv("CXR_MSN_UPLOAD_TIMEOUT_S", "2.5")
    assert UploadSettings.from_env().receive_seconds == 2.5
    monkeypatch.setenv("CXR_MSN_UPLOAD_TIMEOUT_S", "600")
    with pytest.raises(ValueError, match="request timeout"):
        UploadSettings.from_env()
    monkeypatch.setenv("CXR_MSN_UPLOAD_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="CXR_MSN_UPLOAD_TIMEOUT_S"):
        UploadSettings.from_env()
    monkeypatch.delenv("CXR_MSN_UPLOAD_TIMEOUT_S")
    monkeypatch.setenv("CXR_MSN_MAX_CONCURRENCY", "0.5")
    with pytest.raises(ValueError, match="CXR_MSN_MAX_CONCURRENCY must be a whole number"):
        UploadSettings.from_env()
