"""The README's /ui screenshot: the bundled model in a real `bentoml serve`, one real chest DICOM.

    python -m recipes.ui_screenshot DICOM --out docs/images/ui.png

Uses the same server start-up and headless Chromium as the /ui tests (tests/serving).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from serving.devserver import CHROMIUM_FLAGS, SOURCE_ROOT, find_chromium, start_server, stop_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dicom", type=Path, help="the chest X-ray to show")
    parser.add_argument("--out", type=Path, default=SOURCE_ROOT / "docs" / "images" / "ui.png")
    parser.add_argument("--repository", type=Path, default=SOURCE_ROOT / "model_repository")
    args = parser.parse_args()
    executable = find_chromium()
    if executable is None:
        raise SystemExit("no Chromium found (apt-get install chromium, or set CXR_MSN_CHROMIUM)")
    with tempfile.TemporaryDirectory() as scratch:
        server = start_server(args.repository, Path(scratch) / "server.log")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.goto(f"{server.url}/ui")
                page.wait_for_selector("body[data-model=ready]")
                page.set_input_files("#file-input", str(args.dicom))
                page.wait_for_selector("body[data-state=done]", timeout=60_000)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            stop_server(server)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
