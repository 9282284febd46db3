"""The per-label validity gate: from a run's validation metrics to ``manifest.json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cxrmsn.checkpoint import CheckpointMetadata
from cxrmsn.repository import GATE_EVALUATED, GATE_NOT_EVALUATED, ValidityGate, read_manifest
from export.validity import build_gate, evaluate_gate
from tests.export.conftest import save_classifier
from tests.run_metrics import run_metrics, write_run_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINED = ["Cardiomegaly", "Pleural Effusion", "Edema", "No Finding"]
THRESHOLDS = {"Cardiomegaly": 0.4, "Pleural Effusion": 0.5, "Edema": 0.5, "No Finding": 0.6}
# Lower CI bounds with these settings: Cardiomegaly 0.70, Pleural Effusion 0.54, No Finding 0.47;
# Edema has no positive in validation (no estimate).
SEPARABLE = ["Cardiomegaly", "Pleural Effusion"]


def metrics(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"separable": SEPARABLE, "no_positives": ["Edema"], **overrides}
    return run_metrics(TRAINED, THRESHOLDS, **settings)


def lower_bounds(values: dict[str, Any]) -> dict[str, float]:
    per_label = values["valid"]["per_label"]
    return {label: per_label[label]["auroc"]["ci"][0] for label in TRAINED if per_label[label]["auroc"]}


def gate_at(floor: float, values: dict[str, Any] | None = None) -> ValidityGate:
    values = values or metrics()
    return evaluate_gate(
        TRAINED, values["valid"], ci_level=0.95, min_auroc_lower_bound=floor, source={"kind": "test"}
    )


def metadata(**overrides: Any) -> CheckpointMetadata:
    values: dict[str, Any] = {"trained_labels": TRAINED, "thresholds": THRESHOLDS, **overrides}
    return CheckpointMetadata(architecture="vit_nano_patch16_224", **values)


def test_a_label_whose_lower_bound_is_not_above_the_floor_is_not_validated() -> None:
    values = metrics()
    bounds = lower_bounds(values)
    assert bounds["No Finding"] <= 0.5 < bounds["Pleural Effusion"] < bounds["Cardiomegaly"]
    gate = gate_at(0.5, values)
    assert gate.status == GATE_EVALUATED and gate.split == "valid" and gate.images == 80
    assert gate.not_validated_labels == ["Edema", "No Finding"]
    assert gate.auroc_lower_bounds == {**bounds, "Edema": None}
    assert "no positives in the valid split" in gate.reasons["Edema"]
    assert "lower bound not above 0.5" in gate.reasons["No Finding"]
    assert set(gate.reasons) == {"Edema", "No Finding"}


@pytest.mark.parametrize(
    ("floor", "not_validated"),
    [
        (0.0, ["Edema"]),  # a label without an estimate is never validated
        (0.5, ["Edema", "No Finding"]),
        ("Pleural Effusion", ["Pleural Effusion", "Edema", "No Finding"]),  # equal is not above
        (0.69, ["Pleural Effusion", "Edema", "No Finding"]),
        (0.99, TRAINED),
    ],
)
def test_the_floor_is_a_strict_lower_limit(floor: float | str, not_validated: list[str]) -> None:
    values = metrics()
    limit = lower_bounds(values)[floor] if isinstance(floor, str) else floor
    assert gate_at(limit, values).not_validated_labels == not_validated


def test_without_validation_cis_every_trained_label_is_not_validated(tmp_path: Path) -> None:
    gate = build_gate(metadata(), tmp_path / "c.safetensors", run_metrics=None, min_auroc_lower_bound=0.5)
    assert gate.status == GATE_NOT_EVALUATED and gate.not_validated_labels == TRAINED
    assert gate.reason is not None and "--run-metrics" in gate.reason
    assert gate.auroc_lower_bounds == dict.fromkeys(TRAINED)
    untrained = build_gate(
        metadata(trained_labels=[], thresholds={}), tmp_path / "c.safetensors", run_metrics=None,
        min_auroc_lower_bound=0.5,
    )  # fmt: skip
    assert untrained.status == GATE_NOT_EVALUATED and untrained.not_validated_labels == []


def test_cis_narrower_than_95_percent_do_not_validate(tmp_path: Path) -> None:
    write_run_metrics(tmp_path / "metrics.json", metrics(level=0.9))
    gate = build_gate(metadata(), tmp_path / "c.safetensors", run_metrics=None, min_auroc_lower_bound=0.5)
    assert gate.status == GATE_NOT_EVALUATED and gate.not_validated_labels == TRAINED
    assert gate.ci_level == 0.9 and "90%" in (gate.reason or "")


def test_where_the_validation_metrics_come_from(tmp_path: Path) -> None:
    beside = write_run_metrics(tmp_path / "metrics.json", metrics())
    checkpoint = tmp_path / "c.safetensors"
    gate = build_gate(metadata(), checkpoint, run_metrics=None, min_auroc_lower_bound=0.5)
    assert gate.source["kind"] == "metrics.json next to the checkpoint" and gate.source["path"] == str(beside)
    assert gate.not_validated_labels == ["Edema", "No Finding"]

    # An explicit --run-metrics wins over the file beside the checkpoint.
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    all_separable = metrics(separable=["Cardiomegaly", "Pleural Effusion", "No Finding"])
    explicit = write_run_metrics(elsewhere / "metrics.json", all_separable)
    gate = build_gate(metadata(), checkpoint, run_metrics=explicit, min_auroc_lower_bound=0.5)
    assert gate.source["kind"] == "--run-metrics" and gate.not_validated_labels == ["Edema"]

    # Per-label validation metrics in the checkpoint itself win over the file beside it.
    own = {"bootstrap": all_separable["valid"]["bootstrap"], "valid": all_separable["valid"]}
    gate = build_gate(metadata(metrics=own), checkpoint, run_metrics=None, min_auroc_lower_bound=0.5)
    assert gate.source == {"kind": "checkpoint metadata"} and gate.not_validated_labels == ["Edema"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trained_labels": ["Cardiomegaly"]}, "trained labels"),
        ({"thresholds": {label: {"value": 0.1} for label in TRAINED}}, "thresholds differ"),
    ],
)
def test_a_metrics_json_of_another_run_is_refused(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    write_run_metrics(tmp_path / "metrics.json", {**metrics(), **change})
    with pytest.raises(ValueError, match=f"not from the run that wrote this checkpoint.*{message}"):
        build_gate(metadata(), tmp_path / "c.safetensors", run_metrics=None, min_auroc_lower_bound=0.5)


def test_export_writes_the_gate_with_the_floor_it_was_given(tmp_path: Path) -> None:
    checkpoint = save_classifier(tmp_path / "classifier.safetensors")
    # save_classifier writes an untrained head; give it the trained labels of the run's metrics.
    from cxrmsn.checkpoint import load_checkpoint, save_checkpoint

    state, _ = load_checkpoint(checkpoint)
    save_checkpoint(checkpoint, state, metadata())
    values = write_run_metrics(tmp_path / "metrics.json", metrics())
    bounds = lower_bounds(json.loads(values.read_text()))
    assert 0.5 < bounds["Pleural Effusion"] <= 0.6  # validated at the default floor, not at 0.6
    out = tmp_path / "model_repository"
    command = [sys.executable, "-m", "export", str(checkpoint), "--out", str(out), "--variants", "fp32"]
    result = subprocess.run(
        [*command, "--ort-optimised", "never", "--min-auroc-lower-bound", "0.6"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "not validated (evaluated): Pleural Effusion, Edema, No Finding" in result.stdout
    gate = read_manifest(out).validity_gate
    assert gate is not None and gate.min_auroc_lower_bound == 0.6 and gate.ci_level == 0.95
    assert gate.not_validated_labels == ["Pleural Effusion", "Edema", "No Finding"]
    assert gate.auroc_lower_bounds == {**bounds, "Edema": None}
    assert gate.source["sha256"] and gate.source["path"] == str(values)
    written = json.loads((out / "manifest.json").read_text())["validity_gate"]
    assert written["not_validated_labels"] == gate.not_validated_labels and written["split"] == "valid"


def test_export_refuses_a_floor_outside_0_to_1(tmp_path: Path) -> None:
    checkpoint = save_classifier(tmp_path / "classifier.safetensors")
    command = [sys.executable, "-m", "export", str(checkpoint), "--out", str(tmp_path / "out")]
    result = subprocess.run(
        [*command, "--min-auroc-lower-bound", "1.0"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2 and "min_auroc_lower_bound must be in [0, 1)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_label_with_fewer_than_five_cases_of_a_class_is_not_validated_whatever_its_ci() -> None:
    values = metrics()
    entry = values["valid"]["per_label"]["Cardiomegaly"]
    assert entry["auroc"]["ci"][0] > 0.5  # validated on its CI
    entry["positives"] = 4
    gate = gate_at(0.5, values)
    assert "Cardiomegaly" in gate.not_validated_labels
    assert "fewer than 5 of a class" in gate.reasons["Cardiomegaly"]
