"""A real headless Chromium for the /ui tests, driven by Playwright.

Playwright's own browser download is not used (the machines are offline): the tests run the
system Chromium (Debian's ``chromium`` package, which ``make test`` installs when it can).
Without one the browser tests skip with the reason, unless ``CXR_MSN_REQUIRE_BROWSER=1``
(set by ``.ci/run``) turns the skip into a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.devserver import CHROMIUM_FLAGS, find_chromium

REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT_DIR = Path(os.environ.get("CXR_MSN_SCREENSHOT_DIR", REPO_ROOT / "build" / "screenshots"))


def unavailable(reason: str) -> None:
    if os.environ.get("CXR_MSN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CXR_MSN_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    executable = find_chromium()
    if executable is None:
        unavailable("no Chromium found (apt-get install chromium, or set CXR_MSN_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (it is in the dev extra)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def screenshot_path(name: str) -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT_DIR / name
