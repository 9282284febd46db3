"""ASGI middleware: refuse over-size uploads before the body is read."""

from __future__ import annotations

import json
from typing import Any

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
