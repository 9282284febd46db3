"""The one preprocessing: shapes, normalisation, and format independence."""

from __future__ import annotations

import numpy as np
import pytest

from cxrmsn.imaging import decode
from cxrmsn.preprocess import PreprocessConfig, normalise, preprocess, resize_and_crop
from tests.helpers import chest_like_picture, make_dicom, to_jpeg, to_png

CONFIG = PreprocessConfig()
STD = np.asarray(CONFIG.std, dtype=np.float32)[:, None, None]


def test_output_shape_dtype_and_normalisation() -> None:
    grey = np.full((300, 250), 0.5, dtype=np.float32)
    model_input = preprocess(grey)
    assert model_input.shape == (3, 224, 224) and model_input.dtype == np.float32
    expected = (0.5 - np.asarray(CONFIG.mean)) / np.asarray(CONFIG.std)
    np.testing.assert_allclose(model_input[:, 100, 100], expected, rtol=1e-6)


def test_shorter_side_is_resized_then_centre_cropped() -> None:
    grey = np.zeros((448, 224 * 2 + 100), dtype=np.float32)
    grey[:, :30] = 1.0  # a bright band at the far left: cropped away
    grey[:, 250:298] = 1.0  # centre band: kept
    crop = resize_and_crop(grey)
    assert crop.shape == (224, 224)
    assert crop[:, :5].max() < 0.01
    assert crop[:, 90:130].max() > 0.99


def test_upscales_small_images() -> None:
    crop = resize_and_crop(np.random.default_rng(0).random((64, 64), dtype=np.float32))
    assert crop.shape == (224, 224) and crop.min() >= 0.0 and crop.max() <= 1.0


def test_invalid_config_and_input_are_refused() -> None:
    with pytest.raises(ValueError, match="resize >= crop"):
        PreprocessConfig(resize=200, crop=224)
    with pytest.raises(ValueError, match="2-D"):
        resize_and_crop(np.zeros((3, 64, 64), dtype=np.float32))


def test_config_round_trips_through_dict() -> None:
    config = PreprocessConfig(resize=256, crop=224)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({**config.to_dict(), "flip": True})


def test_same_picture_in_every_format_gives_the_same_model_input() -> None:
    picture = chest_like_picture(512, 480)
    files = {
        "png8": to_png(picture),
        "png16": to_png(picture.astype(np.uint16) * 257),
        "jpeg": to_jpeg(picture, quality=95),
        "dicom8": make_dicom(picture),
        "dicom12": make_dicom((picture.astype(np.uint16) * 16), bits_stored=12),
        "dicom_mono1": make_dicom(255 - picture, photometric="MONOCHROME1"),
    }
    inputs = {name: preprocess(decode(data).pixels) for name, data in files.items()}
    reference = inputs["png8"]
    for name, model_input in inputs.items():
        # Compare in the [0, 1] grey units the tolerance is stated in.
        difference = np.abs((model_input - reference) * STD).max()
        assert difference <= 2 / 255, f"{name} differs from png8 by {difference * 255:.2f}/255"


def test_normalise_repeats_grey_into_three_channels() -> None:
    out = normalise(np.zeros((4, 4), dtype=np.float32))
    assert out.shape == (3, 4, 4)
    assert not np.allclose(out[0], out[1])  # per-channel mean/std differ
