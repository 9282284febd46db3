"""ASGI middleware in front of the BentoML service, outermost first:

- ``DocsPageMiddleware``: ``/``, ``/docs`` and ``/redoc`` answer a self-contained page
  describing the API (BentoML's and FastAPI's pages load scripts from other sites);
- ``UploadLimitMiddleware``: each request body is received whole, within a size limit and
  in time, and spooled to a temporary file past ``SPOOL_MEMORY_BYTES``;
- ``WorkLimitMiddleware``: at most N requests are worked on at once, counted from when
  their body is complete (a client still sending holds no slot);
- ``RequestShapeMiddleware``: request shapes the API does not take (method, Content-Type,
  multipart parts) are refused before BentoML parses them.

Every refusal is ``{"error": CODE, "detail": MESSAGE}``, names no submitted value and is
counted in ``cxr_msn_errors_total``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from cxrmsn.errors import ApiError
from serving import metrics

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# BentoML answers a request still running after this many seconds with 504 (the service's
# traffic timeout); a body must be received well within it.
REQUEST_TIMEOUT_SECONDS = 120
SPOOL_MEMORY_BYTES = 1024 * 1024  # a body past this is written to a temporary file
REPLAY_CHUNK_BYTES = 64 * 1024
BODY_SCOPE_KEY = "cxr_msn.body"  # the spooled body, for the middleware inside
RETRY_AFTER_SECONDS = 1
UNCOUNTED_PATHS = frozenset({"/metrics", "/healthz", "/livez", "/readyz"})  # never refused as overloaded


def _env_number(name: str, default: float, kind: Callable[[str], float] = float) -> float:
    """A positive number (``kind`` int: a whole one) from the environment, else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        whole = " whole" if kind is int else ""
        raise ValueError(f"{name} must be a{whole} number, got {raw[:32]!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {raw[:32]!r}")
    return value


@dataclass(frozen=True)
class UploadSettings:
    """How a request body must arrive, and how many requests are worked on at once.

    A body must be complete within ``receive_seconds`` of the request's start and, after
    the first ``grace_seconds``, arrive at ``min_bytes_per_second`` or more on average;
    otherwise 408 ``upload_too_slow``. Environment overrides in ``from_env``.
    """

    receive_seconds: float = 60.0
    grace_seconds: float = 5.0
    min_bytes_per_second: float = 1024.0
    max_concurrency: int = 64

    def __post_init__(self) -> None:
        if self.receive_seconds >= REQUEST_TIMEOUT_SECONDS:
            raise ValueError(
                f"CXR_MSN_UPLOAD_TIMEOUT_S must be under the request timeout of {REQUEST_TIMEOUT_SECONDS} s"
            )

    @classmethod
    def from_env(cls) -> UploadSettings:
        return cls(
            receive_seconds=_env_number("CXR_MSN_UPLOAD_TIMEOUT_S", cls.receive_seconds),
            grace_seconds=_env_number("CXR_MSN_UPLOAD_GRACE_S", cls.grace_seconds),
            min_bytes_per_second=_env_number("CXR_MSN_UPLOAD_MIN_BYTES_PER_S", cls.min_bytes_per_second),
            max_concurrency=int(_env_number("CXR_MSN_MAX_CONCURRENCY", cls.max_concurrency, int)),
        )

    def seconds_left(self, received: int, elapsed: float) -> float:
        """Time left for the next bytes: to the total deadline, or (after the grace period)
        to when the average rate falls under the minimum."""
        rate_deadline = max(self.grace_seconds, received / self.min_bytes_per_second)
        return min(self.receive_seconds, rate_deadline) - elapsed

    def too_slow(self, received: int, elapsed: float) -> ApiError:
        return ApiError(
            code="upload_too_slow",
            detail=f"{received:,} bytes of the upload arrived in {elapsed:.0f} s; a body must arrive within "
            f"{self.receive_seconds:g} s, at {self.min_bytes_per_second:,.0f} bytes/s or more after "
            f"the first {self.grace_seconds:g} s",
        )


async def send_error(
    send: Send,
    error: ApiError,
    *,
    closing: bool = False,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """The project's error body; counted in cxr_msn_errors_total by its code."""
    metrics.count_error(error.code)
    body = json.dumps(error.to_dict()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += extra_headers
    if closing:  # the body may be partly unread
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SpooledBody:
    """A request body held in memory up to SPOOL_MEMORY_BYTES, in a temporary file past it."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 (closed by close())
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.size += len(chunk)

    def chunks(self) -> Iterator[bytes]:
        self.file.seek(0)
        while chunk := self.file.read(REPLAY_CHUNK_BYTES):
            yield chunk

    def replay(self, original_receive: Receive) -> Receive:
        """A receive() that yields the body from its start in chunks, then defers to the real one
        (which reports the client's disconnect)."""
        chunks = self.chunks()
        current: bytes | None = next(chunks, b"")

        async def receive() -> Message:
            nonlocal current
            if current is None:
                return await original_receive()
            following = next(chunks, None)
            message = {"type": "http.request", "body": current, "more_body": following is not None}
            current = following
            return message

        return receive

    def close(self) -> None:
        self.file.close()


async def receive_body(receive: Receive, settings: UploadSettings, max_bytes: int) -> SpooledBody:
    """The whole body, spooled. ApiError: 413 past ``max_bytes``, 408 when it is too slow,
    400 ``client_disconnected`` when the client leaves first."""
    body = SpooledBody()
    started = time.monotonic()
    try:
        while True:
            elapsed = time.monotonic() - started
            message = await _next_message(receive, settings.seconds_left(body.size, elapsed))
            if message is None:
                raise settings.too_slow(body.size, time.monotonic() - started)
            if message["type"] != "http.request":  # answered all the same: BentoML's timeout
                # middleware outside waits for a response until its 120 s are over
                raise ApiError(
                    code="client_disconnected", detail="the client left before the body was complete"
                )
            body.write(message.get("body", b""))
            if body.size > max_bytes:
                raise ApiError(
                    code="upload_too_large", detail=f"the upload is over the limit of {max_bytes:,} bytes"
                )
            if not message.get("more_body", False):
                return body
    except BaseException:
        body.close()
        raise


async def _next_message(receive: Receive, seconds: float) -> Message | None:
    """The next message, or None if none came within ``seconds``."""
    with anyio.move_on_after(max(seconds, 0.0)):
        return await receive()
    return None


class UploadLimitMiddleware:
    """Receive each request body whole before anything inside sees it.

    A declared Content-Length over ``max_bytes`` is refused (413 ``upload_too_large``)
    before any byte is read; a chunked body is refused as soon as it passes the limit. A
    body that arrives too slowly (see ``UploadSettings``) is 408 ``upload_too_slow``. Both
    close the connection. The body is spooled (to a temporary file past
    SPOOL_MEMORY_BYTES) and replayed to the app, so a large upload costs little memory and
    a slow one holds only its connection until its deadline.
    """

    def __init__(self, app: App, max_bytes: int, settings: UploadSettings) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._receive(scope, receive)
        except ApiError as error:
            await send_error(send, error, closing=True)
            return
        try:
            await self.app({**scope, BODY_SCOPE_KEY: body}, body.replay(receive), send)
        finally:
            body.close()

    async def _receive(self, scope: Scope, receive: Receive) -> SpooledBody:
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            detail = f"the upload has {length:,} bytes; the limit is {self.max_bytes:,}"
            raise ApiError(code="upload_too_large", detail=detail)
        return await receive_body(receive, self.settings, self.max_bytes)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class WorkLimitMiddleware:
    """At most ``max_concurrency`` requests worked on at once; past it, 429 ``overloaded``
    with Retry-After. Placed inside ``UploadLimitMiddleware``, so a request counts from
    when its body is complete, not while it is still being sent. Health and metrics
    routes are never refused."""

    def __init__(self, app: App, max_concurrency: int) -> None:
        self.app = app
        self.max_concurrency = max_concurrency
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_concurrency:
            detail = f"the server is working on {self.active} requests, its limit; retry shortly"
            retry_after = (b"retry-after", str(RETRY_AFTER_SECONDS).encode())
            await send_error(send, ApiError(detail, code="overloaded"), extra_headers=[retry_after])
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


# RFC 2046 section 5.1.1: a boundary has 1 to 70 characters.
MAX_BOUNDARY_CHARS = 70
MAX_HEADERS_PER_PART = 8
MAX_TEXT_VALUE_BYTES = 64
# BentoML stores an upload under a temporary name ending in its file name; the file system
# takes 255 bytes per name, and a name that is not UTF-8 is read as Latin-1 (up to 2 bytes a byte).
MAX_FILENAME_BYTES = 120
# The strings pydantic reads as a bool in lax mode, lower-cased (it ignores their case).
BOOL_VALUES = frozenset({"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"})


@dataclass(frozen=True)
class FormShape:
    """What one API route takes: its file field and its text fields with their allowed values."""

    file_field: str
    text_fields: dict[str, frozenset[str]]
    max_files: int = 1  # > 1: the file field may repeat (the batch endpoint)

    def describe(self) -> str:
        files = f"{self.file_field} (an uploaded file{', repeated' if self.max_files > 1 else ''})"
        return ", ".join([files, *self.text_fields])


class RequestShapeMiddleware:
    """Check an API request's method, Content-Type and multipart shape before BentoML parses it.

    Only POST with multipart/form-data is taken (405 and 415 otherwise), with a boundary
    of 1 to 70 characters; the body must be well-formed multipart whose parts are the
    route's file field as uploaded file parts (a part with a filename of at most
    MAX_FILENAME_BYTES: BentoML would treat a text value as a URL to download) and its text
    fields, each at most once, with one of their allowed values. The parse stops at the
    first part the route does not take. Every refusal is the project's error body and names
    no submitted value (they would reach the response and the log).
    Error responses BentoML itself makes on these routes (validation errors, which echo form
    values) are replaced by the project's body without their text.

    Place it inside ``UploadLimitMiddleware``: it checks the body spooled there (without it,
    it spools the body itself, unbounded: for tests).
    """

    def __init__(self, app: App, routes: dict[str, FormShape]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shape = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if shape is None:
            await self.app(scope, receive, send)
            return
        body: SpooledBody | None = scope.get(BODY_SCOPE_KEY)
        try:
            if scope.get("method") != "POST":
                raise ApiError(code="method_not_allowed", detail=f"{scope['path']} takes POST only")
            boundary = _multipart_boundary(scope)
            if body is None:
                unbounded = UploadLimitMiddleware(self, 2**63, UploadSettings(receive_seconds=100))
                await unbounded(scope, receive, send)
                return
            await anyio.to_thread.run_sync(_check_form, body, boundary, shape)
        except ApiError as error:
            extra = [(b"allow", b"POST")] if error.code == "method_not_allowed" else []
            await send_error(send, error, closing=True, extra_headers=extra)
            return
        await self.app(scope, body.replay(receive), _error_shape_guard(send))


def _multipart_boundary(scope: Scope) -> bytes:
    value = next((v for name, v in scope.get("headers", []) if name.lower() == b"content-type"), b"")
    media_type, options = parse_options_header(value)
    if media_type != b"multipart/form-data":
        raise ApiError(
            code="unsupported_media_type",
            detail="the body must be multipart/form-data with the file as an uploaded part",
        )
    boundary = options.get(b"boundary", b"")
    if not 1 <= len(boundary) <= MAX_BOUNDARY_CHARS:
        raise ApiError(
            code="invalid_request",
            detail=f"the multipart boundary must have 1 to {MAX_BOUNDARY_CHARS} characters, "
            f"got {len(boundary):,}",
        )
    return boundary


class _FormChecker:
    """Callbacks for python-multipart's streaming parser that check each part as it arrives."""

    def __init__(self, shape: FormShape) -> None:
        self.shape = shape
        self.seen: dict[str, int] = {}
        self.headers: list[tuple[bytes, bytes]] = []
        self.field = b""
        self.value = b""
        self.current: str | None = None  # the text field being read
        self.text = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self.headers, self.field, self.value, self.current = [], b"", b"", None
        self.text = bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers.append((self.field.lower(), self.value))
        self.field, self.value = b"", b""
        if len(self.headers) > MAX_HEADERS_PER_PART:
            raise _invalid(f"a multipart part has more than {MAX_HEADERS_PER_PART} headers")

    def headers_finished(self) -> None:
        dispositions = [value for name, value in self.headers if name == b"content-disposition"]
        if len(dispositions) > 1:  # starlette reads the last one: check exactly what it will read
            raise _invalid("a multipart part has more than one Content-Disposition header")
        kind, options = parse_options_header(dispositions[0] if dispositions else None)
        name_bytes = options.get(b"name")
        if kind != b"form-data" or name_bytes is None:
            raise _invalid("every multipart part needs a Content-Disposition: form-data header with a name")
        name = name_bytes.decode("utf-8", "replace")
        shape = self.shape
        if name != shape.file_field and name not in shape.text_fields:
            raise _invalid(f"unexpected form field; this endpoint takes {shape.describe()}")
        count = self.seen[name] = self.seen.get(name, 0) + 1
        filename = options.get(b"filename")
        is_file = filename is not None
        if name == shape.file_field:
            if filename is None:
                raise _invalid(
                    f"{name} must be an uploaded file part (curl -F {name}=@path), not a text value"
                )
            _check_filename(filename)
            if count > shape.max_files:
                if shape.max_files > 1:
                    raise ApiError(
                        code="too_many_files",
                        detail=f"more than {shape.max_files} files sent; "
                        f"at most {shape.max_files} per request",
                    )
                raise _invalid(f"{name} may be sent once")
            return
        if is_file:
            raise _invalid(f"{name} must be a text value, not a file")
        if count > 1:
            raise _invalid(f"{name} may be sent once")
        self.current = name

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is None:
            return
        self.text += data[start:end]
        if len(self.text) > MAX_TEXT_VALUE_BYTES:
            raise _invalid(f"{self.current} has a value over {MAX_TEXT_VALUE_BYTES} bytes")

    def part_end(self) -> None:
        if self.current is None:
            return
        allowed = self.shape.text_fields[self.current]
        value = self.text.decode("utf-8", "replace")
        if (value.lower() if allowed == BOOL_VALUES else value) not in allowed:  # Literal: exact
            choices = "true or false" if allowed == BOOL_VALUES else " or ".join(sorted(allowed))
            raise _invalid(f"{self.current} must be {choices}")

    def finish(self) -> None:
        if self.shape.file_field not in self.seen:
            raise _invalid(
                f"the form has no {self.shape.file_field} field; this endpoint takes {self.shape.describe()}"
            )


def _check_filename(filename: bytes) -> None:
    if len(filename) > MAX_FILENAME_BYTES:
        raise _invalid(f"the file name has {len(filename):,} bytes; at most {MAX_FILENAME_BYTES}")
    if b"\x00" in filename:
        raise _invalid("the file name contains a NUL byte")


def _check_form(body: SpooledBody, boundary: bytes, shape: FormShape) -> None:
    """Parse the spooled body part by part; ApiError at the first part the route does not take."""
    checker = _FormChecker(shape)
    parser = MultipartParser(boundary, checker.callbacks())  # type: ignore[arg-type]
    for chunk in body.chunks():
        try:
            parser.write(chunk)
        except MultipartParseError:
            raise _invalid("the body is not well-formed multipart/form-data") from None
    if parser.state != MultipartState.END:
        raise _invalid("the body is not well-formed multipart/form-data (no closing boundary)")
    checker.finish()


def _invalid(detail: str) -> ApiError:
    return ApiError(code="invalid_request", detail=detail)


def _error_shape_guard(send: Send) -> Send:
    """A send() that replaces an error response not in the project's shape (BentoML's own
    validation errors copy submitted values) by {"error", "detail"} without that text."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def guarded(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held = message
            return
        if held is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        if _is_project_error(body):
            await send(held)
            await send({"type": "http.response.body", "body": body})
        elif held["status"] >= 500:
            await send_error(send, ApiError("the server failed; see server logs", code="internal_error"))
        else:
            detail = "the request does not match the API: see /docs.json for its fields and types"
            await send_error(send, ApiError(detail, code="invalid_request"))

    return guarded


def _is_project_error(body: bytes) -> bool:
    """{"error": CODE, "detail": MESSAGE} with two strings (BentoML's validation errors have
    the same keys, with a list of errors quoting the input as the detail)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(parsed, dict)
        and set(parsed) == {"error", "detail"}
        and all(isinstance(value, str) for value in parsed.values())
    )


# The logger of BentoML's log_exception(), which logs "Exception on PATH [METHOD]" with the
# traceback when an API call raises: pydantic's ValidationError and OSError messages there
# quote form values and file names.
FRAMEWORK_ERROR_LOGGER = "bentoml._internal.server.http_app"


class ExceptionTextFilter(logging.Filter):
    """Keep a record but replace its exception (message and traceback) by the exception's type."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None and isinstance(record.args, tuple):
            record.msg = f"{record.msg}: %s (details withheld: they may quote the request)"
            record.args = (*record.args, record.exc_info[0].__name__)
            record.exc_info = None
            record.exc_text = None
        return True


def withhold_framework_error_details() -> None:
    """Install ``ExceptionTextFilter`` on BentoML's request-exception logger (once)."""
    logger = logging.getLogger(FRAMEWORK_ERROR_LOGGER)
    if not any(isinstance(existing, ExceptionTextFilter) for existing in logger.filters):
        logger.addFilter(ExceptionTextFilter())


# BentoML's page at / loads Google Tag Manager; the mounted FastAPI app's /docs (Swagger UI)
# and /redoc (ReDoc) load their scripts and fonts from CDNs. All three answer this page.
DOCS_PATHS = frozenset({"/", "/docs", "/redoc"})
OPENAPI_PATH = "/docs.json"
OPENAPI_HEADERS = [(b"content-type", b"application/json")]
DOCS_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}"
    "code,pre{font-family:ui-monospace,monospace}pre{background:#f4f4f4;padding:.6rem;overflow-x:auto}"
    "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;"
    "text-align:left;vertical-align:top}section{border-top:1px solid #ddd;margin-top:1.5rem}"
    ".notice{color:#8a1c1c}"
)
DOCS_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (
        b"content-security-policy",
        (
            "default-src 'none'; style-src 'sha256-"
            + base64.b64encode(hashlib.sha256(DOCS_STYLE.encode()).digest()).decode()
            + "'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        ).encode(),
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-cache"),
]
DOCS_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cxr-msn API</title>
<link rel="icon" href="data:,">
<style>@STYLE@</style>
</head>
<body>
<h1>cxr-msn API</h1>
<p class="notice"><strong>Research use only: not for clinical use unless validated.</strong></p>
<ul>
<li><a href="/ui">The viewer</a>: drop a chest X-ray, see the findings and the attention map.</li>
<li><a href="/docs.json">The OpenAPI document</a>: for client generators, or a Swagger UI you host.</li>
<li><a href="/model">The model card</a> (JSON): labels, thresholds, validation metrics.</li>
</ul>
<h2>Prediction endpoints</h2>
<p>Each takes <code>multipart/form-data</code> with the image as an uploaded file part. Errors
are JSON <code>{"error": CODE, "detail": MESSAGE}</code> with a 4xx or 5xx status; a busy
server answers 429 <code>overloaded</code> with <code>Retry-After</code>. In the examples,
<code>$SERVER</code> is this server's address (scheme, host and port).</p>
@APIS@
<h2>Other endpoints</h2>
<ul>
@OTHERS@
</ul>
</body>
</html>
"""


class DocsPageMiddleware:
    """GET (or HEAD) ``/``, ``/docs`` and ``/redoc``: a page describing the API from its
    OpenAPI document, with no script and nothing loaded from another site; ``/docs.json``:
    that document, as ``openapi`` returns it (the service adds its error responses)."""

    def __init__(self, app: App, openapi: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.openapi = openapi
        self.spec: bytes | None = None  # both made on the first request
        self.page: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if (
            scope["type"] != "http"
            or (path not in DOCS_PATHS and path != OPENAPI_PATH)
            or scope.get("method") not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        if self.spec is None or self.page is None:
            spec = self.openapi()
            self.spec = json.dumps(spec).encode()
            self.page = render_docs_page(spec).encode()
        body, kind = (self.spec, OPENAPI_HEADERS) if path == OPENAPI_PATH else (self.page, DOCS_HEADERS)
        headers = [*kind, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def render_docs_page(openapi: dict[str, Any]) -> str:
    apis: list[str] = []
    others: list[str] = []
    for path, operations in openapi.get("paths", {}).items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                apis.append(_api_section(path, method, operation))
            else:
                others.append(f"<li><code>{method.upper()} {_plain(path)}</code>: {_summary(operation)}</li>")
    page = DOCS_TEMPLATE.replace("@STYLE@", DOCS_STYLE).replace("@APIS@", "\n".join(apis))
    return page.replace("@OTHERS@", "\n".join(others))


def _api_section(path: str, method: str, operation: dict[str, Any]) -> str:
    form = operation["requestBody"].get("content", {}).get("multipart/form-data", {}).get("schema", {})
    fields: dict[str, Any] = form.get("properties", {})
    rows = "".join(
        _field_row(name, field, name in form.get("required", ())) for name, field in fields.items()
    )
    responses = operation.get("responses", {})
    success = responses.get("200") or responses.get(200) or {}  # a str key in JSON, an int before
    answers = ", ".join(sorted(success.get("content", {})))
    return (
        f"<section>\n<h3><code>{method.upper()} {_plain(path)}</code></h3>\n<p>{_summary(operation)}</p>\n"
        f"<table><tr><th>field</th><th>value</th><th>default</th><th>meaning</th></tr>{rows}</table>\n"
        f"<p>Answers 200 with {_plain(answers or 'a body')}.</p>\n"
        f"<pre>{_plain(_curl_example(path, fields))}</pre>\n</section>"
    )


def _field_row(name: str, field: dict[str, Any], required: bool) -> str:
    default = "required" if required else json.dumps(field.get("default"))
    cells = (name, _field_kind(field), default, field.get("description", ""))
    return "<tr>" + "".join(f"<td>{_plain(str(cell))}</td>" for cell in cells) + "</tr>"


def _field_kind(field: dict[str, Any]) -> str:
    if field.get("type") == "array":
        return _field_kind(field.get("items", {})) + " (repeat the field for each)"
    if field.get("format") == "binary":
        return "a file"
    if "enum" in field:
        return " | ".join(map(str, field["enum"]))
    return "true | false" if field.get("type") == "boolean" else str(field.get("type", "text"))


def _curl_example(path: str, fields: dict[str, Any]) -> str:
    parts = []
    for name, field in fields.items():
        if field.get("type") == "array":
            parts += [f"-F {name}=@first.dcm", f"-F {name}=@second.png"]
        elif field.get("format") == "binary":
            parts.append(f"-F {name}=@chest.dcm")
        elif field.get("type") == "boolean":
            parts.append(f"-F {name}=true")
    return " ".join(["curl", *parts, f"$SERVER{path}"])


def _summary(operation: dict[str, Any]) -> str:
    return _plain(operation.get("summary") or operation.get("description") or "")


def _plain(text: str) -> str:
    """Escaped text without the HTML tags some descriptions carry."""
    return html.escape(re.sub(r"<[^>]*>", "", text))
