"""A local ``bentoml serve`` for tests and screenshot recipes, and the system Chromium.

``start_server`` runs the service from this source tree on a free loopback port, in its own
process group and BENTOML_HOME, and waits for ``/readyz``; ``stop_server`` ends the group.
``find_chromium`` and ``CHROMIUM_FLAGS``: the headless Chromium the /ui tests and the
screenshot recipes drive with Playwright (offline machines: never Playwright's download).
Not used by the service itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the directory that holds serving/
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def find_chromium() -> str | None:
    """``CXR_MSN_CHROMIUM``, else the first of chromium, chromium-browser, google-chrome on PATH."""
    configured = os.environ.get("CXR_MSN_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


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


def start_server(repository: Path, log_path: Path, *, verbose: bool = False, **env: str) -> RunningServer:
    """``bentoml serve`` of ``repository`` (two ONNX Runtime threads unless ``env`` says otherwise)."""
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
            cwd=SOURCE_ROOT,
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
    stop_process_group(server.process)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """End a process started with ``start_new_session`` and its children: SIGTERM, then
    SIGKILL after 20 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
