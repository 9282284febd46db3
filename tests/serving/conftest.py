"""A small randomly initialised model exported to a temporary repository, and a real
`bentoml serve` process serving it on a free loopback port (``serving.devserver``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.devserver import RunningServer, free_port, launch, start_server, stop_server
from tests.serving.repository import export_test_repository

__all__ = ["REPO_ROOT", "RunningServer", "free_port", "launch", "start_server", "stop_server"]

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_test_repository(tmp_path_factory.mktemp("repository"))


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
