"""Shared generated inputs: one data set and one nano encoder per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.downstream.fixtures import write_dataset, write_encoder


@pytest.fixture(scope="session")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("downstream-data"))


@pytest.fixture(scope="session")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_encoder(tmp_path_factory.mktemp("encoder") / "encoder.safetensors")
