"""The service decodes JPEG 2000 at reduced resolution, and says so, within the core's tolerance."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from pydicom.uid import JPEG2000Lossless

from cxrmsn.imaging import decode
from cxrmsn.labels import LABELS
from cxrmsn.preprocess import preprocess
from tests.core.test_reduced_decode import compressed, radiograph
from tests.helpers import make_dataset


def test_a_large_jpeg_2000_dicom_is_decoded_reduced_and_classified_as_in_full(
    client: httpx.Client, model_repository: Path
) -> None:
    stored = radiograph(2500, 2048, 12, seed=3)
    data = compressed(
        make_dataset(stored, bits_stored=12, WindowCenter=2048, WindowWidth=4096), JPEG2000Lossless
    )
    response = client.post("/predict", files={"file": ("chest.dcm", data)}, data={"overlay": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["input"]["decode_reduction"] == 4  # 512 x 625 for the 224 px test model
    assert (body["input"]["width"], body["input"]["height"]) == (2048, 2500)
    assert body["overlay_png_base64"]
    session = ort.InferenceSession(str(model_repository / "cxr_msn" / "1" / "model.onnx"))
    full = session.run(["probabilities"], {"image": preprocess(decode(data).pixels)[None]})[0][0]
    served = np.array([body["probabilities"][label] for label in LABELS])
    assert 0 < np.abs(served - full).max() < 0.05  # the reduced path was taken, and agrees
