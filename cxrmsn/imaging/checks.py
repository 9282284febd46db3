"""Checks shared by every format: size limits before decoding, content after."""

from __future__ import annotations

import numpy as np

from cxrmsn.errors import CorruptInputError, ImageTooLargeError, NotSingleGreyImageError
from cxrmsn.imaging.codestream import FrameHeader
from cxrmsn.imaging.types import DecodeLimits

#: The most characters of a header value an error or warning message quotes.
ECHO_LIMIT = 64
#: The most JPEG 2000 tiles one frame may declare. openjpeg allocates about 7 KB per tile
#: as soon as it reads SIZ (64,000 1 x 1 px tiles: 600 MB from a 3 KB file); 4,096 still
#: allows 128 x 128 px tiles over the largest image the pixel limit admits.
MAX_J2K_TILES = 4096


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """A header value made safe to quote in a message: printable ASCII, at most ``limit`` chars.

    Other characters become "?"; a longer value is cut to ``limit`` characters plus "...".
    """
    text = "".join(c if " " <= c <= "~" else "?" for c in str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def non_finite_error(stage: str) -> NotSingleGreyImageError:
    """The 422 for rescale, LUT or window arithmetic that leaves the float32 range."""
    return NotSingleGreyImageError(
        f"{stage} gives values outside the float32 range (infinite or NaN): "
        "the file's rescale, LUT or window values are not usable",
        code="non_finite_pixels",
    )


def check_finite(values: np.ndarray, stage: str) -> None:
    """Refuse non-finite intermediate values (overflowing rescale, LUT or window arithmetic)."""
    if not np.isfinite(values).all():
        raise non_finite_error(stage)


def check_declared_size(width: int, height: int, limits: DecodeLimits) -> None:
    """Reject sizes from a header before any pixel is decoded (decompression-bomb guard)."""
    if width <= 0 or height <= 0:
        raise NotSingleGreyImageError(
            f"image has {width} x {height} pixels: nothing to classify", code="image_too_small"
        )
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"image declares {width} x {height} = {width * height:,} pixels, "
            f"more than the limit of {limits.max_pixels:,}"
        )
    if min(width, height) < limits.min_side:
        raise NotSingleGreyImageError(
            f"image is {width} x {height} px; each side must be at least {limits.min_side} px",
            code="image_too_small",
        )
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise NotSingleGreyImageError(
            f"image is {width} x {height} px, an aspect ratio over "
            f"{limits.max_aspect_ratio:g}: not a chest radiograph",
            code="bad_aspect_ratio",
        )


def check_frame_header(
    header: FrameHeader, *, rows: int, columns: int, samples: int, limits: DecodeLimits, what: str
) -> None:
    """Refuse a codestream header that exceeds the limits or disagrees with the DICOM header.

    ``what`` names the codestream kind ("JPEG", "JPEG 2000"); only numbers are quoted.
    """
    width, height = header.width, header.height
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"the {what} codestream declares {width} x {height} = {width * height:,} pixels, "
            f"more than the limit of {limits.max_pixels:,}"
        )
    if header.tiles > MAX_J2K_TILES:
        raise ImageTooLargeError(
            f"the {what} codestream splits the image into {header.tiles:,} tiles, "
            f"more than the {MAX_J2K_TILES:,} the decoder accepts"
        )
    if (width, height) != (columns, rows):
        raise CorruptInputError(
            f"the {what} codestream declares {width} x {height} pixels, "
            f"but Columns x Rows is {columns} x {rows}"
        )
    if header.components is not None and header.components != samples:
        raise CorruptInputError(
            f"the {what} codestream has {header.components} components, but SamplesPerPixel is {samples}"
        )


def check_not_blank(pixels: np.ndarray) -> None:
    if pixels.size == 0 or float(pixels.max()) == float(pixels.min()):
        raise NotSingleGreyImageError(
            "every pixel has the same value: nothing to classify", code="blank_image"
        )
