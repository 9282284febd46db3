"""The API's error answers: one response for an ``ApiError``, and their OpenAPI declaration.

Every code and its status come from ``cxrmsn.errors.ERROR_CODES``; the body is always
``{"error": CODE, "detail": MESSAGE}`` (``serving.schemas.ErrorResponse``).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from starlette.responses import JSONResponse

from cxrmsn.errors import ERROR_CODES, ApiError
from serving.schemas import ErrorResponse

ERROR_SCHEMA_REF = "#/components/schemas/ErrorResponse"


def error_response(error: ApiError) -> JSONResponse:
    """The error's status and its JSON body."""
    return JSONResponse(error.to_dict(), status_code=error.http_status)


def codes_by_status() -> dict[int, list[str]]:
    by_status: dict[int, list[str]] = defaultdict(list)
    for code, entry in ERROR_CODES.items():
        by_status[entry.status].append(code)
    return dict(sorted(by_status.items()))


def with_error_responses(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of the OpenAPI document in which every operation that takes a body declares the
    error statuses of the registry, each with the ErrorResponse schema and its codes, in place
    of BentoML's own error schemas (the service never answers with those)."""
    spec = copy.deepcopy(spec)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorResponse", ErrorResponse.model_json_schema())
    content = {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}}
    errors = {
        str(status): {"description": "error codes: " + ", ".join(codes), "content": content}
        for status, codes in codes_by_status().items()
    }
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                answers = operation.get("responses", {})
                kept = {status: answer for status, answer in answers.items() if int(status) < 400}
                operation["responses"] = {**kept, **errors}
    return spec
