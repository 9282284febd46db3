"""Serving at the small recipe's input size: a 64 px model with 8 px patches (8 x 8 grid).

The repository's preprocessing (resize 64, crop 64) governs everything: the model input,
``attention.shape``, the model's view (its 64 px input enlarged to 448 x 448, each pixel a
7 x 7 block), the overlay, the Secondary Capture, GET /model, ``cxr-msn predict`` and /ui.
One real ``bentoml serve`` for the module.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import onnxruntime as ort
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cxrmsn.imaging import decode
from cxrmsn.labels import LABELS
from cxrmsn.preprocess import preprocess, resize_and_crop
from cxrmsn.repository import read_manifest
from serving.overlay import OVERLAY_SIDE, model_view, overlay_rgb
from tests.browser import screenshot_path
from tests.helpers import chest_like_picture, make_dicom, to_png
from tests.serving.conftest import REPO_ROOT, RunningServer, start_server, stop_server
from tests.serving.repository import SMALL_ARCHITECTURE, SMALL_PREPROCESSING, export_small_test_repository

pytestmark = pytest.mark.slow
SIZE, GRID, BLOCK = 64, 8, OVERLAY_SIDE // 64  # 7 display pixels per model pixel
PICTURE = chest_like_picture(200, 176, seed=4)


@pytest.fixture(scope="module")
def small_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_small_test_repository(tmp_path_factory.mktemp("small-repository"))


@pytest.fixture(scope="module")
def small_server(small_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(small_repository, tmp_path_factory.mktemp("small-server") / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def small_client(small_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=small_server.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def chest_cr() -> Path:
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    return Path(path)


def post(client: httpx.Client, data: bytes, **params: str) -> dict[str, Any]:
    response = client.post("/predict", files={"file": ("upload.bin", data)}, data=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def png_pixels(encoded: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "PNG"
    return np.asarray(image)


def cxr_msn(*args: str) -> subprocess.CompletedProcess[str]:
    executable = str(Path(sys.executable).with_name("cxr-msn"))
    return subprocess.run(
        [executable, *args], capture_output=True, text=True, timeout=300, env=os.environ, cwd=REPO_ROOT
    )


def expected_view(data: bytes) -> np.ndarray:
    """The model's 64 px input (before normalisation) with every pixel a 7 x 7 block, as uint8."""
    seen = resize_and_crop(decode(data).pixels, SMALL_PREPROCESSING)
    assert seen.shape == (SIZE, SIZE)
    blocks = np.repeat(np.repeat(seen, BLOCK, axis=0), BLOCK, axis=1)
    return np.clip(np.rint(blocks * 255.0), 0, 255).astype(np.uint8)


def test_model_card_gives_the_repository_preprocessing(small_client: httpx.Client) -> None:
    card = small_client.get("/model").json()
    assert card["architecture"] == SMALL_ARCHITECTURE
    assert card["preprocessing"] == SMALL_PREPROCESSING.to_dict()
    assert card["preprocessing"]["crop"] == SIZE and card["preprocessing"]["resize"] == SIZE


@pytest.mark.parametrize("fmt", ["dicom", "png"])
def test_prediction_is_onnx_runtime_on_the_64px_input_with_an_8x8_map(
    small_client: httpx.Client, small_repository: Path, chest_cr: Path, fmt: str
) -> None:
    data = chest_cr.read_bytes() if fmt == "dicom" else to_png(PICTURE)
    body = post(small_client, data)
    assert body["input"]["format"] == fmt and body["labels"] == list(LABELS)
    values = np.asarray(body["attention"]["values"])
    assert body["attention"]["shape"] == [GRID, GRID] and values.shape == (GRID, GRID)
    assert values.sum() == pytest.approx(1.0, abs=1e-5) and values.min() >= 0
    assert body["positive"] == ["Cardiomegaly"]

    model_input = preprocess(decode(data).pixels, read_manifest(small_repository).preprocess_config)
    assert model_input.shape == (3, SIZE, SIZE)
    session = ort.InferenceSession(str(small_repository / "cxr_msn" / "1" / "model.onnx"))
    probabilities, attention = session.run(["probabilities", "attention"], {"image": model_input[None]})
    assert attention.shape == (1, GRID, GRID)
    served = np.asarray([body["probabilities"][label] for label in LABELS])
    np.testing.assert_allclose(served, probabilities[0], atol=2e-6)
    np.testing.assert_allclose(values, attention[0] / attention[0].sum(), atol=2e-6)


def test_image_is_the_models_64px_input_as_7x7_blocks(small_client: httpx.Client, chest_cr: Path) -> None:
    for data in (chest_cr.read_bytes(), to_png(PICTURE)):
        body = post(small_client, data, image="true")
        view = png_pixels(body["image_png_base64"])
        assert view.shape == (OVERLAY_SIDE, OVERLAY_SIDE) and view.dtype == np.uint8  # grey
        np.testing.assert_array_equal(view, expected_view(data))
        assert body["overlay_png_base64"] is None


def test_overlay_is_448_rgb_and_the_secondary_capture_holds_it(
    small_client: httpx.Client, chest_cr: Path
) -> None:
    data = chest_cr.read_bytes()
    body = post(small_client, data, overlay="true")
    overlay = png_pixels(body["overlay_png_base64"])
    assert overlay.shape == (OVERLAY_SIDE, OVERLAY_SIDE, 3)
    # The documented recipe (the view, the 8 x 8 map upsampled over it) from the API's own numbers.
    attention = np.asarray(body["attention"]["values"])
    recomputed = overlay_rgb(decode(data).pixels, attention, SMALL_PREPROCESSING)
    assert np.abs(overlay.astype(int) - recomputed.astype(int)).max() <= 1

    response = small_client.post("/predict_dicom", files={"file": ("x.dcm", data)}, data={"output": "both"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        capture = pydicom.dcmread(io.BytesIO(archive.read("cxr-msn-heatmap-sc.dcm")))
        report_bytes = archive.read("cxr-msn-report-sr.dcm")
    assert capture.PhotometricInterpretation == "RGB" and capture.pixel_array.shape == overlay.shape
    np.testing.assert_array_equal(capture.pixel_array, overlay)
    assert f"{GRID} x {GRID} patch grid" in capture.DerivationDescription
    assert f"shown at {OVERLAY_SIDE} x {OVERLAY_SIDE}" in capture.DerivationDescription

    source = pydicom.dcmread(chest_cr, stop_before_pixels=True)
    report = hd.sr.EnhancedSR.from_dataset(pydicom.dcmread(io.BytesIO(report_bytes)))
    assert report.StudyInstanceUID == capture.StudyInstanceUID == source.StudyInstanceUID
    reported = {
        group.tracking_identifier: group.get_measurements()[0].value
        for group in report.content.get_image_measurement_groups()
    }
    assert reported == pytest.approx(body["probabilities"], abs=1e-6)


def test_overlay_puts_each_attention_cell_on_its_block_of_the_view() -> None:
    """A one-hot 8 x 8 map lights the 56 x 56 square of its cell, and only around it."""
    attention = np.zeros((GRID, GRID), np.float32)
    attention[2, 5] = 1.0
    grey = np.full((96, 80), 0.5, np.float32)  # uniform: any colour comes from the heatmap
    rgb = overlay_rgb(grey, attention, SMALL_PREPROCESSING).astype(int)
    heat = rgb[..., 0] - rgb[..., 2]  # the colour map's red lead over blue: 0 where grey
    cell = OVERLAY_SIDE // GRID
    inside = heat[2 * cell : 3 * cell, 5 * cell : 6 * cell]
    row, column = np.unravel_index(heat.argmax(), heat.shape)
    assert (row // cell, column // cell) == (2, 5)
    # Bicubic reaches two cells from the lit one's centre, no further: columns 0-2 stay grey.
    assert inside.mean() > 20 and np.abs(heat[:, : 3 * cell]).max() <= 1
    view = model_view(grey, SMALL_PREPROCESSING)
    assert view.shape == (OVERLAY_SIDE, OVERLAY_SIDE) and np.allclose(view, 0.5)


def test_predict_command_at_64px(small_repository: Path, chest_cr: Path, tmp_path: Path) -> None:
    png = tmp_path / "chest.png"
    png.write_bytes(to_png(PICTURE))
    dicom = tmp_path / "film.dcm"
    dicom.write_bytes(make_dicom(PICTURE))
    overlays, dicom_dir = tmp_path / "overlays", tmp_path / "dicom"
    result = cxr_msn(
        "predict", str(png), str(dicom), "--repository", str(small_repository), "--format", "json",
        "--overlay-dir", str(overlays), "--dicom-dir", str(dicom_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(records) == 2
    for record in records:
        assert record["attention"]["shape"] == [GRID, GRID]
        assert np.asarray(record["attention"]["values"]).sum() == pytest.approx(1.0, abs=1e-5)
        assert record["model"]["architecture"] == SMALL_ARCHITECTURE
    for name in ("chest_attention.png", "film_attention.png"):
        assert Image.open(overlays / name).size == (OVERLAY_SIDE, OVERLAY_SIDE)
    uid = pydicom.dcmread(dicom, stop_before_pixels=True).SOPInstanceUID
    capture = pydicom.dcmread(dicom_dir / f"{uid}.sc.dcm")
    assert capture.pixel_array.shape == (OVERLAY_SIDE, OVERLAY_SIDE, 3)
    assert pydicom.dcmread(dicom_dir / f"{uid}.sr.dcm").Modality == "SR"


def test_ui_draws_the_8x8_map_over_the_64px_view(
    chromium: Any, small_server: RunningServer, small_client: httpx.Client, chest_cr: Path
) -> None:
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    problems: list[str] = []  # console errors (CSP violations show up here) and uncaught exceptions

    def on_console(message: Any) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(f"{small_server.url}/ui")
        page.wait_for_selector("body[data-model=ready]")
        page.set_input_files("#file-input", str(chest_cr))
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        page.screenshot(path=str(screenshot_path("ui_64px_result.png")), full_page=True)
        size = page.eval_on_selector("#view", "img => [img.naturalWidth, img.naturalHeight]")
        assert size == [OVERLAY_SIDE, OVERLAY_SIDE]
        caption = page.inner_text("#view-size")
        times = "\N{MULTIPLICATION SIGN}"
        assert f"{SIZE} {times} {SIZE} px input" in caption and f"{GRID} {times} {GRID} patch grid" in caption
        assert page.eval_on_selector("#view", "img => getComputedStyle(img).imageRendering") == "pixelated"

        api = post(small_client, chest_cr.read_bytes())
        values = np.asarray(api["attention"]["values"])
        cells = [np.unravel_index(index, values.shape) for index in (values.argmax(), values.argmin())]
        hottest, coldest = page.evaluate(
            """([cells, grid]) => {
                const canvas = document.getElementById('heatmap');
                const context = canvas.getContext('2d');
                const side = canvas.width / grid;
                return cells.map(([row, column]) => Array.from(context.getImageData(
                    Math.floor((column + 0.5) * side), Math.floor((row + 0.5) * side), 1, 1).data));
            }""",
            [[[int(row), int(column)] for row, column in cells], GRID],
        )
        assert hottest[3] > coldest[3] + 100  # alpha follows attention, cell by cell
        assert sum(hottest[:3]) > sum(coldest[:3])
        assert problems == []
    finally:
        context.close()
