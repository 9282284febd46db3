"""ASGI middleware: refuse over-size uploads before the body is read, and request shapes
the API does not take (method, Content-Type, multipart parts) before BentoML parses them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

Scope = dict[str, Any]
Message = dict[str, Any]


class UploadLimitMiddleware:
    """413 with the project's error body when a request body exceeds ``max_bytes``.

    A declared Content-Length over the limit is refused before any byte is read. A body
    without Content-Length (chunked) is read up to the limit and refused once it passes.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await self._refuse(send, f"the upload has {length:,} bytes; the limit is {self.max_bytes:,}")
            return
        if length is not None:
            await self.app(scope, receive, send)
            return
        body = await self._read_bounded(receive)
        if body is None:
            await self._refuse(send, f"the upload is over the limit of {self.max_bytes:,} bytes")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_bounded(self, receive: Any) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _refuse(self, send: Any, detail: str) -> None:
        body = json.dumps({"error": "upload_too_large", "detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, original_receive: Any) -> Any:
    """A receive() that yields the buffered body once, then defers to the real one."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: Message = await original_receive()
        return message

    return receive


# RFC 2046 section 5.1.1: a boundary has 1 to 70 characters.
MAX_BOUNDARY_CHARS = 70
MAX_HEADERS_PER_PART = 8
MAX_TEXT_VALUE_BYTES = 64
# The strings pydantic reads as a bool in lax mode, lower-cased.
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


class RequestError(Exception):
    """A request whose shape the API does not take; never carries a submitted value."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class RequestShapeMiddleware:
    """Check an API request's method, Content-Type and multipart shape before BentoML parses it.

    Only POST with multipart/form-data is taken (405 and 415 otherwise), with a boundary
    of 1 to 70 characters; the body must be well-formed multipart whose parts are the
    route's file field as uploaded file parts (a part with a filename: BentoML would treat a
    text value as a URL to download) and its text fields, each at most once, with one of
    their allowed values. Parts are counted while the body is read, so 10,000 parts cost
    no more than the first refused one. Every refusal is the project's error body and names
    no submitted value (they would reach the response and the log).
    Error responses BentoML itself makes on these routes (validation errors, which echo form
    values) are replaced by the project's body without their text.

    Place it inside ``UploadLimitMiddleware``: the body it reads is bounded by that limit.
    """

    def __init__(self, app: Any, routes: dict[str, FormShape]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        shape = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if shape is None:
            await self.app(scope, receive, send)
            return
        try:
            if scope.get("method") != "POST":
                raise RequestError(405, "method_not_allowed", f"{scope['path']} takes POST only")
            boundary = _multipart_boundary(scope)
            body = await _read_checked(receive, boundary, shape)
        except RequestError as error:
            await send_error(send, error.status, error.code, error.detail, closing=True)
            return
        await self.app(scope, _replay(body, receive), _error_shape_guard(send))


async def send_error(send: Any, status: int, code: str, detail: str, *, closing: bool = False) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 405:
        headers.append((b"allow", b"POST"))
    if closing:  # the body may be partly unread
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _multipart_boundary(scope: Scope) -> bytes:
    value = next((v for name, v in scope.get("headers", []) if name.lower() == b"content-type"), b"")
    media_type, options = parse_options_header(value)
    if media_type != b"multipart/form-data":
        raise RequestError(
            415,
            "unsupported_media_type",
            "the body must be multipart/form-data with the file as an uploaded part",
        )
    boundary = options.get(b"boundary", b"")
    if not 1 <= len(boundary) <= MAX_BOUNDARY_CHARS:
        raise RequestError(
            400,
            "invalid_request",
            f"the multipart boundary must have 1 to {MAX_BOUNDARY_CHARS} characters, got {len(boundary):,}",
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
        is_file = b"filename" in options
        if name == shape.file_field:
            if not is_file:
                raise _invalid(
                    f"{name} must be an uploaded file part (curl -F {name}=@path), not a text value"
                )
            if count > shape.max_files:
                if shape.max_files > 1:
                    raise RequestError(
                        413,
                        "too_many_files",
                        f"more than {shape.max_files} files sent; at most {shape.max_files} per request",
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
        if self.text.decode("utf-8", "replace").lower() not in allowed:
            choices = "true or false" if allowed == BOOL_VALUES else " or ".join(sorted(allowed))
            raise _invalid(f"{self.current} must be {choices}")

    def finish(self) -> None:
        if self.shape.file_field not in self.seen:
            raise _invalid(
                f"the form has no {self.shape.file_field} field; this endpoint takes {self.shape.describe()}"
            )


async def _read_checked(receive: Any, boundary: bytes, shape: FormShape) -> bytes:
    checker = _FormChecker(shape)
    parser = MultipartParser(boundary, checker.callbacks())  # type: ignore[arg-type]
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise RequestError(400, "invalid_request", "the client disconnected before the body was complete")
        chunk = message.get("body", b"")
        chunks.append(chunk)
        try:
            parser.write(chunk)
        except MultipartParseError:
            raise _invalid("the body is not well-formed multipart/form-data") from None
        if not message.get("more_body", False):
            break
    if parser.state != MultipartState.END:
        raise _invalid("the body is not well-formed multipart/form-data (no closing boundary)")
    checker.finish()
    return b"".join(chunks)


def _invalid(detail: str) -> RequestError:
    return RequestError(400, "invalid_request", detail)


def _error_shape_guard(send: Any) -> Any:
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
            await send_error(send, 500, "internal_error", "the server failed; see server logs")
        else:
            detail = "the request does not match the API: see /docs.json for its fields and types"
            await send_error(send, 400, "invalid_request", detail)

    return guarded


def _is_project_error(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and set(parsed) == {"error", "detail"}
