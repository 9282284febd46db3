"""metrics.json's typed record: every writer's file reads back as it was written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.run_metrics import run_metrics
from training.downstream.pixels import pixel_baseline
from training.downstream.run_metrics import VERSION, RunMetrics


def test_a_written_file_reads_back_unchanged_and_unversioned_files_still_read(
    manifest: Path, tmp_path: Path
) -> None:
    returned = pixel_baseline(manifest, tmp_path / "pixels")
    written = json.loads((tmp_path / "pixels" / "metrics.json").read_text())
    assert written == returned and written["version"] == VERSION
    record = RunMetrics.read(tmp_path / "pixels")
    assert record.to_json() == written
    assert record.protocol == "pixels" and record.details["method"].startswith("StandardScaler")
    assert record.macro("test") == written["test"]["macro"]
    # a file from before the version key: the same shape, read as version 1
    del written["version"]
    assert RunMetrics.from_json(written).to_json() == returned


@pytest.mark.parametrize("version", [0, 2, "1", True])
def test_an_unknown_version_is_refused(version: object) -> None:
    values = {**run_metrics(["Cardiomegaly"], {"Cardiomegaly": 0.4}, separable=[]), "version": version}
    with pytest.raises(ValueError, match="this code reads version 1"):
        RunMetrics.from_json(values)


def test_a_file_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="protocol must be one of"):
        RunMetrics.from_json({"protocol": "pretrain", "trained_labels": []})
    with pytest.raises(ValueError, match="no 'protocol'"):
        RunMetrics.from_json({"test": {}})
    with pytest.raises(ValueError, match=r"metrics\.json does not exist"):
        RunMetrics.read(tmp_path)


def test_the_saved_threshold_comes_from_the_run_or_from_the_classifier_it_applied() -> None:
    own = RunMetrics.from_json(run_metrics(["Cardiomegaly"], {"Cardiomegaly": 0.4}, separable=[]))
    assert own.threshold("Cardiomegaly") == 0.4 and own.threshold("Edema") is None
    external = RunMetrics(
        protocol="external", trained_labels=["Edema"], classifier={"thresholds": {"Edema": 0.3}}
    )
    assert external.threshold("Edema") == 0.3 and external.threshold("Cardiomegaly") is None
    with pytest.raises(ValueError, match=r"external run's metrics\.json has no 'valid'"):
        external.split("valid")


def test_details_cannot_shadow_a_named_field() -> None:
    with pytest.raises(ValueError, match="details repeat named fields"):
        RunMetrics(protocol="linear", trained_labels=[], details={"test": {}})
    merged = RunMetrics(protocol="linear", trained_labels=[]).merged({"selected_run": "a", "lr": 1})
    assert merged.selected_run == "a" and merged.details == {"lr": 1}
