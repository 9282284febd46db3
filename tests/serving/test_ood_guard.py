"""The out-of-distribution guard as served (issue 20 items 1 and 5): the bundled model refuses
what is not a chest radiograph with 422 ``not_a_chest_radiograph`` on every surface, and
serves real chest films, with the score and the threshold in the result.

Real processes and real files: ``bentoml serve`` on model_repository/ (the bundled model,
exported with the guard), pydicom's test files, ../shared/data's films (skipped without it),
and generated pictures from ``recipes.ood_measure``'s sets.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from cxrmsn.errors import NotAChestRadiographError
from cxrmsn.repository import read_manifest
from recipes.ood_measure import gradient_images, noise_images, text_pages
from serving.predictor import NO_GUARD_WARNING, OOD_FLAGGED, OOD_NO_GUARD, OOD_PASSED, load_predictor
from tests.helpers import SHARED_DATA, chest_like_picture, make_dicom, requires_shared_data, to_png
from tests.serving.conftest import RunningServer, start_server, stop_server
from tests.serving.test_commands import cxr_msn

BUNDLED = Path(__file__).resolve().parents[2] / "model_repository"
CODE = "not_a_chest_radiograph"


def _bundled_guard() -> str | None:
    if not (BUNDLED / "manifest.json").is_file():
        return "no bundled model in model_repository/"
    if read_manifest(BUNDLED).ood_guard is None:
        return "the bundled model was exported without the out-of-distribution guard"
    return None


requires_guard = pytest.mark.skipif(_bundled_guard() is not None, reason=str(_bundled_guard()))


def pydicom_file(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    return Path(path).read_bytes()


def gradient() -> bytes:
    return next(gradient_images(1, np.random.default_rng(0)))  # a colour gradient, score 44 (threshold 13.9)


def noise() -> bytes:
    return next(noise_images(1, np.random.default_rng(0)))  # Gaussian colour noise, score 16


def text_page() -> bytes:
    return next(text_pages(1, np.random.default_rng(0)))  # a rendered form, score 27


@pytest.fixture(scope="module")
def bundled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if reason := _bundled_guard():
        pytest.skip(reason)
    running = start_server(BUNDLED, tmp_path_factory.mktemp("bundled") / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def bundled(bundled_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bundled_server.url, timeout=60) as http:
        yield http


def predict(client: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return client.post("/predict", files={"file": (name, data)})


def assert_refused(response: httpx.Response, *, by_score: bool = True) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == CODE
    if by_score:
        threshold = read_manifest(BUNDLED).ood_guard.threshold  # type: ignore[union-attr]
        assert (
            "out-of-distribution score" in body["detail"] and f"threshold {threshold:.2f}" in body["detail"]
        )
    return body


@requires_guard
@pytest.mark.parametrize(
    ("name", "make"), [("gradient.png", gradient), ("noise.png", noise), ("form.png", text_page)]
)
def test_generated_pictures_that_are_no_radiograph_are_refused(
    bundled: httpx.Client, name: str, make: Any
) -> None:
    assert_refused(predict(bundled, name, make()))


@requires_guard
def test_ct_and_mr_dicoms_are_refused(bundled: httpx.Client) -> None:
    ct = assert_refused(predict(bundled, "ct.dcm", pydicom_file("CT_small.dcm")), by_score=False)
    assert "DICOM Modality is CT" in ct["detail"]
    mr = assert_refused(predict(bundled, "mr.dcm", pydicom_file("MR_small.dcm")))
    assert "DICOM Modality is MR" in mr["detail"]


@requires_guard
def test_a_chest_cr_is_served_with_its_score_and_the_threshold(bundled: httpx.Client) -> None:
    response = predict(bundled, "chest.dcm", pydicom_file("RG1_UNCR.dcm"))
    assert response.status_code == 200, response.text
    ood = response.json()["ood"]
    assert ood["status"] == OOD_PASSED and ood["mode"] == "refuse" and ood["reasons"] == []
    assert 0 < ood["score"] <= ood["threshold"] == read_manifest(BUNDLED).ood_guard.threshold  # type: ignore[union-attr]
    assert ood["score_kind"] == "mahalanobis_cls_embedding"
    card = bundled.get("/model").json()
    assert card["ood_guard"]["threshold"] == ood["threshold"] and card["ood_mode"] == "refuse"


@requires_guard
@requires_shared_data
def test_real_chest_films_from_the_shared_data_are_served(bundled: httpx.Client) -> None:
    films = sorted((SHARED_DATA / "png").glob("*.png"))
    films += [SHARED_DATA / "dicom" / "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"]
    films += [SHARED_DATA / "dicom" / "966_fixed.dcm"]
    for film in films:
        response = predict(bundled, film.name, film.read_bytes())
        assert response.status_code == 200, (film.name, response.text)
        assert response.json()["ood"]["status"] == OOD_PASSED


@requires_guard
def test_predict_batch_refuses_in_the_slot_and_serves_the_others(bundled: httpx.Client) -> None:
    files = [
        ("files", ("chest.dcm", pydicom_file("RG1_UNCR.dcm"))),
        ("files", ("form.png", text_page())),
        ("files", ("ct.dcm", pydicom_file("CT_small.dcm"))),
        ("files", ("gradient.png", gradient())),
    ]
    response = bundled.post("/predict_batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [item["status"] for item in results] == [200, 422, 422, 422]
    assert results[0]["result"]["ood"]["status"] == OOD_PASSED
    assert all(item["error"]["error"] == CODE and item["result"] is None for item in results[1:])


@requires_guard
def test_predict_dicom_gives_no_report_for_a_refused_image(bundled: httpx.Client) -> None:
    for output in ("sr", "both"):
        response = bundled.post(
            "/predict_dicom",
            files={"file": ("ct.dcm", pydicom_file("CT_small.dcm"))},
            data={"output": output},
        )
        assert_refused(response, by_score=False)
        assert response.headers["content-type"].startswith("application/json")
    chest = bundled.post(
        "/predict_dicom", files={"file": ("chest.dcm", pydicom_file("RG1_UNCR.dcm"))}, data={"output": "both"}
    )
    assert chest.status_code == 200 and len(zipfile.ZipFile(io.BytesIO(chest.content)).namelist()) == 2


@requires_guard
def test_refusals_are_counted_in_the_metrics(bundled: httpx.Client) -> None:
    predict(bundled, "form.png", text_page())
    metrics = bundled.get("/metrics").text
    assert f'code="{CODE}"' in metrics


@requires_guard
def test_warn_mode_serves_the_image_with_a_warning(tmp_path: Path) -> None:
    server = start_server(BUNDLED, tmp_path / "server.log", CXR_MSN_OOD="warn")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            response = predict(client, "gradient.png", gradient())
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["ood"]["status"] == OOD_FLAGGED and body["ood"]["mode"] == "warn"
            assert body["ood"]["score"] > body["ood"]["threshold"]
            assert body["warnings"][0].startswith("not taken for a chest radiograph")
            assert "CXR_MSN_OOD=warn" in body["warnings"][0]
            # A PACS report carries no warnings: no DICOM output for a flagged image, even here.
            refused = client.post("/predict_dicom", files={"file": ("ct.dcm", pydicom_file("CT_small.dcm"))})
            assert refused.status_code == 422 and refused.json()["error"] == CODE
            assert "CXR_MSN_OOD=warn serves it as JSON only" in refused.json()["detail"]
    finally:
        stop_server(server)


@requires_guard
def test_cli_reports_refusals_and_predicts_the_rest(tmp_path: Path) -> None:
    (tmp_path / "chest.dcm").write_bytes(pydicom_file("RG1_UNCR.dcm"))
    (tmp_path / "form.png").write_bytes(text_page())
    result = cxr_msn("predict", str(tmp_path), "--repository", str(BUNDLED), "--format", "json")
    assert result.returncode == 1, result.stderr  # one refused file
    records = {Path(record["file"]).name: record for record in map(json.loads, result.stdout.splitlines())}
    assert records["form.png"]["error"] == CODE and "threshold" in records["form.png"]["detail"]
    assert records["chest.dcm"]["ood"]["status"] == OOD_PASSED
    assert f"refused {tmp_path / 'form.png'}: {CODE}" in result.stderr
    warned = cxr_msn("predict", str(tmp_path / "form.png"), "--repository", str(BUNDLED), "--ood", "warn")
    assert warned.returncode == 0, warned.stderr
    assert "warning:" in warned.stderr and "not taken for a chest radiograph" in warned.stderr


@requires_guard
def test_ui_shows_the_refusal(chromium: Any, bundled_server: RunningServer) -> None:
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{bundled_server.url}/ui")
        page.wait_for_selector("body[data-model=ready]")
        page.set_input_files(
            "#file-input", {"name": "form.png", "mimeType": "image/png", "buffer": text_page()}
        )
        page.wait_for_selector("body[data-state=error]", timeout=60_000)
        shown = page.inner_text("#error")
        assert "does not look like a chest radiograph" in shown and CODE in shown and "422" in shown
        assert page.get_attribute("#error", "data-code") == CODE
        assert not page.is_visible("#result")
        page.set_input_files(
            "#file-input",
            {"name": "chest.dcm", "mimeType": "application/dicom", "buffer": pydicom_file("RG1_UNCR.dcm")},
        )
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        assert "threshold" in page.inner_text("#input-facts")
    finally:
        context.close()


def test_a_repository_without_the_guard_serves_with_a_warning(model_repository: Path) -> None:
    """The small generated repository has no guard: served, with a warning; the DICOM header
    still refuses a CT."""
    predictor = load_predictor(model_repository, self_check=False)
    assert predictor.guard is None and not predictor.backend.has_ood_score
    prepared = predictor.prepare(to_png(chest_like_picture(200, 180)))
    probabilities, attention, scores = predictor.infer_scored(prepared.model_input[None])
    assert scores is None
    verdict = predictor.screen(prepared, None)
    result = predictor.result(prepared, probabilities[0], attention[0], overlay=False, ood=verdict)
    assert result["ood"]["status"] == OOD_NO_GUARD and result["ood"]["score"] is None
    assert NO_GUARD_WARNING in result["warnings"]
    ct = predictor.prepare(pydicom_file("CT_small.dcm"))
    with pytest.raises(NotAChestRadiographError, match="Modality is CT"):
        predictor.screen(ct, None)
    dx = predictor.prepare(make_dicom(chest_like_picture(200, 180)))
    assert not predictor.screen(dx, None).refused


@requires_guard
@pytest.mark.slow
def test_triton_returns_the_score_and_the_service_on_triton_refuses_alike(
    bundled: httpx.Client, tmp_path: Path
) -> None:
    from export.build import TWIN_MODEL
    from tests.export.triton_server import running_server, triton_install

    install = triton_install()
    if isinstance(install, str):
        pytest.skip(install)
    chest = predict(bundled, "chest.dcm", pydicom_file("RG1_UNCR.dcm")).json()
    with running_server(install, BUNDLED, [TWIN_MODEL], tmp_path / "triton.log") as triton:
        service = start_server(
            BUNDLED,
            tmp_path / "service.log",
            CXR_MSN_BACKEND="triton-http",
            CXR_MSN_TRITON_URL=triton.http_url,
            CXR_MSN_TRITON_MODEL=TWIN_MODEL,
        )
        try:
            with httpx.Client(base_url=service.url, timeout=60) as client:
                served = predict(client, "chest.dcm", pydicom_file("RG1_UNCR.dcm"))
                refused = predict(client, "form.png", text_page())
        finally:
            stop_server(service)
    assert served.status_code == 200, served.text
    assert served.json()["model"]["backend"].startswith("triton-http")
    assert served.json()["ood"]["score"] == pytest.approx(chest["ood"]["score"], rel=1e-4)
    assert_refused(refused)


@requires_guard
def test_the_pacs_listener_refuses_a_radiograph_header_with_a_text_page_inside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CR instance (chest header, so the listener's own filter lets it in) whose pixels are a
    rendered form: the guard refuses it, and no SR is queued."""
    from PIL import Image

    from serving import decode_pool
    from serving.pacs.listener import CANNOT_UNDERSTAND, Listener
    from serving.pacs.outbox import Outbox
    from tests.serving.orthanc import chest_instance, store_scu

    predictor = load_predictor(BUNDLED, fallback="none")
    chest, form = chest_instance(), chest_instance()
    page = Image.open(io.BytesIO(text_page())).convert("L").resize((int(form.Columns), int(form.Rows)))
    maximum = (1 << int(form.BitsStored)) - 1
    pixels = (np.asarray(page, dtype=np.float64) / 255 * maximum).astype(form.pixel_array.dtype)
    form.PixelData = pixels.tobytes()

    def prepare(data: bytes) -> tuple[Any, Any]:
        return decode_pool.prepare(None, data, predictor.preprocessing, read_source=True)

    listener = Listener(predictor, Outbox(tmp_path / "outbox"), prepare, host="127.0.0.1", port=0)
    listener.start()
    try:
        assert store_scu(listener.port, [form, chest]) == [CANNOT_UNDERSTAND, 0x0000]
    finally:
        listener.stop()
    assert listener.stats.refused == 1 and listener.stats.queued == 1
    assert f"{CODE}: not taken for a chest radiograph: out-of-distribution score" in caplog.text


@requires_guard
def test_serve_check_names_the_guard_and_refuses_a_bad_mode() -> None:
    checked = cxr_msn("serve", "--repository", str(BUNDLED), "--check-only", "--ood", "warn")
    assert checked.returncode == 0, checked.stderr
    threshold = read_manifest(BUNDLED).ood_guard.threshold  # type: ignore[union-attr]
    assert f"out-of-distribution guard: score over {threshold:.3f} -> warn" in checked.stderr
    bad = cxr_msn("serve", "--repository", str(BUNDLED), "--check-only", env={"CXR_MSN_OOD": "ignore"})
    assert bad.returncode == 2 and "CXR_MSN_OOD must be one of" in bad.stderr
