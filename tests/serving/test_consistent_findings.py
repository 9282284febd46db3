"""Issue 20 item 4: No Finding is never positive together with a finding, on every surface.

The rule lives in ``serving.predictor.consistent_findings``; the JSON result, the SR, the CLI
and /ui all report its decision. The test repository's thresholds put Cardiomegaly and No
Finding over theirs on every image; with the validity gate removed from the manifest both are
eligible, so every image shows the contradiction the rule resolves.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from cxrmsn.labels import LABELS
from serving import dicom_output
from serving.predictor import NO_FINDING, Predictor, consistent_findings, load_predictor
from serving.schemas import PredictResponse
from tests.helpers import chest_like_picture, make_dicom, to_png
from tests.serving.conftest import RunningServer, start_server, stop_server
from tests.serving.test_commands import cxr_msn
from tests.serving.test_dicom_output import text_values

THRESHOLDS = dict.fromkeys(LABELS, 0.5)


def probabilities(**high: float) -> dict[str, float]:
    values = dict.fromkeys(LABELS, 0.1)
    values.update({label.replace("_", " "): p for label, p in high.items()})
    return values


def test_no_finding_alone_stays_positive() -> None:
    decided = consistent_findings(LABELS, probabilities(No_Finding=0.9), THRESHOLDS)
    assert decided.positive == [NO_FINDING] and decided.overruled == {} and decided.warnings == []


def test_a_positive_finding_overrules_no_finding_with_a_warning() -> None:
    decided = consistent_findings(
        LABELS, probabilities(No_Finding=0.9, Cardiomegaly=0.6, Edema=0.7), THRESHOLDS
    )
    assert decided.positive == ["Cardiomegaly", "Edema"]
    (reason,) = decided.warnings
    assert decided.overruled == {NO_FINDING: reason}
    assert "Cardiomegaly, Edema are positive" in reason and "0.900 >= 0.500" in reason


def test_support_devices_do_not_contradict_no_finding() -> None:
    decided = consistent_findings(LABELS, probabilities(No_Finding=0.9, Support_Devices=0.8), THRESHOLDS)
    assert decided.positive == ["Support Devices", NO_FINDING] and decided.overruled == {}


def test_only_trained_validated_findings_overrule_no_finding() -> None:
    high = probabilities(No_Finding=0.9, Fracture=0.99)
    decided = consistent_findings(LABELS, high, THRESHOLDS, never=["Fracture"])
    assert decided.positive == [NO_FINDING] and decided.overruled == {}
    no_threshold = {label: t for label, t in THRESHOLDS.items() if label != "Fracture"}
    assert consistent_findings(LABELS, high, no_threshold).positive == [NO_FINDING]


def test_a_finding_under_threshold_and_no_finding_under_threshold() -> None:
    decided = consistent_findings(LABELS, probabilities(Cardiomegaly=0.6), THRESHOLDS)
    assert decided.positive == ["Cardiomegaly"] and decided.overruled == {}
    assert consistent_findings(LABELS, probabilities(), THRESHOLDS).positive == []


@pytest.fixture(scope="module")
def ungated_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test repository without its validity gate: Cardiomegaly and No Finding both eligible."""
    copy = tmp_path_factory.mktemp("ungated") / "model_repository"
    shutil.copytree(model_repository, copy)
    values = json.loads((copy / "manifest.json").read_text())
    values.pop("validity_gate")
    (copy / "manifest.json").write_text(json.dumps(values))
    return copy


@pytest.fixture(scope="module")
def predictor(ungated_repository: Path) -> Predictor:
    return load_predictor(ungated_repository, backend="onnxruntime", variant=None)


def predict(predictor: Predictor, data: bytes) -> tuple[Any, np.ndarray, dict[str, Any]]:
    prepared = predictor.prepare(data)
    probs, attention = predictor.infer(prepared.model_input[None])
    return prepared, attention[0], predictor.result(prepared, probs[0], attention[0], overlay=False)


def assert_resolved(result: dict[str, Any]) -> None:
    assert result["probabilities"][NO_FINDING] >= 0.0  # over its threshold of 0
    assert result["positive"] == ["Cardiomegaly"]
    assert set(result["overruled"]) == {NO_FINDING}
    assert result["overruled"][NO_FINDING] in result["warnings"]
    assert "Cardiomegaly is positive" in result["overruled"][NO_FINDING]


def test_the_json_result_reports_the_rule(predictor: Predictor) -> None:
    assert predictor.positive_labels(dict.fromkeys(LABELS, 0.99)) == ["Cardiomegaly", NO_FINDING]
    _, _, result = predict(predictor, to_png(chest_like_picture(200, 180, seed=4)))
    assert_resolved(result)
    validated = PredictResponse.model_validate(result).model_dump()
    assert validated["positive"] == ["Cardiomegaly"] and NO_FINDING in validated["overruled"]


def test_the_sr_reports_the_predictors_decision(predictor: Predictor) -> None:
    data = make_dicom(chest_like_picture(200, 180, seed=5))
    prepared, attention, result = predict(predictor, data)
    assert_resolved(result)
    sr = predictor.dicom_outputs(prepared, attention, result, dicom_output.read_source(data), parts=("sr",))
    report = hd.sr.srread(sr["sr"]).content
    assert isinstance(report, hd.sr.MeasurementReport)
    present = {}
    for label in ("Cardiomegaly", NO_FINDING):
        (group,) = report.get_image_measurement_groups(finding_type=dicom_output.LABEL_CODES[label])
        (evaluation,) = group.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)
        present[label] = evaluation.value
        notes = " ".join(text_values(group))
        if label == NO_FINDING:
            assert "reported as not present" in notes and "Cardiomegaly is positive" in notes
        else:
            assert "reported as not present" not in notes
    assert present == {"Cardiomegaly": codes.SCT.Yes, NO_FINDING: codes.SCT.No}


def test_the_cli_reports_the_rule(ungated_repository: Path, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(to_png(chest_like_picture(200, 180, seed=6)))
    table = cxr_msn("predict", str(image), "--repository", str(ungated_repository), "--format", "csv")
    assert table.returncode == 0, table.stderr
    (row,) = csv.DictReader(io.StringIO(table.stdout))
    assert row["positive"] == "Cardiomegaly"
    assert f"note: {image}: No Finding not positive:" in table.stderr
    records = cxr_msn("predict", str(image), "--repository", str(ungated_repository), "--format", "json")
    assert records.returncode == 0, records.stderr
    assert_resolved(json.loads(records.stdout))


@pytest.fixture(scope="module")
def ungated_server(
    ungated_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    running = start_server(ungated_repository, tmp_path_factory.mktemp("ungated-server") / "server.log")
    yield running
    stop_server(running)


@pytest.mark.slow
def test_the_api_and_ui_report_the_rule(chromium: Any, ungated_server: RunningServer, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(to_png(chest_like_picture(200, 180, seed=7)))
    with httpx.Client(base_url=ungated_server.url, timeout=60) as client:
        api = client.post("/predict", files={"file": ("a.png", image.read_bytes())}).json()
        batch = client.post("/predict_batch", files=[("files", ("a.png", image.read_bytes()))]).json()
    assert_resolved(api)
    assert_resolved(batch["results"][0]["result"])
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{ungated_server.url}/ui")
        page.wait_for_selector("body[data-model=ready]")
        page.set_input_files("#file-input", str(image))
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        rows = page.eval_on_selector_all(
            "#findings li",
            """rows => rows.map(row => ({label: row.dataset.label, classes: [...row.classList],
                badge: row.querySelector('.badge') ? row.querySelector('.badge').textContent : null,
                title: row.querySelector('.badge') ? row.querySelector('.badge').title : null}))""",
        )
        warnings = page.eval_on_selector_all("#warnings li", "items => items.map(item => item.textContent)")
    finally:
        context.close()
    by_label = {row["label"]: row for row in rows}
    assert [row["label"] for row in rows if "positive" in row["classes"]] == ["Cardiomegaly"]
    no_finding = by_label[NO_FINDING]
    assert "overruled" in no_finding["classes"] and no_finding["badge"] == "overruled"
    assert no_finding["title"] == api["overruled"][NO_FINDING]
    assert api["overruled"][NO_FINDING] in warnings
