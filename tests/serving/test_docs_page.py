"""The API page at / (and /docs, /redoc) loads nothing from another site (issue 15, item 10):
BentoML's Swagger page loaded Google Tag Manager, FastAPI's Swagger UI and ReDoc a CDN."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlparse

import httpx
import pytest

from cxrmsn.errors import ERROR_CODES, ApiError
from tests.serving.conftest import RunningServer

ABSOLUTE_URL = re.compile(rb"(?:https?:)?//[a-z0-9.-]+[a-z0-9](?::\d+)?", re.IGNORECASE)
DOCS_PATHS = ("/", "/docs", "/redoc")
# What a browser loads for a page, as opposed to where its links lead.
TEXT_TYPES = ("text/html", "text/css", "javascript")


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []  # loaded with the page
        self.links: list[str] = []  # followed on a click

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(str(values["href"]))
            return
        for name in ("src", "href", "action", "data"):
            if values.get(name):
                self.assets.append(str(values[name]))


def references(page: str) -> _References:
    parser = _References()
    parser.feed(page)
    return parser


def third_party_urls(content: bytes, origin: str) -> list[str]:
    """Absolute URLs in a page, style sheet or script that point anywhere but ``origin``."""
    host = urlparse(origin).netloc.encode()
    found = [match.group(0) for match in ABSOLUTE_URL.finditer(content)]
    return [url.decode() for url in found if url.split(b"//", 1)[1] != host]


@pytest.mark.parametrize("path", DOCS_PATHS)
def test_the_docs_pages_load_nothing_from_another_site(client: httpx.Client, path: str) -> None:
    origin = str(client.base_url).rstrip("/")
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert third_party_urls(response.content, origin) == []
    found = references(response.text)
    for url in found.assets + found.links:
        if url.startswith("data:"):
            continue
        target = urljoin(f"{origin}{path}", url)
        assert target.startswith(f"{origin}/"), url
        linked = client.get(target)
        assert linked.status_code == 200, url
        if any(kind in linked.headers["content-type"] for kind in TEXT_TYPES):
            assert third_party_urls(linked.content, origin) == [], url


def test_the_page_lists_every_api_route_and_its_fields(client: httpx.Client) -> None:
    page = client.get("/").text
    openapi = client.get("/docs.json").json()
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            assert f"{method.upper()} {path}" in page
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            for field in (form or {}).get("schema", {}).get("properties", {}):
                assert f"<td>{field}</td>" in page, (path, field)
    assert 'href="/ui"' in page and 'href="/docs.json"' in page
    head = client.head("/")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.slow
def test_the_page_in_a_browser_requests_only_this_server(chromium: Any, server: RunningServer) -> None:
    context = chromium.new_context()
    page = context.new_page()
    requests: list[str] = []
    problems: list[str] = []  # CSP violations are console errors

    def on_console(message: Any) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("request", lambda request: requests.append(request.url))
    page.on("console", on_console)
    page.goto(f"{server.url}/", wait_until="networkidle")
    assert page.locator("h1").inner_text() == "cxr-msn API"
    assert page.eval_on_selector("body", "body => getComputedStyle(body).maxWidth") != "none"  # style applied
    context.close()
    assert requests and all(url.startswith(server.url) for url in requests), requests
    assert problems == []


def test_docs_json_declares_every_error_of_the_registry(client: httpx.Client) -> None:
    openapi = client.get("/docs.json").json()
    statuses = {str(entry.status) for entry in ERROR_CODES.values()}
    error_schema = openapi["components"]["schemas"]["ErrorResponse"]
    assert set(error_schema["required"]) == {"error", "detail"}
    for route in ("/predict", "/predict_batch", "/predict_dicom"):
        responses = openapi["paths"][route]["post"]["responses"]
        assert {status for status in responses if int(status) >= 400} == statuses, route
        for status in statuses:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


def test_every_error_class_of_the_service_has_a_registered_code() -> None:
    from serving.decode_pool import DecodeTimeoutError, DecodeTooLargeError, DecodeUnavailableError
    from serving.pacs.stow import StowError

    for cls in (DecodeTimeoutError, DecodeTooLargeError, DecodeUnavailableError):
        assert cls.code in ERROR_CODES, cls.__name__
    assert issubclass(StowError, ApiError)
