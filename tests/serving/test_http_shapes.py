"""Request shapes the API must refuse with the project's error body, never a 500, and
never by fetching a URL taken from the request (issue 15, items 6 and 10)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
from starlette.testclient import TestClient

from serving.middleware import BOOL_VALUES, FormShape, RequestShapeMiddleware
from tests.helpers import chest_like_picture, to_png
from tests.serving.conftest import RunningServer

PNG = to_png(chest_like_picture(64, 64))
MARKER = "ZZSHAPEMARKER4412"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code and body["detail"], body
    return body


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    """A multipart/form-data body of (name, filename or None, content) parts."""
    chunks = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
        )
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback socket that listens; a URL pointing at it must never be connected to."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(1.0)
    yield sock
    sock.close()


def assert_never_connected(sock: socket.socket) -> None:
    try:
        connection, _ = sock.accept()
    except TimeoutError:
        return
    connection.close()
    pytest.fail("the server connected to a URL taken from the request")


def test_wrong_field_name_is_400(client: httpx.Client) -> None:
    response = client.post("/predict", files={"files": ("x.png", PNG)})
    body = assert_error(response, 400, "invalid_request")
    assert "file" in body["detail"]


def test_missing_file_is_400_in_project_shape(client: httpx.Client) -> None:
    assert_error(client.post("/predict", files={"overlay": (None, b"true")}), 400, "invalid_request")


def test_text_file_value_is_refused_and_its_url_never_fetched(
    client: httpx.Client, listener: socket.socket
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.png"
    for route in ("/predict", "/predict_dicom"):
        response = client.post(route, files={"file": (None, url.encode())})
        body = assert_error(response, 400, "invalid_request")
        assert url not in body["detail"]
    response = client.post("/predict_batch", files=[("files", (None, url.encode()))])
    assert_error(response, 400, "invalid_request")
    assert_never_connected(listener)


def test_url_in_urlencoded_or_json_body_is_415_and_never_fetched(
    client: httpx.Client, listener: socket.socket
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.png"
    assert_error(client.post("/predict", data={"file": url}), 415, "unsupported_media_type")
    response = client.post(
        "/predict", content=json.dumps({"file": url}), headers={"content-type": "application/json"}
    )
    assert_error(response, 415, "unsupported_media_type")
    assert_error(client.post("/predict_batch", json={"files": [url]}), 415, "unsupported_media_type")
    assert_error(client.post("/predict_dicom", content=PNG), 415, "unsupported_media_type")
    assert_never_connected(listener)


def test_ten_thousand_parts_is_400(client: httpx.Client) -> None:
    body, content_type = multipart([("file", "x.png", PNG)] + [("overlay", None, b"true")] * 10_000)
    response = client.post("/predict", content=body, headers={"content-type": content_type})
    assert_error(response, 400, "invalid_request")


def test_ten_thousand_file_parts_in_a_batch_is_413_too_many_files(client: httpx.Client) -> None:
    body, content_type = multipart([("files", "x.png", b"x")] * 10_000)
    response = client.post("/predict_batch", content=body, headers={"content-type": content_type})
    assert_error(response, 413, "too_many_files")


def test_a_second_content_disposition_cannot_turn_a_file_part_into_text(
    client: httpx.Client, listener: socket.socket
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.png"
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n'
        b'Content-Disposition: form-data; name="file"\r\n\r\n' + url.encode() + b"\r\n--b0undary--\r\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=b0undary"}
    assert_error(client.post("/predict", content=body, headers=headers), 400, "invalid_request")
    assert_never_connected(listener)


def test_long_boundary_is_400(client: httpx.Client) -> None:
    body, content_type = multipart([("file", "x.png", PNG)], boundary="b" * 5000)
    response = client.post("/predict", content=body, headers={"content-type": content_type})
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", 'multipart/form-data; boundary=""', "multipart/mixed; boundary=b0undary"],
)
def test_missing_boundary_or_wrong_multipart_is_refused(client: httpx.Client, content_type: str) -> None:
    body, _ = multipart([("file", "x.png", PNG)])
    response = client.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code in (400, 415), response.text
    assert set(response.json()) == {"error", "detail"}


def test_malformed_multipart_body_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/predict",
        content=b"not multipart at all",
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert_error(response, 400, "invalid_request")


def test_get_on_an_api_route_is_405_in_project_shape(client: httpx.Client) -> None:
    for route in ("/predict", "/predict_batch", "/predict_dicom"):
        response = client.get(route)
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "POST"


def test_bad_form_value_is_400_and_the_value_is_never_echoed_or_logged(
    client: httpx.Client, server: RunningServer
) -> None:
    response = client.post("/predict", files={"file": ("x.png", PNG)}, data={"overlay": MARKER})
    assert_error(response, 400, "invalid_request")
    assert MARKER not in response.text
    response = client.post("/predict_dicom", files={"file": ("x.png", PNG)}, data={"output": MARKER})
    assert_error(response, 400, "invalid_request")
    assert MARKER not in response.text
    response = client.post("/predict", files={"file": ("x.png", PNG)}, data={"unknown": MARKER})
    assert_error(response, 400, "invalid_request")
    assert MARKER not in response.text
    assert MARKER not in server.log()


def test_duplicate_file_field_is_400(client: httpx.Client) -> None:
    response = client.post("/predict", files=[("file", ("a.png", PNG)), ("file", ("b.png", PNG))])
    assert_error(response, 400, "invalid_request")


def test_good_requests_still_pass(client: httpx.Client) -> None:
    response = client.post(
        "/predict", files={"file": ("x.png", PNG)}, data={"overlay": "true", "image": "false"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["overlay_png_base64"]
    response = client.post("/predict_batch", files=[("files", ("a.png", PNG)), ("files", ("b.png", PNG))])
    assert response.status_code == 200, response.text
    assert [item["status"] for item in response.json()["results"]] == [200, 200]
    # a text part without a filename but a declared content type is still a text part
    response = client.post("/predict", files={"file": ("x.png", PNG)}, data={"overlay": "1"})
    assert response.status_code == 200, response.text
    assert client.get("/readyz").status_code == 200


def test_bentomls_own_error_bodies_are_replaced_without_their_text() -> None:
    """The guard behind the shape checks: an error body not in the project's shape (BentoML's
    validation errors quote the submitted values) becomes invalid_request, the value dropped."""

    async def bentoml_like(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = json.dumps({"error": f"1 validation error for Input\noverlay\n  input_value='{MARKER}'"})
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})

    shape = FormShape("file", {"overlay": BOOL_VALUES})
    app = RequestShapeMiddleware(bentoml_like, routes={"/predict": shape})
    response = TestClient(cast(Any, app)).post(
        "/predict", files={"file": ("x.png", PNG)}, data={"overlay": "true"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request" and set(response.json()) == {"error", "detail"}
    assert MARKER not in response.text


@pytest.mark.parametrize(
    ("route", "file_field", "text_fields"),
    [
        ("/predict", "file", {"overlay": "boolean", "image": "boolean"}),
        ("/predict_batch", "files", {"overlay": "boolean"}),
        ("/predict_dicom", "file", {"output": ["sr", "sc", "both"]}),
    ],
)
def test_the_checked_forms_are_the_api_signatures(
    client: httpx.Client, route: str, file_field: str, text_fields: dict[str, Any]
) -> None:
    """serving.service.API_FORMS (what the middleware lets through) must follow the @bentoml.api
    signatures: a parameter added there and not here would be refused as an unexpected field."""
    schema = client.get("/docs.json").json()["paths"][route]["post"]["requestBody"]["content"]
    properties = schema["multipart/form-data"]["schema"]["properties"]
    assert set(properties) == {file_field, *text_fields}
    assert "binary" in json.dumps(properties[file_field])
    for name, kind in text_fields.items():
        assert properties[name].get("enum", properties[name]["type"]) == kind
        response = client.post(route, files={file_field: ("x.png", PNG)}, data={name: "not-a-value"})
        assert_error(response, 400, "invalid_request")
