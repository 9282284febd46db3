"""A small randomly initialised model exported to a temporary repository, and a real
`bentoml serve` process serving it on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serving.repository import export_test_repository

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_test_repository(tmp_path_factory.mktemp("repository"))


def start_server(repository: Path, log_path: Path, *, verbose: bool = False, **env: str) -> RunningServer:
    environment = {"MODEL_REPOSITORY": str(repository), "CXR_MSN_ORT_THREADS": "2", **env}
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "serve", "serving.service:CXRService", *(["--verbose"] if verbose else [])]
    return launch(command, log_path, environment, name="bentoml serve", ready_s=90)


def launch(
    command: list[str], log_path: Path, env: dict[str, str], *, name: str, ready_s: float
) -> RunningServer:
    """Start ``command --host 127.0.0.1 --port PORT`` on a free port (its own BENTOML_HOME
    beside the log unless ``env`` names one) and wait for /readyz."""
    port = free_port()
    environment = {
        **os.environ,
        "BENTOML_HOME": str(log_path.parent / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "true",
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"{name} did not become ready:\n{server.log()[-3000:]}")


def stop_server(server: RunningServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    running = start_server(model_repository, log_path, CXR_MSN_MAX_UPLOAD_BYTES=str(12 * 1024 * 1024))
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
