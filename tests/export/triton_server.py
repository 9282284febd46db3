"""A real Triton server for the tests: the nvidia-pytriton wheel's binary on CPU.

``triton_install()`` builds (once, cached, under a file lock) a virtual environment
from requirements/triton-python.txt in ``.cache/triton-venv`` (or
``$CXR_MSN_TRITON_VENV``) and puts the python backend stub where the backend looks
for it. ``running_server()`` starts ``tritonserver`` on free loopback ports with only
the named models loaded, waits until it is ready and stops it by its process id.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "requirements" / "triton-python.txt"
DEFAULT_VENV = REPO_ROOT / ".cache" / "triton-venv"
INSTALL_TIMEOUT_S = 500  # under pytest-timeout (600 s), so a slow index skips instead of failing
READY_TIMEOUT_S = 60
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


@dataclass(frozen=True)
class TritonInstall:
    venv: Path
    server: Path  # the tritonserver binary
    backends: Path
    caches: Path
    library_path: str  # LD_LIBRARY_PATH for the server and its python stub


@dataclass(frozen=True)
class RunningServer:
    pid: int
    http_url: str  # host:port, as tritonclient wants it
    grpc_url: str
    log: Path


def triton_install() -> TritonInstall | str:
    """The install, or the reason why it cannot be had here (for pytest.skip)."""
    venv = Path(os.environ.get("CXR_MSN_TRITON_VENV", DEFAULT_VENV))
    venv.parent.mkdir(parents=True, exist_ok=True)
    stamp = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = venv / ".installed"
        if not (marker.is_file() and marker.read_text() == stamp):
            reason = _install(venv)
            if reason:
                return reason
            marker.write_text(stamp)
    return _locate(venv)


def _install(venv: Path) -> str | None:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    command = [
        str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--only-binary=:all:", "-r", str(REQUIREMENTS),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"installing {REQUIREMENTS.name} took over {INSTALL_TIMEOUT_S} s (no package index?)"
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return f"nvidia-pytriton could not be installed from the package index: {' | '.join(tail)}"
    return None


def _locate(venv: Path) -> TritonInstall:
    python = venv / "bin" / "python"
    query = (
        "import sysconfig, site; print(sysconfig.get_config_var('LIBDIR')); print(site.getsitepackages()[0])"
    )
    libdir, site_packages = subprocess.run(
        [str(python), "-c", query], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    root = Path(site_packages) / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "backends" / "python" / "triton_python_backend_stub"
    if not stub.is_file():
        shutil.copy2(root / "python_backend_stubs" / version / "triton_python_backend_stub", stub)
    libraries = [libdir, str(Path(site_packages) / "nvidia_pytriton.libs")]
    return TritonInstall(
        venv=venv,
        server=root / "bin" / "tritonserver",
        backends=root / "backends",
        caches=root / "caches",
        library_path=os.pathsep.join(libraries),
    )


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def running_server(
    install: TritonInstall, repository: Path, models: list[str], log: Path
) -> Iterator[RunningServer]:
    http, grpc, metrics = free_ports(3)
    command = [
        str(install.server),
        f"--model-repository={repository}",
        f"--backend-directory={install.backends}",
        f"--cache-directory={install.caches}",
        "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in models),
        "--http-address=127.0.0.1", f"--http-port={http}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics}",
    ]  # fmt: skip
    environment = {
        **os.environ,
        "PATH": f"{install.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "LD_LIBRARY_PATH": install.library_path,
    }
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)
    try:
        _wait_until_ready(process, f"http://127.0.0.1:{http}/v2/health/ready", log)
        yield RunningServer(process.pid, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", log)
    finally:
        _stop(process)


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with _NO_PROXY.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"tritonserver was not ready within {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by pid (Triton unloads models and exits), SIGKILL if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
