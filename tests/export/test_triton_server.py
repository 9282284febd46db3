"""A real tritonserver serves the exported repository's python-backend twin.

Follows ../shared/docs/REFERENCE.md section 4: the nvidia-pytriton wheel's tritonserver
(python backend only) in its own virtual environment; KServe v2 requests over HTTP and
gRPC with tritonclient; results compared with onnxruntime run directly on the same
fp32 file. Skips only where the wheel cannot be installed.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cxrmsn.labels import LABELS
from cxrmsn.repository import read_manifest, verified_model_path
from export.build import TWIN_MODEL
from export.runtime import cpu_session, generated_images, run
from tests.export.triton_server import TritonInstall, running_server

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5


def test_twin_answers_http_and_grpc_like_onnxruntime(
    install: TritonInstall, nano_repository: Path, tmp_path: Path
) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    manifest = read_manifest(nano_repository)
    direct = cpu_session(verified_model_path(nano_repository, manifest, "fp32"))
    images = generated_images(8, image_size=224, seed=11)
    expected = run(direct, images)

    with running_server(install, nano_repository, [TWIN_MODEL], tmp_path / "triton.log") as server:
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        assert http.is_model_ready(TWIN_MODEL) and grpc.is_model_ready(TWIN_MODEL)
        metadata = http.get_model_metadata(TWIN_MODEL)
        assert [i["name"] for i in metadata["inputs"]] == ["image"]
        assert [o["shape"] for o in metadata["outputs"]] == [[-1, 14], [-1, 14, 14]]

        by_http, by_grpc = _infer(http, httpclient, images), _infer(grpc, grpcclient, images)
        for got, want in zip(by_http, by_grpc, strict=True):
            np.testing.assert_array_equal(got, want)  # one server, one session: identical bits
        for got, want in zip(by_http, expected, strict=True):
            # the server's venv has onnxruntime 1.19 (numpy<2), this one 1.32: kernels differ in the last bits
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)

        classes = _classification(http, httpclient, images[:1])
        assert classes[0].split(":")[2] in LABELS  # "score:index:label" from labels.txt

        latencies = []
        for index in range(10):
            start = time.perf_counter()
            _infer(http, httpclient, images[index % 8 : index % 8 + 1])
            latencies.append(time.perf_counter() - start)
        print(f"\nTriton HTTP round trip, batch 1, median of 10: {1e3 * statistics.median(latencies):.1f} ms")

        with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent single-image requests
            singles = list(pool.map(lambda i: _infer(grpcclient.InferenceServerClient(server.grpc_url),
                                                     grpcclient, images[i : i + 1]), range(8)))  # fmt: skip
        np.testing.assert_allclose(
            np.concatenate([s[0] for s in singles]), expected[0], rtol=0, atol=TOLERANCE
        )
        pid = server.pid
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def _infer(client: object, module: object, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = module.InferInput("image", list(images.shape), "FP32")  # type: ignore[attr-defined]
    image.set_data_from_numpy(images)
    outputs = [module.InferRequestedOutput(name) for name in ("probabilities", "attention")]  # type: ignore[attr-defined]
    result = client.infer(TWIN_MODEL, [image], outputs=outputs)  # type: ignore[attr-defined]
    return result.as_numpy("probabilities"), result.as_numpy("attention")


def _classification(client: object, module: object, images: np.ndarray) -> list[str]:
    image = module.InferInput("image", list(images.shape), "FP32")  # type: ignore[attr-defined]
    image.set_data_from_numpy(images)
    requested = [module.InferRequestedOutput("probabilities", class_count=3)]  # type: ignore[attr-defined]
    result = client.infer(TWIN_MODEL, [image], outputs=requested)  # type: ignore[attr-defined]
    return [
        item.decode() if isinstance(item, bytes) else str(item)
        for item in result.as_numpy("probabilities")[0]
    ]
