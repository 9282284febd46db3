"""report.html: escaping, self-containment and agreement with report.md, on a hand-made report.

The end-to-end check on a real linear-eval run is in test_runs.py (it shares the helpers here).
"""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from training.downstream.report_html import render_html
from training.downstream.report_markdown import report_markdown
from training.downstream.report_model import Code, Figure, Report, Strong, Table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}
HOSTILE = "<script>alert(1)</script>"


class Page(HTMLParser):
    """Every start tag with its attributes, the text, and tags closed out of order."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.mismatched: list[str] = []
        self._open: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open.pop() != tag:
            self.mismatched.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def unclosed(self) -> list[str]:
        return list(self._open)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def joined_text(self) -> str:
        return "".join(self.text)


def check_self_contained(page: Page) -> list[bytes]:
    """Asserts the page loads nothing from anywhere; returns the decoded bytes of each image."""
    assert not page.mismatched and not page.unclosed
    assert not page.named("script") and not page.named("link") and not page.named("iframe")
    for _, attrs in page.tags:
        for name in ("src", "href"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), value
    images = []
    for attrs in page.named("img"):
        src = attrs["src"] or ""
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), src[:40]
        data = base64.b64decode(src[len(prefix) :], validate=True)
        assert data.startswith(PNG_SIGNATURE)
        images.append(data)
    return images


def _png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 12, 3), 200, dtype=np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def _report(tmp_path: Path) -> Report:
    table = Table(
        f"Runs {HOSTILE}",
        ("Run", "Note & more"),
        "ll",
        [("best", f'"quoted" {HOSTILE}'), ("other", "plain")],
        strong_rows=frozenset({0}),
        muted_rows=frozenset({1}),
    )
    return Report(
        title=f"Report: runs/{HOSTILE}",
        notice="Research only: not for clinical use unless validated.",
        headline=[("Macro AUROC", "0.900", "0.800 to 0.950")],
        facts=[("Encoder: ", Code(f"/models/{HOSTILE}.safetensors"), " pretraining ", Strong(HOSTILE))],
        tables=[table],
        figures=[Figure(_png(tmp_path / "roc_curves.png"), f"caption {HOSTILE}")],
    )


def test_strings_from_the_run_files_are_escaped(tmp_path: Path) -> None:
    text = render_html(_report(tmp_path))
    page = Page(text)
    assert "<script" not in text.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert not page.named("script")
    assert page.joined_text().count(HOSTILE) == 7  # title, h1, code, strong, table title and cell, caption
    assert "&quot;quoted&quot;" in text and "Note &amp; more" in text
    assert [attrs["alt"] for attrs in page.named("img")] == [f"caption {HOSTILE}"]


def test_the_page_is_self_contained_and_embeds_the_figure_bytes(tmp_path: Path) -> None:
    report = _report(tmp_path)
    page = Page(render_html(report))
    assert check_self_contained(page) == [report.figures[0].path.read_bytes()]
    assert page.named("html")[0]["lang"] == "en" and page.named("meta")[0]["charset"] == "utf-8"
    assert [attrs.get("class") for attrs in page.named("tr")[1:]] == ["strong", "muted"]
    assert "not for clinical use" in page.joined_text()


def test_markdown_and_html_show_the_same_content(tmp_path: Path) -> None:
    report = _report(tmp_path)
    markdown, page_text = report_markdown(report), Page(render_html(report)).joined_text()
    for piece in [report.title, report.notice, report.figures[0].caption, *report.facts[0]]:
        assert piece in markdown and piece in page_text
    for row in report.tables[0].rows:
        assert all(cell in markdown and cell in page_text for cell in row)
    assert "**best**" in markdown and f"`/models/{HOSTILE}.safetensors`" in markdown
