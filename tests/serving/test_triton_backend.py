"""The service with the Triton backend, against the real tritonserver of the export tests."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from cxrmsn.labels import LABELS
from export.build import TWIN_MODEL
from tests.export.triton_server import running_server, triton_install
from tests.helpers import chest_like_picture, make_dicom, to_png
from tests.serving.conftest import start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_service_on_triton_gives_the_onnxruntime_answer(
    protocol: str, model_repository: Path, client: httpx.Client, tmp_path: Path
) -> None:
    install = triton_install()
    if isinstance(install, str):
        pytest.skip(install)
    uploads = [to_png(chest_like_picture(200, 190, seed=3)), make_dicom(chest_like_picture(200, 190, seed=4))]
    expected = [client.post("/predict", files={"file": ("x", data)}).json() for data in uploads]
    with running_server(install, model_repository, [TWIN_MODEL], tmp_path / "triton.log") as triton:
        url = triton.http_url if protocol == "http" else triton.grpc_url
        service = start_server(
            model_repository, tmp_path / "service.log",
            CXR_MSN_BACKEND=f"triton-{protocol}", CXR_MSN_TRITON_URL=url, CXR_MSN_TRITON_MODEL=TWIN_MODEL,
        )  # fmt: skip
        try:
            with httpx.Client(base_url=service.url, timeout=60) as triton_client:
                answers = [triton_client.post("/predict", files={"file": ("x", data)}) for data in uploads]
                card = triton_client.get("/model").json()
        finally:
            stop_server(service)
    assert card["backend"].startswith(f"triton-{protocol}")
    for answer, reference in zip(answers, expected, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"]["backend"].startswith(f"triton-{protocol}")
        served = np.array([body["probabilities"][label] for label in LABELS])
        direct = np.array([reference["probabilities"][label] for label in LABELS])
        # Triton's venv runs onnxruntime 1.19, this one 1.32: kernels differ in the last bits.
        np.testing.assert_allclose(served, direct, atol=1e-5)
        np.testing.assert_allclose(body["attention"]["values"], reference["attention"]["values"], atol=1e-5)
        assert body["positive"] == reference["positive"]
