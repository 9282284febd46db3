"""PNG and JPEG decoding: modes, orientation, limits and broken files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxrmsn.errors import DecodeError
from cxrmsn.imaging import DecodeLimits, decode, detect_format
from tests.helpers import chest_like_picture, to_jpeg, to_png

PICTURE = chest_like_picture(96, 80)
REFERENCE = PICTURE.astype(np.float32) / 255.0


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_png_8_bit_grey() -> None:
    image = decode(to_png(PICTURE))
    assert image.info.format == "png" and image.info.bits_stored == 8
    assert image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels, REFERENCE)


def test_png_16_bit_grey_keeps_its_precision() -> None:
    wide = PICTURE.astype(np.uint16) * 257
    image = decode(to_png(wide))
    assert image.info.bits_stored == 16
    np.testing.assert_allclose(image.pixels, REFERENCE, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_grey_pictures_stored_in_colour_modes_decode_exactly(mode: str) -> None:
    source = Image.fromarray(PICTURE).convert(mode)
    image = decode(encode(source))
    np.testing.assert_allclose(image.pixels, REFERENCE, atol=1e-6)
    assert not any("colour" in w for w in image.info.warnings)


def test_colour_picture_is_converted_with_a_warning() -> None:
    rgb = np.stack([PICTURE, PICTURE // 2, 255 - PICTURE], axis=-1)
    image = decode(encode(Image.fromarray(rgb)))
    assert image.info.photometric == "RGB"
    assert any("colour image converted" in w for w in image.info.warnings)
    expected = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / 255
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)


def test_jpeg_decodes_close_to_the_picture() -> None:
    image = decode(to_jpeg(PICTURE))
    assert image.info.format == "jpeg"
    assert np.abs(image.pixels - REFERENCE).mean() < 2 / 255


def test_exif_orientation_is_applied() -> None:
    source = Image.fromarray(PICTURE)
    exif = source.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = decode(encode(source, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.pixels.shape == (80, 96)
    rotated = np.rot90(REFERENCE, k=-1)
    assert np.abs(image.pixels - rotated).mean() < 2 / 255


@pytest.mark.parametrize(
    ("data", "code", "status"),
    [
        (b"", "empty_input", 400),
        (b"x", "unsupported_format", 415),
        (b"hello, this is text\n" * 20, "unsupported_format", 415),
        (b"<html><body>not an image</body></html>", "unsupported_format", 415),
        (b"GIF89a" + b"\x00" * 64, "unsupported_format", 415),
        (b"PK\x03\x04" + b"\x00" * 64, "unsupported_format", 415),
        (b"II*\x00" + b"\x00" * 64, "unsupported_format", 415),
        (to_png(PICTURE)[:60], "corrupt_input", 400),
        (to_png(PICTURE)[: len(to_png(PICTURE)) // 2], "corrupt_input", 400),
        (to_jpeg(PICTURE)[: len(to_jpeg(PICTURE)) // 2], "corrupt_input", 400),
        (to_png(np.zeros((1, 1), dtype=np.uint8)), "image_too_small", 422),
        (to_png(np.zeros((20, 400), dtype=np.uint8)), "bad_aspect_ratio", 422),
        (to_png(np.full((64, 64), 3000, dtype=np.uint16)), "blank_image", 422),
    ],
)
def test_bad_inputs_raise_typed_errors(data: bytes, code: str, status: int) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(data)
    assert (caught.value.code, caught.value.http_status) == (code, status)
    assert caught.value.to_dict() == {"error": code, "detail": caught.value.detail}


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = encode(Image.new("L", (12000, 12000)), optimize=True)
    assert len(bomb) < 200_000
    with pytest.raises(DecodeError) as caught:
        decode(bomb, limits=DecodeLimits(max_pixels=50_000_000))
    assert caught.value.code == "image_too_large"
    with pytest.raises(DecodeError) as caught:
        decode(to_png(PICTURE), limits=DecodeLimits(max_pixels=1000))
    assert caught.value.http_status == 413


def test_format_is_detected_by_content() -> None:
    assert detect_format(to_png(PICTURE)) == "png"
    assert detect_format(to_jpeg(PICTURE)) == "jpeg"
