"""DICOMweb STOW-RS in (``POST /dicomweb/studies`` on the service): the listener's processing.

Each ``application/dicom`` part of a ``multipart/related`` body goes through
``Listener.process`` (the same checks, prediction, outbox and duplicate record as a C-STORE);
the results are stored at ``CXR_MSN_PACS_DESTINATION`` (HOST:PORT:AET) by C-STORE through
the outbox in ``CXR_MSN_OUTBOX``. The answer is the PS3.18 store response
(``application/dicom+json``): 200 when every instance was accepted, 202 when some were
refused, 409 when all were.
"""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path
from typing import Any

import pydicom
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cxrmsn.errors import ApiError
from serving.api_errors import error_response
from serving.pacs.listener import SUCCESS

DESTINATION_ENV = "CXR_MSN_PACS_DESTINATION"
OUTBOX_ENV = "CXR_MSN_OUTBOX"
CALLING_AE_ENV = "CXR_MSN_PACS_AE_TITLE"
MAX_PARTS = 1000
_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)  # Orthanc sends 73 characters
# DICOM JSON tags of the store response (PS3.18 table 10.5.3-1).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
PROCESSING_FAILURE = 0x0110


class StowError(ApiError):
    """A request that is not a STOW-RS body this service takes (HTTP 4xx)."""


def dicom_parts(content_type: str, body: bytes) -> list[bytes]:
    """The ``application/dicom`` parts of a ``multipart/related`` body."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "multipart/related":
        raise StowError(
            code="unsupported_media_type", detail='STOW-RS takes multipart/related; type="application/dicom"'
        )
    parameters = content_type.split(";", 1)[1] if ";" in content_type else ""
    if "application/dicom" not in parameters.lower().replace(" ", ""):
        raise StowError(code="unsupported_media_type", detail='only type="application/dicom" parts are taken')
    match = _BOUNDARY.search(parameters)
    if match is None:
        raise StowError(code="invalid_multipart", detail="the Content-Type has no boundary")
    delimiter = b"--" + match.group(1).encode("ascii", "replace")
    chunks = (b"\r\n" + body).split(b"\r\n" + delimiter)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        head, separator, content = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise StowError(code="invalid_multipart", detail="a part has no header/body separator")
        headers = head.decode("latin-1").lower()
        part_type = re.search(r"content-type:\s*([^;\r\n]+)", headers)
        if part_type is not None and part_type.group(1).strip() != "application/dicom":
            raise StowError(code="unsupported_media_type", detail="every part must be application/dicom")
        parts.append(content)
        if len(parts) > MAX_PARTS:
            raise StowError(code="too_many_parts", detail=f"at most {MAX_PARTS} instances per request")
    if not parts:
        raise StowError(code="invalid_multipart", detail="the body holds no part (or no closing delimiter)")
    return parts


def store_response(results: list[tuple[bytes, int]]) -> tuple[int, dict[str, Any]]:
    """HTTP status and PS3.18 store response for (part, DIMSE status) pairs."""
    referenced, failed = [], []
    for data, status in results:
        item = _sop_reference(data)
        if status == SUCCESS:
            referenced.append(item)
        else:
            failed.append({**item, FAILURE_REASON: {"vr": "US", "Value": [status]}})
    response: dict[str, Any] = {}
    if referenced:
        response[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    if failed:
        response[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    http_status = 200 if not failed else (409 if not referenced else 202)
    return http_status, response


def _sop_reference(data: bytes) -> dict[str, Any]:
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        sop_class, sop_instance = str(header.SOPClassUID), str(header.SOPInstanceUID)
    except Exception:
        return {}
    return {
        SOP_CLASS: {"vr": "UI", "Value": [sop_class]},
        SOP_INSTANCE: {"vr": "UI", "Value": [sop_instance]},
    }


_GATEWAY: Any = None
_GATEWAY_LOCK = threading.Lock()


def gateway(predictor: Any, pool: Any) -> Any:
    """The service's Listener (no SCP: its processing and outbox sender), made on first use.

    None when ``CXR_MSN_PACS_DESTINATION`` is not set. Raises ValueError for a bad destination.
    """
    global _GATEWAY
    with _GATEWAY_LOCK:
        if _GATEWAY is not None:
            return _GATEWAY
        destination_text = os.environ.get(DESTINATION_ENV, "").strip()
        if not destination_text:
            return None
        from serving import decode_pool
        from serving.pacs.listener import CStoreSender, Destination, Listener

        destination = Destination.parse(destination_text)
        calling_ae = os.environ.get(CALLING_AE_ENV, "CXRMSN")
        sender = CStoreSender(destination, calling_ae)
        preprocessing = predictor.preprocessing

        def prepare(data: bytes) -> tuple[Any, Any]:
            return decode_pool.prepare(pool, data, preprocessing, read_source=True)

        listener = Listener(
            predictor,
            outbox(),
            prepare,
            ae_title=calling_ae,
            send=sender,
            close_sender=sender.close,
        )
        listener.start_sender()
        _GATEWAY = listener
        return listener


def outbox() -> Any:
    from serving.pacs.outbox import Outbox

    return Outbox(_outbox_path())


def _outbox_path() -> Path:
    return Path(os.environ.get(OUTBOX_ENV, "pacs-outbox"))


def outbox_status() -> dict[str, Any]:
    from serving.pacs.outbox import Outbox

    view = Outbox(_outbox_path(), repair=False)
    return {**view.counts(), "destination": os.environ.get(DESTINATION_ENV) or None}


# -- the routes (registered on the service's FastAPI app by serving/service.py) -----------------


def register(app: Any) -> None:
    """Add ``POST /dicomweb/studies`` and ``GET /dicomweb/outbox`` to the service's FastAPI app."""
    app.add_api_route(
        "/dicomweb/studies",
        stow_studies,
        methods=["POST"],
        summary='DICOMweb STOW-RS: multipart/related; type="application/dicom"; SR + SC to the PACS',
    )
    app.add_api_route("/dicomweb/outbox", outbox_counts, methods=["GET"], summary="The PACS outbox's counts")


async def stow_studies(request: Request) -> Response:
    import anyio
    import bentoml

    service: Any = bentoml.get_current_service()
    body = await request.body()
    try:
        parts = dicom_parts(request.headers.get("content-type", ""), body)
        listener = await anyio.to_thread.run_sync(lambda: gateway(service.predictor, service.decode_pool))
    except StowError as error:
        return error_response(error)
    except ValueError as error:  # a malformed CXR_MSN_PACS_DESTINATION
        return error_response(ApiError(str(error), code="pacs_not_configured"))
    if listener is None:
        detail = f"STOW-RS needs a destination for the results: set {DESTINATION_ENV}=HOST:PORT:AET"
        return error_response(ApiError(detail, code="pacs_not_configured"))
    results = []
    for data in parts:
        status = await anyio.to_thread.run_sync(listener.process, data, limiter=service.decode_slots)
        results.append((data, status))
    http_status, payload = store_response(results)
    return JSONResponse(payload, status_code=http_status, media_type="application/dicom+json")


async def outbox_counts() -> Response:
    import anyio

    return JSONResponse(await anyio.to_thread.run_sync(outbox_status))
