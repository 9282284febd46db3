"""A screenshot of a report.html (e.g. the bundled run's, with its pretraining monitor).

    python -m recipes.report_screenshot runs/bundled/report/report.html --out docs/images/bundled-report.png

Opens the page in the same headless Chromium as the browser tests (nothing is fetched: the
page is self-contained) and saves the whole page, or with --figure NAME only that figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

from serving.devserver import CHROMIUM_FLAGS, find_chromium


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report.html written by `cxr-msn report`")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--figure", help="only the <figure> whose image alt text contains this")
    args = parser.parse_args()
    executable = find_chromium()
    if executable is None:
        raise SystemExit("no Chromium found (apt-get install chromium, or set CXR_MSN_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(args.report.resolve().as_uri())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.figure:
            page.locator("figure", has=page.locator(f"img[alt*='{args.figure}']")).first.screenshot(
                path=str(args.out)
            )
        else:
            page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
