"""The real BentoML service over HTTP: `bentoml serve` on a free loopback port."""

from __future__ import annotations

import base64
import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cxrmsn.imaging import decode
from cxrmsn.labels import LABELS
from cxrmsn.preprocess import preprocess
from tests.bad_inputs import bad_inputs
from tests.helpers import SHARED_DATA, chest_like_picture, make_dicom, requires_shared_data, to_png
from tests.serving.conftest import RunningServer
from tests.serving.repository import NOT_VALIDATED, THRESHOLDS, TRAINED, VALIDATED

PICTURE = chest_like_picture(256, 240)
MARKER = "ZZMARKER7731"


def post(client: httpx.Client, data: bytes, name: str = "upload.bin", **params: str) -> httpx.Response:
    return client.post("/predict", files={"file": (name, data)}, data=params)


def direct_probabilities(repository: Path, data: bytes) -> np.ndarray:
    session = ort.InferenceSession(str(repository / "cxr_msn" / "1" / "model.onnx"))
    model_input = preprocess(decode(data).pixels)[None]
    probabilities: np.ndarray = session.run(["probabilities"], {"image": model_input})[0][0]
    return probabilities


def assert_good_result(body: dict[str, Any], fmt: str) -> None:
    assert body["labels"] == list(LABELS)
    assert set(body["probabilities"]) == set(LABELS)
    assert all(0.0 < p < 1.0 for p in body["probabilities"].values())
    values = np.asarray(body["attention"]["values"])
    assert body["attention"]["shape"] == [14, 14] and values.shape == (14, 14)
    assert values.sum() == pytest.approx(1.0, abs=1e-4) and values.min() >= 0
    assert body["input"]["format"] == fmt
    assert body["model"]["sha256"] and body["model"]["variant"] == "fp32"


def test_png_prediction_matches_onnx_runtime_run_directly(
    client: httpx.Client, model_repository: Path
) -> None:
    data = to_png(PICTURE)
    response = post(client, data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_good_result(body, "png")
    served = np.array([body["probabilities"][label] for label in LABELS])
    np.testing.assert_allclose(served, direct_probabilities(model_repository, data), atol=1e-5)


def test_positive_labels_follow_thresholds_and_training_signal(client: httpx.Client) -> None:
    body = post(client, to_png(PICTURE)).json()
    # Thresholds: Cardiomegaly 0 and No Finding 0 (trained; No Finding not validated), Pleural
    # Effusion 1, Edema 0 (untrained).
    assert body["positive"] == ["Cardiomegaly"]
    assert "Edema" in body["model"]["untrained_labels"]
    assert any("no training signal" in warning for warning in body["warnings"])


def test_not_validated_labels_are_listed_and_never_positive(client: httpx.Client) -> None:
    single = post(client, to_png(PICTURE)).json()
    batch = client.post("/predict_batch", files=[("files", ("a.png", to_png(PICTURE)))]).json()
    for body in (single, batch["results"][0]["result"]):
        assert body["model"]["not_validated_labels"] == NOT_VALIDATED == ["No Finding"]
        # Over its threshold of 0 on every image, trained, and still not positive.
        assert body["probabilities"]["No Finding"] >= THRESHOLDS["No Finding"]
        assert "No Finding" in body["model"]["trained_labels"] and "No Finding" not in body["positive"]
        [warning] = [w for w in body["warnings"] if w.startswith("not validated")]
        assert "No Finding" in warning and "above 0.5" in warning
        assert not any(label in warning for label in VALIDATED)


def test_png_and_dicom_of_one_picture_give_the_same_probabilities(client: httpx.Client) -> None:
    png = post(client, to_png(PICTURE)).json()
    dicom = post(client, make_dicom(PICTURE, PatientName=f"{MARKER}^NAME", PatientID=MARKER)).json()
    assert dicom["input"]["format"] == "dicom" and dicom["input"]["modality"] == "DX"
    for label in LABELS:
        assert abs(png["probabilities"][label] - dicom["probabilities"][label]) <= 1e-3


def test_patient_identifiers_never_reach_responses_or_logs(
    client: httpx.Client, server: RunningServer
) -> None:
    data = make_dicom(
        PICTURE,
        PatientName=f"{MARKER}^NAME",
        PatientID=MARKER,
        PatientBirthDate="19010101",
        AccessionNumber=MARKER,
        InstitutionName=MARKER,
    )
    good = post(client, data, name=f"{MARKER}.dcm", overlay="true")
    bad = post(client, data[:-300], name=f"{MARKER}.dcm")
    batch = client.post("/predict_batch", files=[("files", (f"{MARKER}.dcm", data))])
    assert good.status_code == 200 and bad.status_code == 400 and batch.status_code == 200
    for response in (good, bad, batch):
        assert MARKER not in response.text and "19010101" not in response.text
    metrics = client.get("/metrics").text
    assert MARKER not in metrics
    assert MARKER not in server.log()


def test_overlay_is_a_png_of_the_models_view(client: httpx.Client) -> None:
    body = post(client, to_png(PICTURE), overlay="true").json()
    image = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (448, 448)
    assert post(client, to_png(PICTURE)).json()["overlay_png_base64"] is None


@pytest.mark.parametrize(("name", "data", "status", "code"), bad_inputs(), ids=[c[0] for c in bad_inputs()])
def test_bad_inputs_get_their_documented_4xx(
    client: httpx.Client, name: str, data: bytes, status: int, code: str
) -> None:
    response = post(client, data)
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    if status:
        assert response.status_code == status, body
    else:
        assert 400 <= response.status_code < 500, body
    if code:
        assert body["error"] == code
    assert post(client, to_png(PICTURE)).status_code == 200  # still serving correctly


def test_oversize_upload_is_refused_with_413(client: httpx.Client) -> None:
    response = post(client, b"\x00" * (13 * 1024 * 1024))
    assert response.status_code == 413
    assert response.json()["error"] == "upload_too_large"
    assert post(client, to_png(PICTURE)).status_code == 200


def test_sixteen_concurrent_requests_are_all_answered_correctly(
    client: httpx.Client, model_repository: Path
) -> None:
    pictures = [to_png(chest_like_picture(128, 128, seed=seed)) for seed in range(16)]

    def predict(data: bytes) -> dict[str, Any]:
        with httpx.Client(base_url=str(client.base_url), timeout=120) as own:
            response = post(own, data)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

    with ThreadPoolExecutor(max_workers=16) as pool:
        bodies = list(pool.map(predict, pictures))
    for data, body in zip(pictures, bodies, strict=True):
        served = np.array([body["probabilities"][label] for label in LABELS])
        np.testing.assert_allclose(served, direct_probabilities(model_repository, data), atol=1e-5)


def test_batch_endpoint_answers_each_file_in_order(client: httpx.Client) -> None:
    files = [
        ("files", ("a.png", to_png(PICTURE))),
        ("files", ("b.gif", b"GIF89a" + b"\x00" * 30)),
        ("files", ("c.dcm", make_dicom(PICTURE))),
    ]
    response = client.post("/predict_batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [item["index"] for item in results] == [0, 1, 2]
    assert [item["status"] for item in results] == [200, 415, 200]
    assert results[1]["error"]["error"] == "unsupported_format" and results[1]["result"] is None
    assert_good_result(results[0]["result"], "png")
    assert_good_result(results[2]["result"], "dicom")


def test_model_endpoint_describes_the_served_model(client: httpx.Client, model_repository: Path) -> None:
    card = client.get("/model").json()
    manifest = json.loads((model_repository / "manifest.json").read_text())
    assert card["labels"] == list(LABELS)
    assert card["sha256"] == manifest["models"]["fp32"]["sha256"]
    assert card["thresholds"]["Cardiomegaly"] == 0.0
    assert card["not_validated_labels"] == NOT_VALIDATED
    gate = card["validity_gate"]
    assert gate["status"] == "evaluated" and gate["split"] == "valid" and gate["ci_level"] == 0.95
    assert gate["min_auroc_lower_bound"] == 0.5 and gate["not_validated_labels"] == NOT_VALIDATED
    assert gate == manifest["validity_gate"]
    bounds = gate["auroc_lower_bounds"]
    assert set(bounds) == set(TRAINED) and set(gate["reasons"]) == set(NOT_VALIDATED)
    assert bounds["No Finding"] <= 0.5 < min(bounds[label] for label in VALIDATED)
    assert card["preprocessing"]["crop"] == 224
    assert "untrained" in card["training_data"]["summary"]


def test_health_metrics_and_openapi(client: httpx.Client) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    post(client, to_png(PICTURE))
    post(client, b"GIF89a" + b"\x00" * 30)
    metrics = client.get("/metrics").text
    assert 'cxr_msn_images_total{format="png"}' in metrics
    assert 'cxr_msn_errors_total{code="unsupported_format"}' in metrics
    assert "cxr_msn_model_latency_seconds_bucket" in metrics
    paths = client.get("/docs.json").json()["paths"]
    assert {"/predict", "/predict_batch", "/model"} <= set(paths)
    assert "get" in paths["/model"]


def test_pydicom_data_chest_cr(client: httpx.Client) -> None:
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    body = post(client, Path(path).read_bytes()).json()
    assert_good_result(body, "dicom")
    assert body["input"]["photometric"] == "MONOCHROME1" and body["input"]["width"] == 1841


def _shared_files() -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    manifest = SHARED_DATA / "dicom" / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as handle:
            for row in csv.DictReader(handle):
                files.append(
                    (SHARED_DATA / "dicom" / row["file"], 200 if row["expected_to_decode"] == "yes" else 400)
                )
    files += [(path, 200) for path in sorted((SHARED_DATA / "png").glob("*.png"))]
    return files


@requires_shared_data
@pytest.mark.parametrize(
    ("path", "status"), _shared_files(), ids=lambda value: getattr(value, "name", str(value))
)
def test_every_shared_file(client: httpx.Client, path: Path, status: int) -> None:
    response = post(client, path.read_bytes())
    assert response.status_code == status, response.text
    if status == 200:
        assert_good_result(response.json(), "dicom" if path.suffix == ".dcm" else "png")
