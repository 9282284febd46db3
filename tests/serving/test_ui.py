"""The /ui page in a real headless Chromium against the real BentoML server.

Screenshots for people to look at are written to build/screenshots/ (CXR_MSN_SCREENSHOT_DIR).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cxrmsn.labels import LABELS
from tests.browser import screenshot_path
from tests.helpers import chest_like_picture, to_png
from tests.serving.conftest import RunningServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chest_cr() -> Path:
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    return Path(path)


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture
def page(chromium: Any, server: RunningServer) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.problems = []  # console errors (CSP violations show up here) and uncaught exceptions
    page.requests = []
    page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on("request", lambda request: page.requests.append(request.url))
    page.goto(f"{server.url}/ui")
    page.wait_for_selector("body[data-model=ready]")
    yield page
    context.close()


def rendered_findings(page: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = page.eval_on_selector_all(
        "#findings li",
        """rows => rows.map(row => ({
            label: row.dataset.label,
            probability: Number(row.dataset.probability),
            shown: row.querySelector('.value').textContent,
            positive: row.classList.contains('positive'),
            untrained: row.classList.contains('untrained'),
            notValidated: row.classList.contains('not-validated'),
            badge: row.querySelector('.badge') ? row.querySelector('.badge').textContent : null,
            badgeTitle: row.querySelector('.badge') ? row.querySelector('.badge').title : null,
            tick: row.querySelector('.threshold') !== null,
            colour: getComputedStyle(row).color,
            bar: getComputedStyle(row.querySelector('.bar')).backgroundImage,
        }))""",
    )
    return rows


def test_ui_page_and_assets_are_served_from_this_server_only(client: httpx.Client) -> None:
    response = client.get("/ui")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    parser = _References()
    parser.feed(response.text)
    assert sorted(url for url in parser.urls if not url.startswith("data:")) == ["/ui/ui.css", "/ui/ui.js"]
    assert client.get("/ui/ui.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/ui.css").headers["content-type"].startswith("text/css")
    missing = client.get("/ui/secrets.txt")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_ui_shows_a_dicom_result_as_the_api_gives_it(
    page: Any, client: httpx.Client, chest_cr: Path, server: RunningServer
) -> None:
    page.set_input_files("#file-input", str(chest_cr))
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    page.screenshot(path=str(screenshot_path("ui_dicom_result.png")), full_page=True)

    api = client.post("/predict", files={"file": ("x.dcm", chest_cr.read_bytes())}).json()
    rows = rendered_findings(page)
    assert sorted(row["label"] for row in rows) == sorted(LABELS)
    shown = [row["probability"] for row in rows]
    assert shown == sorted(shown, reverse=True)
    for row in rows:
        assert row["probability"] == pytest.approx(api["probabilities"][row["label"]], abs=1e-6)
        assert row["shown"] == f"{api['probabilities'][row['label']]:.3f}"
    assert api["positive"] and {row["label"] for row in rows if row["positive"]} == set(api["positive"])
    untrained = set(api["model"]["untrained_labels"])
    assert untrained and {row["label"] for row in rows if row["untrained"]} == untrained
    grey = {row["colour"] for row in rows if row["untrained"]}
    marked = ("untrained", "notValidated", "positive")
    plain = {row["colour"] for row in rows if not any(row[key] for key in marked)}
    assert len(grey) == 1 and grey.isdisjoint(plain)
    # Labels that failed the validity gate: greyed, tagged "not validated" (not "untrained"),
    # no threshold tick, never positive, the gate's reason on the tag.
    not_validated = set(api["model"]["not_validated_labels"])
    tagged = [row for row in rows if row["notValidated"]]
    assert not_validated and {row["label"] for row in tagged} == not_validated
    for row in tagged:
        assert row["colour"] in grey and not row["positive"] and not row["untrained"] and not row["tick"]
        assert row["badge"] == "not validated" and "lower bound not above 0.5" in row["badgeTitle"]
        assert "gradient" in row["bar"]  # striped, unlike an untrained label's flat grey bar
    assert all(row["badge"] == "untrained" and row["bar"] == "none" for row in rows if row["untrained"])

    assert page.eval_on_selector("#view", "img => [img.naturalWidth, img.naturalHeight]") == [448, 448]
    # The heatmap's brightest and darkest cells sit where the API's attention peaks and dips.
    values = np.asarray(api["attention"]["values"])
    cells = [np.unravel_index(index, values.shape) for index in (values.argmax(), values.argmin())]
    painted = page.evaluate(
        """cells => {
            const canvas = document.getElementById('heatmap');
            const context = canvas.getContext('2d');
            const side = canvas.width / 14;
            return cells.map(([row, column]) => Array.from(context.getImageData(
                Math.floor((column + 0.5) * side), Math.floor((row + 0.5) * side), 1, 1).data));
        }""",
        [[int(row), int(column)] for row, column in cells],
    )
    hottest, coldest = painted
    assert hottest[3] > coldest[3] + 100  # alpha follows attention
    assert sum(hottest[:3]) > sum(coldest[:3])  # and the colour map runs dark to light
    page.fill("#opacity", "20")
    page.dispatch_event("#opacity", "input")
    assert page.eval_on_selector("#heatmap", "c => c.style.opacity") == "0.2"
    assert page.is_visible("#dicom-output")
    assert "MONOCHROME1" in page.inner_text("#input-facts")

    assert page.problems == []
    origin = urlparse(server.url).netloc
    assert {urlparse(url).netloc for url in page.requests if not url.startswith("data:")} == {origin}


def test_ui_accepts_a_dropped_png(page: Any) -> None:
    encoded = base64.b64encode(to_png(chest_like_picture(300, 260))).decode("ascii")
    transfer = page.evaluate_handle(
        """encoded => {
            const bytes = Uint8Array.from(atob(encoded), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], 'chest.png', { type: 'image/png' }));
            return transfer;
        }""",
        encoded,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    assert len(rendered_findings(page)) == len(LABELS)
    assert not page.is_visible("#dicom-output")  # DICOM output needs a DICOM input
    assert page.problems == []


def test_ui_shows_the_apis_error_message(page: Any, client: httpx.Client) -> None:
    gif = b"GIF89a" + b"\x00" * 64
    page.set_input_files("#file-input", {"name": "scan.gif", "mimeType": "image/gif", "buffer": gif})
    page.wait_for_selector("body[data-state=error]", timeout=60_000)
    page.screenshot(path=str(screenshot_path("ui_error.png")), full_page=True)
    api = client.post("/predict", files={"file": ("scan.gif", gif)})
    shown = page.inner_text("#error")
    assert api.status_code == 415
    assert api.json()["error"] in shown and api.json()["detail"] in shown and "415" in shown
    assert not page.is_visible("#result")


def test_ui_downloads_a_structured_report_for_a_dicom(page: Any, chest_cr: Path) -> None:
    page.set_input_files("#file-input", str(chest_cr))
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    with page.expect_download() as download_info:
        page.click("#download-sr")
    report = pydicom.dcmread(io.BytesIO(Path(download_info.value.path()).read_bytes()))
    source = pydicom.dcmread(chest_cr, stop_before_pixels=True)
    assert report.Modality == "SR"
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert page.problems == []
