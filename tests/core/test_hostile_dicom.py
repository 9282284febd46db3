"""Hostile headers (issue 15): malformed LUTs, non-finite arithmetic, echoed values, truncated JPEG.

Decompression bombs and codestream headers are in ``test_decode_bounds.py``.

Every failure must be a typed ``DecodeError`` whose message quotes no value from the file;
every decoded image must be finite and in [0, 1].
"""

from __future__ import annotations

import io
import logging
import traceback
import warnings

import numpy as np
import pydicom.data
import pytest

from cxrmsn.errors import ERROR_CODES, DecodeError
from cxrmsn.imaging import decode
from tests.bad_inputs import (
    dicom_jpeg_declaring,
    dicom_with_numbers,
    jpeg_declaring,
    modality_lut_variant,
    voi_lut_variant,
)
from tests.helpers import chest_like_picture, make_dicom

MARKER = "zq-MARKER-7f3a"


def _refused(data: bytes, caplog: pytest.LogCaptureFixture) -> DecodeError:
    with caplog.at_level(logging.DEBUG), pytest.raises(DecodeError) as caught:
        decode(data)
    error = caught.value
    assert 400 <= error.http_status < 500
    assert error.code in ERROR_CODES
    assert MARKER not in error.detail and MARKER not in str(error)
    assert MARKER not in caplog.text
    assert MARKER not in "".join(traceback.format_exception(error))
    return error


@pytest.mark.parametrize("kind", ["short_data", "no_descriptor", "data_as_ob", "data_as_text"])
def test_a_malformed_modality_lut_is_a_typed_error_that_quotes_nothing(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    error = _refused(modality_lut_variant(kind, MARKER), caplog)
    assert (error.code, error.http_status) == ("corrupt_input", 400)
    assert "LUT" in error.detail


@pytest.mark.parametrize("kind", ["data_as_text", "sequence_as_ob"])
def test_a_malformed_voi_lut_is_a_typed_error_that_quotes_nothing(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    error = _refused(voi_lut_variant(kind, MARKER), caplog)
    assert (error.code, error.http_status) == ("corrupt_input", 400)
    assert "LUT" in error.detail


@pytest.mark.parametrize(
    "elements",
    [
        {"WindowCenter": 1e308, "WindowWidth": 1e308},
        {"WindowCenter": 100, "WindowWidth": 1e308},
        {"RescaleSlope": 1e38},
        {"RescaleSlope": 1e39},
        {"RescaleSlope": 1e38, "WindowCenter": 0, "WindowWidth": 1e38},
        {"RescaleIntercept": -3e38, "RescaleSlope": 1e36},
    ],
    ids=["window_1e308", "width_1e308", "slope_1e38", "slope_1e39", "slope_window", "intercept"],
)
def test_non_finite_arithmetic_is_a_422_never_nan_pixels(
    elements: dict[str, float], caplog: pytest.LogCaptureFixture
) -> None:
    data = dicom_with_numbers(**elements)
    try:
        image = decode(data)
    except DecodeError as error:
        assert error.code == "non_finite_pixels"
        assert error.http_status == 422
        return
    # Where the arithmetic stays finite, the image must still be finite and in [0, 1].
    assert np.isfinite(image.pixels).all()
    assert float(image.pixels.min()) >= 0.0 and float(image.pixels.max()) <= 1.0


@pytest.mark.parametrize("elements", [{"WindowCenter": 1e308, "WindowWidth": 1e308}, {"RescaleSlope": 1e39}])
def test_the_reported_cases_are_refused_as_non_finite(elements: dict[str, float]) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(dicom_with_numbers(**elements))
    assert (caught.value.code, caught.value.http_status) == ("non_finite_pixels", 422)


def test_an_echoed_photometric_interpretation_is_bounded_and_printable() -> None:
    picture = chest_like_picture(64, 64)
    hostile = "RGB" + "X" * 5000 + "\x1b[31m\u00e9" + MARKER
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that the value is too long for CS
        data = make_dicom(picture, PhotometricInterpretation=hostile)
    with pytest.raises(DecodeError) as caught:
        decode(data)
    detail = caught.value.detail
    assert caught.value.code == "not_greyscale"
    assert MARKER not in detail and "X" * 65 not in detail
    assert "RGB" + "X" * 61 + "..." in detail
    assert detail.isascii() and detail.isprintable()
    assert len(detail) < 300


def test_a_short_photometric_interpretation_is_echoed_as_before() -> None:
    picture = chest_like_picture(64, 64)
    with pytest.raises(DecodeError) as caught:
        decode(make_dicom(picture, PhotometricInterpretation="YBR_FULL"))
    assert "PhotometricInterpretation YBR_FULL)" in caught.value.detail


def test_echoed_text_values_in_a_decoded_images_info_are_bounded_and_printable() -> None:
    """A 10,000-character Modality or ViewPosition must not come back whole in a 200."""
    hostile = "CT" + "Y" * 10_000 + "\x1b[31m" + MARKER
    hostile_uid = "1.2." + "3" * 10_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that the values are too long for their VR
        data = make_dicom(
            chest_like_picture(64, 64), modality=hostile, ViewPosition=hostile, StudyInstanceUID=hostile_uid
        )
    info = decode(data).info
    assert info.modality is not None and info.view_position is not None
    for text in (info.modality, info.view_position, *info.warnings):
        assert MARKER not in text and "Y" * 65 not in text
        assert text.isascii() and text.isprintable()
    assert info.modality == "CT" + "Y" * 62 + "..."
    assert info.view_position == info.modality
    assert info.study_instance_uid is None  # an over-long UID is dropped, never cut short
    assert len(info.warnings[0]) < 200
    assert info.series_instance_uid is not None and len(info.series_instance_uid) <= 64


def test_short_text_values_in_info_are_returned_as_before() -> None:
    info = decode(make_dicom(chest_like_picture(64, 64), modality="CR", ViewPosition="AP")).info
    assert (info.modality, info.view_position) == ("CR", "AP")
    assert info.warnings == ()


def test_a_jpeg_whose_header_claims_more_pixels_than_its_data_is_truncated() -> None:
    with pytest.raises(DecodeError) as caught:
        decode(jpeg_declaring(6000, 6000))
    assert caught.value.code == "truncated_input"
    assert caught.value.http_status == 400


def test_a_dicom_jpeg_whose_header_claims_more_pixels_than_its_data_is_truncated() -> None:
    with pytest.raises(DecodeError) as caught:
        decode(dicom_jpeg_declaring(2048, 2048))
    assert caught.value.code == "truncated_input"
    assert caught.value.http_status == 400


def test_the_untouched_jpeg_still_decodes() -> None:
    image = decode(jpeg_declaring(64, 64))
    assert image.pixels.shape == (64, 64)


@pytest.mark.parametrize(
    ("module", "function", "data"),
    [
        ("cxrmsn.imaging.dicom", "_to_display", make_dicom(chest_like_picture(64, 64))),
        ("cxrmsn.imaging.raster", "_to_grey", jpeg_declaring(64, 64)),
    ],
)
def test_an_unforeseen_exception_becomes_corrupt_input_without_its_message(
    module: str, function: str, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object) -> None:
        raise ValueError(f"could not convert string to float: '{MARKER}'")

    monkeypatch.setattr(f"{module}.{function}", explode)
    with pytest.raises(DecodeError) as caught:
        decode(data)
    assert (caught.value.code, caught.value.http_status) == ("corrupt_input", 400)
    assert "ValueError" in caught.value.detail
    logged = "".join(traceback.format_exception(caught.value))
    assert MARKER not in logged


def test_rg1_with_an_overflowing_rescale_slope_is_non_finite() -> None:
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed")
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = "1e39", "0"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(DecodeError) as caught:
        decode(buffer.getvalue())
    assert (caught.value.code, caught.value.http_status) == ("non_finite_pixels", 422)
