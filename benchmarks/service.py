"""The service end to end over HTTP: a real `bentoml serve`, concurrent clients on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def bench_service(
    suite: Any, repository: Path, files: dict[str, list[bytes]], arch: str, *, quick: bool
) -> None:
    rounds = 3 if quick else 5
    kinds: list[tuple[str, str, tuple[int, ...]]] = [
        ("png", "PNG", (1, 4, 8)),
        ("dicom uncompressed", "DICOM", (1, 4, 8)),
    ]
    if "dicom jpeg2000 2048x2500" in files:  # issue 18: within 20 % of PNG once decoding is reduced
        kinds.append(("dicom jpeg2000 2048x2500", "DICOM JPEG 2000 2048x2500", (1, 8)))
    with _Server(repository) as url:
        for kind, label, concurrencies in kinds:
            for concurrency in concurrencies:
                rates, p50s, p99s = [], [], []
                requests = 16 if kind == "png" else 8
                asyncio.run(_round(url, files[kind], concurrency, requests))  # warm-up
                for _ in range(rounds):
                    rate, latencies = asyncio.run(_round(url, files[kind], concurrency, requests))
                    rates.append(rate)
                    ordered = sorted(latencies)
                    p50s.append(ordered[len(ordered) // 2] * 1000)
                    p99s.append(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000)
                name = f"service {arch} fp32 {label} concurrency {concurrency}"
                suite.add(name, "images/s", rates)
                suite.add(f"  {name} p50", "ms", p50s)
                suite.add(f"  {name} p99", "ms", p99s)


async def _round(url: str, blobs: list[bytes], concurrency: int, requests: int) -> tuple[float, list[float]]:
    import httpx

    latencies: list[float] = []
    queue = list(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            index = queue.pop()
            started = time.perf_counter()
            response = await http.post("/predict", files={"file": ("x", blobs[index % len(blobs)])})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return requests / (time.perf_counter() - started), latencies


class _Server:
    def __init__(self, repository: Path) -> None:
        self.repository = repository

    def __enter__(self) -> str:
        import httpx

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        home = tempfile.mkdtemp(prefix="bentoml-home-")
        env = {**os.environ, "MODEL_REPOSITORY": str(self.repository), "BENTOML_HOME": home}
        self.log = open(Path(home) / "server.log", "wb")
        command = [str(Path(sys.executable).with_name("bentoml")), "serve", "serving.service:CXRService",
                   "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        for _ in range(180):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("the service did not become ready")

    def __exit__(self, *_: object) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        self.log.close()
